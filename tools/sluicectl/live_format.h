// What `sluicectl stat`, `top` and `tap` print, from the agent's /live/stat
// document and /live/tap lines. Pure, for tests.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>

#include "tools/sluicectl/table.h"

namespace sluice::ctl {

// "deploy" | "pod" | "ns" from what a user types (deployment, po, namespace, ...); "" if none.
std::string statKind(const std::string& word);

// Linkerd's `viz stat` columns: [NAMESPACE] NAME MESHED SUCCESS RPS LATENCY_P50 LATENCY_P95
// LATENCY_P99 TCP_CONN. `ns` filters (and drops the NAMESPACE column); `direction` is
// "inbound" (what the workloads received; Linkerd's default) or "outbound".
Table statTable(const nlohmann::json& stat, const std::string& kind, const std::string& ns,
                const std::string& direction);

// One tap line, Linkerd-like: "req proxy=out src=... dst=... tls=true :method=GET ...".
std::string tapLine(const nlohmann::json& event);

// `sluicectl top`: the busiest (source, destination, method, path), from tap lines.
class TopTable {
 public:
  void add(const nlohmann::json& event);
  // Rows by count (most first), at most `limit`.
  Table render(size_t limit) const;
  nlohmann::json toJson(size_t limit) const;
  uint64_t requests() const { return requests_; }

 private:
  struct Row {
    uint64_t count = 0, successes = 0;
    int64_t best_us = 0, worst_us = 0, last_us = 0;
  };
  using Key = std::tuple<std::string, std::string, std::string, std::string>;
  std::vector<std::pair<Key, Row>> sorted(size_t limit) const;
  std::map<Key, Row> rows_;
  uint64_t requests_ = 0;
};

// "1.5ms", "250µs", "2.0s".
std::string humanMicros(int64_t us);

}  // namespace sluice::ctl
