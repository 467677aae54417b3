#include "agent/telemetry/workloads.h"

#include <algorithm>
#include <cctype>

namespace sluice::agent::telemetry {

namespace {

const std::string* label(const PodLabels& labels, const char* key) {
  auto it = labels.find(key);
  return it == labels.end() || it->second.empty() ? nullptr : &it->second;
}

// `name` without its last "-<suffix>" when there is one.
std::string_view dropLastPart(std::string_view name) {
  auto dash = name.rfind('-');
  return dash == std::string_view::npos || dash == 0 ? name : name.substr(0, dash);
}

}  // namespace

std::string workloadName(std::string_view pod, const PodLabels& labels) {
  if (const auto* hash = label(labels, "pod-template-hash")) {
    // ReplicaSet "<deployment>-<hash>", its pods "<replicaset>-<suffix>".
    std::string marker = "-" + *hash + "-";
    if (auto at = pod.rfind(marker); at != std::string_view::npos && at > 0)
      return std::string(pod.substr(0, at));
  }
  if (label(labels, "statefulset.kubernetes.io/pod-name")) {
    auto dash = pod.rfind('-');
    if (dash != std::string_view::npos && dash > 0 && dash + 1 < pod.size() &&
        std::all_of(pod.begin() + dash + 1, pod.end(),
                    [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
      return std::string(pod.substr(0, dash));
  }
  if (const auto* job = label(labels, "batch.kubernetes.io/job-name")) return *job;
  if (const auto* job = label(labels, "job-name")) return *job;
  if (label(labels, "controller-revision-hash") && label(labels, "pod-template-generation"))
    return std::string(dropLastPart(pod));
  return std::string(pod);
}

std::string canonicalService(const PodLabels& labels, std::string_view workload) {
  for (const char* key : {"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"})
    if (const auto* v = label(labels, key)) return *v;
  return std::string(workload);
}

std::string canonicalRevision(const PodLabels& labels) {
  for (const char* key :
       {"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"})
    if (const auto* v = label(labels, key)) return *v;
  return "latest";
}

WorkloadInfo describeWorkload(std::string_view pod, std::string_view namespace_,
                              const PodLabels& labels, std::string cluster) {
  WorkloadInfo w;
  w.pod = std::string(pod);
  w.workload = workloadName(pod, labels);
  w.namespace_ = std::string(namespace_);
  w.canonical_service = canonicalService(labels, w.workload);
  w.canonical_revision = canonicalRevision(labels);
  w.cluster = std::move(cluster);
  return w;
}

}  // namespace sluice::agent::telemetry
