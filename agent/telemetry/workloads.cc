#include "agent/telemetry/workloads.h"

#include <algorithm>
#include <cctype>
#include <optional>

namespace sluice::agent::telemetry {

namespace {

const std::string* label(const PodLabels& labels, const char* key) {
  auto it = labels.find(key);
  return it == labels.end() || it->second.empty() ? nullptr : &it->second;
}

// "<name>-<8 to 10 digits>" (the scheduled time in minutes that the CronJob
// controller appends to its Jobs' names): <name>; otherwise empty.
std::string_view cronJobOf(std::string_view job) {
  auto dash = job.rfind('-');
  if (dash == std::string_view::npos || dash == 0) return {};
  auto digits = job.substr(dash + 1);
  if (digits.size() < 8 || digits.size() > 10) return {};
  if (!std::all_of(digits.begin(), digits.end(),
                   [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
    return {};
  return job.substr(0, dash);
}

// ReplicaSet "<name>-<hash>" where the pods carry the hash as `label`:
// <name> (Istio tests the name's suffix for the hash, then trims "-<hash>",
// nothing when the dash is missing: the same here, to the letter).
std::optional<std::string> trimHash(const std::string& owner, const PodLabels& labels,
                                    const char* label_key) {
  const auto* hash = label(labels, label_key);
  if (!hash || !owner.ends_with(*hash)) return std::nullopt;
  std::string_view name = owner;
  if (std::string suffix = "-" + *hash; name.ends_with(suffix)) name.remove_suffix(suffix.size());
  return std::string(name);
}

}  // namespace

WorkloadRef workloadOf(std::string_view pod, std::string_view generate_name, const Owner& owner,
                       const PodLabels& labels) {
  // A pod named by hand is its own workload, even with a controller owner.
  if (generate_name.empty() || owner.name.empty()) return {"Pod", std::string(pod)};
  if (owner.kind == "ReplicaSet") {
    if (auto name = trimHash(owner.name, labels, "pod-template-hash"))
      return {"Deployment", std::move(*name)};
    if (auto name = trimHash(owner.name, labels, "rollouts-pod-template-hash"))
      return {"Rollout", std::move(*name)};
    return {"ReplicaSet", owner.name};
  }
  if (owner.kind == "ReplicationController")
    if (const auto* dc = label(labels, "deploymentconfig")) return {"DeploymentConfig", *dc};
  if (owner.kind == "Job")
    if (auto cron = cronJobOf(owner.name); !cron.empty()) return {"CronJob", std::string(cron)};
  return {owner.kind, owner.name};
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
                              std::string_view generate_name, const Owner& owner,
                              const PodLabels& labels, std::string cluster) {
  WorkloadInfo w;
  w.pod = std::string(pod);
  w.workload = workloadOf(pod, generate_name, owner, labels).name;
  w.namespace_ = std::string(namespace_);
  w.canonical_service = canonicalService(labels, w.workload);
  w.canonical_revision = canonicalRevision(labels);
  w.cluster = std::move(cluster);
  return w;
}

}  // namespace sluice::agent::telemetry
