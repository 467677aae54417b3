// The agent's metrics endpoint (:15020, /metrics and /stats/prometheus): the
// Istio TCP metrics plus the agent's own health (build, process, enrolled
// pods, BPF capture and map fill, control-plane stream, certificate expiry,
// every engine counter of ztunnel::describe()).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/admin/server.h"
#include "agent/telemetry/exposition.h"
#include "agent/telemetry/node_health.h"
#include "agent/telemetry/tcp_metrics.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

// Called on the metrics server's thread at each scrape; each may be empty.
struct AgentSources {
  std::string version;
  // Run first: brings counts that are not pushed live up to date (the
  // engine's spliced pairs: Engine::countSpliced).
  std::function<void()> before_scrape;
  std::function<ztunnel::EngineStats()> engine_stats;
  std::function<size_t()> pods_enrolled;
  std::function<ControlPlaneState()> controlplane;
  std::function<std::vector<uint64_t>()> bpf_stats;  // enum sluice_stat order
  std::function<std::vector<bpf::MapFill>()> bpf_maps;
  std::function<bool()> sockmap_enabled;                 // --sockmap runs
  std::function<std::vector<uint64_t>()> sockmap_stats;  // enum sluice_sockmap_stat order
  std::function<std::map<std::string, std::chrono::system_clock::time_point>()> cert_expiry;
  std::function<void(TextWriter&)> http;  // the istio_request* families (HttpMetrics)
  // More families written by another part (policy decisions: wiring/policy_metrics.h).
  std::function<void(TextWriter&)> more;
};

// sluice_build_info{version=...} 1
void writeBuildInfo(TextWriter& out, const std::string& version);
// process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds,
// process_max_fds, process_start_time_seconds, as Prometheus's client
// libraries name them (from /proc).
void writeProcessMetrics(TextWriter& out);
// Every engine counter as sluice_<group>_<name>, "_total" on counters (not on
// gauges), its help from ztunnel::describe().
void writeEngineCounters(TextWriter& out, const ztunnel::EngineStats& stats);

class AgentMetrics {
 public:
  AgentMetrics(TcpMetrics& tcp, AgentSources sources) : tcp_(tcp), sources_(std::move(sources)) {}
  std::string scrape();
  // Appends the page to `out`.
  void render(std::string& out);
  // /metrics and /stats/prometheus, for an admin::Server (one thread). The
  // page is rendered into a buffer kept from the last scrape when the
  // server is done sending it (no page faults, no regrowth), else a new one:
  // the agent's RSS holds one page (~34 MB at 10,000 series,
  // docs/performance.md) in exchange for scrapes several times faster.
  admin::Routes routes();

 private:
  TcpMetrics& tcp_;
  AgentSources sources_;
  std::shared_ptr<std::string> page_;  // the routes' buffer (their thread only)
};

}  // namespace sluice::agent::telemetry
