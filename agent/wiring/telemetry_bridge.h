// The discovery view -> telemetry's workload index (names and labels of every
// workload by IP and by namespace/pod, and the Services in front of each pod
// IP, for the Istio metric labels).
#pragma once

#include <memory>
#include <string>

#include "agent/discovery/client.h"
#include "agent/telemetry/workloads.h"
#include "sluice/common/addr.h"

namespace sluice::agent::wiring {

inline std::shared_ptr<const telemetry::WorkloadSnapshot> workloadSnapshot(
    const discovery::View& view, const std::string& cluster_id) {
  auto snap = std::make_shared<telemetry::WorkloadSnapshot>();
  for (const auto& [uid, w] : view.workloads) {
    telemetry::PodLabels labels;
    for (const auto& [key, value] : w.labels()) labels.emplace(key, value);
    auto info = std::make_shared<const telemetry::WorkloadInfo>(
        telemetry::describeWorkload(w.name(), w.namespace_(), w.generate_name(),
                                    {w.owner_kind(), w.owner_name()}, labels, cluster_id));
    snap->by_pod[w.namespace_() + "/" + w.name()] = info;
    for (const auto& ip : w.ips())
      if (auto a = IpAddr::parse(ip)) snap->by_ip[*a] = info;
  }
  // view.services is ordered by namespace/name: so is snap->services.
  for (const auto& [key, svc] : view.services)
    if (svc.endpoints_size() > 0) snap->services.push_back({svc.namespace_(), svc.name()});
  return snap;
}

}  // namespace sluice::agent::wiring
