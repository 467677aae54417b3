// The agent's metrics endpoint (:15020, /metrics and /stats/prometheus): the
// Istio TCP metrics plus the agent's own health (build, process, enrolled
// pods, every engine counter of ztunnel::describe()).
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "agent/admin/server.h"
#include "agent/telemetry/exposition.h"
#include "agent/telemetry/tcp_metrics.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

// Called on the metrics server's thread at each scrape; each may be empty.
struct AgentSources {
  std::string version;
  std::function<ztunnel::EngineStats()> engine_stats;
  std::function<size_t()> pods_enrolled;
  std::function<bool()> controlplane_connected;
  // More families written by another part (policy decisions: wiring/policy_metrics.h).
  std::function<void(TextWriter&)> more;
};

// sluice_build_info{version=...} 1
void writeBuildInfo(TextWriter& out, const std::string& version);
// process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds,
// process_max_fds, as Prometheus's client libraries name them (from /proc).
void writeProcessMetrics(TextWriter& out);
// Every engine counter as sluice_<group>_<name>, "_total" on counters (not on
// gauges), its help from ztunnel::describe().
void writeEngineCounters(TextWriter& out, const ztunnel::EngineStats& stats);

class AgentMetrics {
 public:
  AgentMetrics(TcpMetrics& tcp, AgentSources sources) : tcp_(tcp), sources_(std::move(sources)) {}
  std::string scrape();
  // /metrics and /stats/prometheus, for an admin::Server.
  admin::Routes routes();

 private:
  TcpMetrics& tcp_;
  AgentSources sources_;
};

}  // namespace sluice::agent::telemetry
