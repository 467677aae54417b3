// The synthetic cluster the metrics benchmarks run on: clients
// "frontend-NNN" on 10.100.x.y and servers "backend-NNN" on 10.101.x.y, each
// the pod of a Deployment in namespace shop, and the connection record of an
// outbound HBONE connection from one to the other (the labels of one
// istio_tcp_* series per client/server pair).
#pragma once

#include <fmt/format.h>

#include <memory>
#include <string>

#include "agent/telemetry/workloads.h"
#include "sluice/common/addr.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::bench {

inline std::string ip(int side, int i) {
  return fmt::format("10.{}.{}.{}", 100 + side, i / 250, i % 250 + 1);
}

inline std::shared_ptr<const agent::telemetry::WorkloadSnapshot> cluster(int clients, int servers) {
  using namespace agent::telemetry;
  auto snap = std::make_shared<WorkloadSnapshot>();
  auto add = [&](int side, int i, const std::string& deploy) {
    std::string pod = deploy + "-7d9f8b6c5-x2x4z";
    auto w = std::make_shared<const WorkloadInfo>(describeWorkload(
        pod, "shop", deploy + "-7d9f8b6c5-", {"ReplicaSet", deploy + "-7d9f8b6c5"},
        {{"pod-template-hash", "7d9f8b6c5"}, {"app", deploy}, {"version", "v1"}}, "Kubernetes"));
    snap->by_pod["shop/" + pod] = w;
    snap->by_ip[*IpAddr::parse(ip(side, i))] = w;
  };
  for (int i = 0; i < clients; ++i) add(0, i, fmt::format("frontend-{:03}", i));
  for (int i = 0; i < servers; ++i) add(1, i, fmt::format("backend-{:03}", i));
  return snap;
}

inline ztunnel::ConnectionRecord record(uint64_t id, int client, int server) {
  ztunnel::ConnectionRecord r;
  r.id = id;
  r.direction = ztunnel::Direction::kOutbound;
  r.path = ztunnel::Path::kHbone;
  r.pod = fmt::format("shop/frontend-{:03}-7d9f8b6c5-x2x4z", client);
  r.source = ip(0, client) + ":40000";
  r.destination = ip(1, server) + ":8080";
  r.destination_service = fmt::format("shop/backend-{:03}", server);
  r.source_principal = fmt::format("spiffe://cluster.local/ns/shop/sa/frontend-{:03}", client);
  r.destination_principal = fmt::format("spiffe://cluster.local/ns/shop/sa/backend-{:03}", server);
  r.mutual_tls = true;
  r.reason = ztunnel::CloseReason::kEof;
  return r;
}

}  // namespace sluice::bench
