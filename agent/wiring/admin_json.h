// The admin API's views of the proxy engine and the BPF loader, as JSON.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "agent/bpf/loader.h"
#include "agent/bpf/splice_control.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::wiring {

// /connections: open connections and the most recent closed ones.
nlohmann::json connectionsJson(const ztunnel::Engine& engine);
// /stats: every engine counter under its group and name (ztunnel::describe),
// the BPF programs' counters under "bpf".
nlohmann::json statsJson(const ztunnel::EngineStats& engine, const std::vector<uint64_t>& bpf);
// /config_dump parts: the engine's listeners and the loader's links, its
// sockmap and the same-node splice under it (splice: null while off, which
// splice_detail says why).
nlohmann::json listenersJson(const ztunnel::Engine& engine);
nlohmann::json bpfJson(const bpf::Loader& loader, const std::string& pin_dir,
                       const std::string& cgroup, const bpf::MapSpliceControl* splice,
                       const std::string& splice_detail);
// The metrics endpoint's sockmap counters: kSockmapStats, then kSpliceStats
// (zeros while the splice is off).
std::vector<uint64_t> sockmapMetricStats(const bpf::Loader& loader,
                                         const bpf::MapSpliceControl* splice);

}  // namespace sluice::agent::wiring
