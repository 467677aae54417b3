// Shared by the telemetry tests (telemetry_test.cc, tcp_metrics_test.cc,
// http_metrics_test.cc, agent_metrics_test.cc): a scrape parsed back into
// samples, a two-pod workload view, HBONE connection records, a fake clock.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "agent/telemetry/exposition.h"
#include "agent/telemetry/tcp_metrics.h"
#include "agent/telemetry/workloads.h"
#include "sluice/common/addr.h"

namespace sluice::agent::telemetry::test_scrape {

using ztunnel::CloseReason;
using ztunnel::ConnectionRecord;
using ztunnel::Direction;
using ztunnel::Path;

inline constexpr const char* kWeb = "spiffe://cluster.local/ns/shop/sa/web";
inline constexpr const char* kApi = "spiffe://cluster.local/ns/shop/sa/api";

// A scrape, parsed back: every sample line as (name, labels, value).
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  std::string value;
};

inline std::vector<Sample> parse(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t brace = line.find('{');
    size_t space = line.rfind(' ');
    REQUIRE(space != std::string::npos);
    s.value = line.substr(space + 1);
    if (brace == std::string::npos || brace > space) {
      s.name = line.substr(0, space);
      out.push_back(s);
      continue;
    }
    s.name = line.substr(0, brace);
    size_t i = brace + 1;
    while (line[i] != '}') {
      size_t eq = line.find("=\"", i);
      std::string key = line.substr(i, eq - i);
      std::string value;
      for (i = eq + 2; line[i] != '"'; ++i) {
        if (line[i] == '\\') {
          ++i;
          value += line[i] == 'n' ? '\n' : line[i];
        } else {
          value += line[i];
        }
      }
      s.labels[key] = value;
      ++i;
      if (line[i] == ',') ++i;
    }
    out.push_back(s);
  }
  return out;
}

// Samples of `name` whose labels include every one of `want`.
inline std::vector<Sample> find(const std::vector<Sample>& all, const std::string& name,
                                const std::map<std::string, std::string>& want = {}) {
  std::vector<Sample> out;
  for (const auto& s : all) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : want) {
      auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (match) out.push_back(s);
  }
  return out;
}

inline uint64_t value(const std::vector<Sample>& all, const std::string& name,
                      const std::map<std::string, std::string>& want = {}) {
  auto found = find(all, name, want);
  REQUIRE_MESSAGE(found.size() == 1, name << ": " << found.size() << " matching samples");
  return std::stoull(found[0].value);
}

inline std::vector<Sample> scrape(TcpMetrics& m) {
  TextWriter w;
  m.write(w);
  return parse(w.take());
}

inline IpAddr ip(const char* text) { return *IpAddr::parse(text); }

// client (shop, node1, Deployment "client") -> server (shop, node2, StatefulSet "db").
inline WorkloadIndex& meshIndex() {
  static WorkloadIndex idx;
  static bool once = [] {
    auto snap = std::make_shared<WorkloadSnapshot>();
    auto client = std::make_shared<const WorkloadInfo>(describeWorkload(
        "client-7d9f8b6c5-x2x4z", "shop", "client-7d9f8b6c5-", {"ReplicaSet", "client-7d9f8b6c5"},
        {{"pod-template-hash", "7d9f8b6c5"}, {"app", "web"}, {"version", "v1"}}, "Kubernetes"));
    auto server = std::make_shared<const WorkloadInfo>(
        describeWorkload("db-0", "shop", "db-", {"StatefulSet", "db"},
                         {{"statefulset.kubernetes.io/pod-name", "db-0"},
                          {"service.istio.io/canonical-name", "database"},
                          {"app.kubernetes.io/version", "14"}},
                         "Kubernetes"));
    snap->by_ip[ip("10.244.1.5")] = client;
    snap->by_pod["shop/client-7d9f8b6c5-x2x4z"] = client;
    snap->by_ip[ip("10.244.2.7")] = server;
    snap->by_pod["shop/db-0"] = server;
    idx.update(snap);
    return true;
  }();
  (void)once;
  return idx;
}

inline ConnectionRecord outboundHbone(uint64_t id) {
  ConnectionRecord r;
  r.id = id;
  r.direction = Direction::kOutbound;
  r.path = Path::kHbone;
  r.pod = "shop/client-7d9f8b6c5-x2x4z";
  r.source = "10.244.1.5:40000";
  r.destination = "10.244.2.7:5432";
  r.destination_service = "shop/db";
  r.source_principal = kWeb;
  r.destination_principal = kApi;
  r.mutual_tls = true;
  return r;
}

inline ConnectionRecord inboundHbone(uint64_t id) {
  ConnectionRecord r = outboundHbone(id);
  r.direction = Direction::kInbound;
  r.pod = "shop/db-0";
  r.destination_service.clear();  // the server side does not know the Service
  return r;
}

struct FakeClock {
  TcpMetrics::Clock::time_point t{std::chrono::hours(1)};
  std::function<TcpMetrics::Clock::time_point()> fn() {
    return [this] { return t; };
  }
};

}  // namespace sluice::agent::telemetry::test_scrape
