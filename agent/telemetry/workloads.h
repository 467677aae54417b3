// Who is at the ends of a connection, as Istio's metric labels name them:
// the workload (the pod's controller), its namespace, canonical service and
// revision and cluster. Built from the control plane's view on the
// discovery thread and swapped atomically; read when a connection opens.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

namespace sluice::agent::telemetry {

using PodLabels = std::map<std::string, std::string>;

struct WorkloadInfo {
  std::string pod;       // the pod's own name
  std::string workload;  // the controller's name (see workloadName), else the pod's
  std::string namespace_;
  std::string canonical_service;
  std::string canonical_revision;
  std::string cluster;
};

// Istio's workload name without owner references (the discovery model does
// not carry them yet), from the labels controllers put on their pods:
// pod-template-hash (Deployment: "<deploy>-<hash>-<suffix>"), statefulset
// pod-name ("<sts>-<ordinal>"), job-name, controller-revision-hash with
// pod-template-generation (DaemonSet: "<ds>-<suffix>"); otherwise the pod name.
std::string workloadName(std::string_view pod, const PodLabels& labels);
// service.istio.io/canonical-name, app.kubernetes.io/name, app, else `workload`.
std::string canonicalService(const PodLabels& labels, std::string_view workload);
// service.istio.io/canonical-revision, app.kubernetes.io/version, version, else "latest".
std::string canonicalRevision(const PodLabels& labels);

WorkloadInfo describeWorkload(std::string_view pod, std::string_view namespace_,
                              const PodLabels& labels, std::string cluster);

// Workloads by pod IP (network order) and by "namespace/pod".
struct WorkloadSnapshot {
  std::unordered_map<uint32_t, std::shared_ptr<const WorkloadInfo>> by_ip;
  std::unordered_map<std::string, std::shared_ptr<const WorkloadInfo>> by_pod;
};

class WorkloadIndex {
 public:
  void update(std::shared_ptr<const WorkloadSnapshot> next) {
    current_.store(std::move(next), std::memory_order_release);
  }
  std::shared_ptr<const WorkloadSnapshot> current() const {
    return current_.load(std::memory_order_acquire);
  }

 private:
  std::atomic<std::shared_ptr<const WorkloadSnapshot>> current_{
      std::make_shared<const WorkloadSnapshot>()};
};

}  // namespace sluice::agent::telemetry
