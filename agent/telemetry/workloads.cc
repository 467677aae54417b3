#include "agent/telemetry/workloads.h"

#include <algorithm>
#include <cctype>

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

}  // namespace

WorkloadRef workloadOf(std::string_view pod, const Owner& owner, const PodLabels& labels) {
  if (owner.name.empty()) return {"Pod", std::string(pod)};
  if (owner.kind == "ReplicaSet") {
    // ReplicaSet "<deployment>-<hash>": the hash is the pods' label. Istio
    // tests the name's suffix for the hash, then trims "-<hash>" (nothing
    // when the dash is missing): the same here, to the letter.
    if (const auto* hash = label(labels, "pod-template-hash");
        hash && owner.name.ends_with(*hash)) {
      std::string suffix = "-" + *hash;
      std::string_view name = owner.name;
      if (name.ends_with(suffix)) name.remove_suffix(suffix.size());
      return {"Deployment", std::string(name)};
    }
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

WorkloadInfo describeWorkload(std::string_view pod, std::string_view namespace_, const Owner& owner,
                              const PodLabels& labels, std::string cluster) {
  WorkloadInfo w;
  w.pod = std::string(pod);
  w.workload = workloadOf(pod, owner, labels).name;
  w.namespace_ = std::string(namespace_);
  w.canonical_service = canonicalService(labels, w.workload);
  w.canonical_revision = canonicalRevision(labels);
  w.cluster = std::move(cluster);
  return w;
}

const ServiceRef* guessInboundService(const WorkloadSnapshot& snap, uint32_t ip, uint16_t port) {
  auto it = snap.services_by_endpoint.find(ip);
  if (it == snap.services_by_endpoint.end()) return nullptr;
  for (const auto& svc : it->second)
    if (std::find(svc.target_ports.begin(), svc.target_ports.end(), port) != svc.target_ports.end())
      return &svc;
  return nullptr;
}

}  // namespace sluice::agent::telemetry
