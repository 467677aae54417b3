// The admin API's views of the proxy engine and the BPF loader, as JSON.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "agent/bpf/loader.h"
#include "agent/bpf/splice_control.h"
#include "sluice/common/result.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::wiring {

// /connections: open connections and the most recent closed ones.
nlohmann::json connectionsJson(const ztunnel::Engine& engine);

// What POST /connections/reset asks for: one connection by id (as
// /connections shows it) or every connection of a pod ("ns/name").
struct ResetTarget {
  uint64_t id = 0;
  std::string pod;
};
// Exactly one of id=N (decimal, non-zero) and pod=ns/name; else the error
// names what is wrong (answered 400).
Result<ResetTarget> parseResetTarget(const std::map<std::string, std::string>& query);
// POST /connections/reset: resets and answers {"reset": n, ...} (200), 400
// for bad parameters, 404 for an id that is not open (closed, or unknown).
std::pair<int, nlohmann::json> resetConnectionsJson(
    ztunnel::Engine& engine, const std::map<std::string, std::string>& query);
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
