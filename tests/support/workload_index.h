// A telemetry WorkloadIndex for tests: pods of one namespace by name and IP,
// named from their controller as the agent names them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agent/telemetry/workloads.h"
#include "sluice/common/addr.h"

namespace sluice::test {

struct IndexedPod {
  const char* name;
  const char* ip;
  agent::telemetry::PodLabels labels;
  agent::telemetry::Owner owner;  // the pod's controller; empty: none
};

// A pod with a controller has the generateName the controller gives it
// ("<owner>-"); a pod without one was named by hand.
inline std::string generateName(const IndexedPod& p) {
  return p.owner.name.empty() ? std::string() : p.owner.name + "-";
}

inline std::shared_ptr<const agent::telemetry::WorkloadSnapshot> workloadSnapshot(
    const std::string& ns, const std::vector<IndexedPod>& pods) {
  auto snap = std::make_shared<agent::telemetry::WorkloadSnapshot>();
  for (const auto& p : pods) {
    auto w =
        std::make_shared<const agent::telemetry::WorkloadInfo>(agent::telemetry::describeWorkload(
            p.name, ns, generateName(p), p.owner, p.labels, "Kubernetes"));
    snap->by_pod[ns + "/" + p.name] = w;
    snap->by_ip[*IpAddr::parse(p.ip)] = w;
  }
  return snap;
}

}  // namespace sluice::test
