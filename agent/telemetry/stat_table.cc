#include "agent/telemetry/stat_table.h"

#include <map>
#include <utility>

namespace sluice::agent::telemetry {

const char* toString(Granularity g) {
  switch (g) {
    case Granularity::kWorkload:
      return "deploy";
    case Granularity::kPod:
      return "pod";
    case Granularity::kNamespace:
      return "ns";
  }
  return "?";
}

namespace {

using Key = std::pair<std::string, std::string>;  // namespace (empty for ns rows), name

Key keyOf(Granularity g, const std::string& ns, const std::string& pod,
          const std::string& workload) {
  switch (g) {
    case Granularity::kWorkload:
      return {ns, workload};
    case Granularity::kPod:
      return {ns, pod};
    case Granularity::kNamespace:
      return {"", ns};
  }
  return {};
}

nlohmann::json directionJson(const TrafficTotals& t, double covered_seconds) {
  nlohmann::json j;
  j["requests"] = t.requests;
  j["successes"] = t.successes;
  j["success_rate"] = t.requests ? nlohmann::json(double(t.successes) / double(t.requests))
                                 : nlohmann::json(nullptr);
  j["rps"] = covered_seconds > 0 ? double(t.requests) / covered_seconds : 0.0;
  for (auto [name, q] : {std::pair{"latency_ms_p50", 0.5}, std::pair{"latency_ms_p95", 0.95},
                         std::pair{"latency_ms_p99", 0.99}})
    j[name] = t.latency.count() ? nlohmann::json(t.latency.quantile(q) / 1000.0)
                                : nlohmann::json(nullptr);
  j["tcp_open"] = t.tcp_open;
  j["tcp_opened"] = t.tcp_opened;
  return j;
}

}  // namespace

std::vector<StatRow> statRows(const LiveSnapshot& snapshot, const std::vector<LocalPod>& pods,
                              Granularity g) {
  std::map<Key, StatRow> rows;
  auto row = [&](const Key& k) -> StatRow& {
    StatRow& r = rows[k];
    r.namespace_ = k.first;
    r.name = k.second;
    return r;
  };
  for (const auto& p : pods) {
    StatRow& r = row(keyOf(g, p.namespace_, p.pod, p.workload));
    r.pods_known += 1;
    r.pods_enrolled += p.enrolled ? 1 : 0;
  }
  for (const auto& t : snapshot.pods) {
    StatRow& r = row(keyOf(g, t.namespace_, t.pod, t.workload));
    r.inbound.merge(t.inbound);
    r.outbound.merge(t.outbound);
  }
  std::vector<StatRow> out;
  out.reserve(rows.size());
  for (auto& [k, r] : rows) out.push_back(std::move(r));
  return out;
}

nlohmann::json statJson(const LiveSnapshot& snapshot, const std::vector<LocalPod>& pods) {
  double covered = std::chrono::duration<double>(snapshot.covered).count();
  nlohmann::json j;
  j["window_seconds"] = std::chrono::duration<double>(snapshot.window).count();
  j["covered_seconds"] = covered;
  for (auto g : {Granularity::kWorkload, Granularity::kPod, Granularity::kNamespace}) {
    auto& list = j[toString(g)] = nlohmann::json::array();
    for (const auto& r : statRows(snapshot, pods, g)) {
      nlohmann::json row;
      if (g != Granularity::kNamespace) row["namespace"] = r.namespace_;
      row["name"] = r.name;
      row["pods_enrolled"] = r.pods_enrolled;
      row["pods_known"] = r.pods_known;
      row["inbound"] = directionJson(r.inbound, covered);
      row["outbound"] = directionJson(r.outbound, covered);
      list.push_back(std::move(row));
    }
  }
  return j;
}

}  // namespace sluice::agent::telemetry
