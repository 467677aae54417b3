// `sluicectl stat` rows from the live windows: per workload (the pod's
// controller, as the metrics name it), pod or namespace, Linkerd's `viz stat`
// columns (MESHED, SUCCESS, RPS, LATENCY_P50/95/99, TCP_CONN), both
// directions. Pure: the admin endpoint serves statJson() of a snapshot.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "agent/telemetry/live_stats.h"

namespace sluice::agent::telemetry {

enum class Granularity : uint8_t { kWorkload, kPod, kNamespace };
const char* toString(Granularity g);  // "deploy" | "pod" | "ns"

// A pod this node's agent knows locally (from CNI or its state file), and
// whether it is enrolled in the mesh now.
struct LocalPod {
  std::string namespace_;
  std::string pod;
  std::string workload;
  bool enrolled = false;
};

struct StatRow {
  std::string namespace_;  // empty for a namespace row
  std::string name;
  unsigned pods_enrolled = 0;  // MESHED = enrolled / known, of this node's pods
  unsigned pods_known = 0;
  TrafficTotals inbound, outbound;
};

std::vector<StatRow> statRows(const LiveSnapshot& snapshot, const std::vector<LocalPod>& pods,
                              Granularity granularity);

// The /live/stat document: the window and, per granularity, its rows with
// both directions (requests, success rate, rps, latency percentiles in ms,
// TCP connections). Absent values (no request in the window) are null.
nlohmann::json statJson(const LiveSnapshot& snapshot, const std::vector<LocalPod>& pods);

}  // namespace sluice::agent::telemetry
