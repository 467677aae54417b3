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
#include <vector>

#include "sluice/common/addr.h"

namespace sluice::agent::telemetry {

using PodLabels = std::map<std::string, std::string>;

struct WorkloadInfo {
  std::string pod;       // the pod's own name
  std::string workload;  // workloadOf(...).name: the controller's name, else the pod's
  std::string namespace_;
  std::string canonical_service;
  std::string canonical_revision;
  std::string cluster;
};

// The pod's controller, from metadata.ownerReferences (controller: true);
// empty kind and name when it has none.
struct Owner {
  std::string kind;
  std::string name;
};

// The workload a pod belongs to, named as Istio names it
// (pkg/kube GetDeployMetaFromPod). Only a pod whose name was generated
// (metadata.generateName set, as every controller does) is named after its
// controller; any other pod is its own workload, whatever its owners say.
// Then: a ReplicaSet owner whose name ends with "-<pod-template-hash label>"
// is its Deployment (with "-<rollouts-pod-template-hash>": its Argo
// Rollout); a Job owner named "<name>-<8 to 10 digits>" is the CronJob
// <name>; an OpenShift ReplicationController with a deploymentconfig label
// is that DeploymentConfig; any other controller (StatefulSet, DaemonSet,
// Job, ReplicaSet without the hash) is itself; no controller: the Pod.
struct WorkloadRef {
  std::string kind;  // "Deployment", "CronJob", "StatefulSet", ..., "Pod"
  std::string name;
};
WorkloadRef workloadOf(std::string_view pod, std::string_view generate_name, const Owner& owner,
                       const PodLabels& labels);
// service.istio.io/canonical-name, app.kubernetes.io/name, app, else `workload`.
std::string canonicalService(const PodLabels& labels, std::string_view workload);
// service.istio.io/canonical-revision, app.kubernetes.io/version, version, else "latest".
std::string canonicalRevision(const PodLabels& labels);

WorkloadInfo describeWorkload(std::string_view pod, std::string_view namespace_,
                              std::string_view generate_name, const Owner& owner,
                              const PodLabels& labels, std::string cluster);

// A Service with at least one endpoint.
struct ServiceRef {
  std::string namespace_;
  std::string name;
};

// Workloads by pod IP (either family) and by "namespace/pod"; the Services
// with endpoints, ordered by namespace/name. (Which Service an inbound
// connection reached is the engine's MeshDirectory::endpointService.)
struct WorkloadSnapshot {
  std::unordered_map<IpAddr, std::shared_ptr<const WorkloadInfo>> by_ip;
  std::unordered_map<std::string, std::shared_ptr<const WorkloadInfo>> by_pod;
  std::vector<ServiceRef> services;
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
