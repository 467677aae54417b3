#include "controlplane/model/policy_filter.h"

#include <vector>

#include "common/policy/model.h"

namespace sluice::controlplane::model {

bool scopeSelects(PolicyKind kind, const std::string& policy_ns,
                  const google::protobuf::Map<std::string, std::string>& selector,
                  const sluice::api::v1::Workload& w) {
  bool root = policy_ns == policy::kRootNamespace;
  if (selector.empty()) return root || policy_ns == w.namespace_();
  bool mesh_wide = root && kind == PolicyKind::kAuthorization;
  if (!mesh_wide && policy_ns != w.namespace_()) return false;
  for (const auto& [k, v] : selector) {
    auto it = w.labels().find(k);
    if (it == w.labels().end() || it->second != v) return false;
  }
  return true;
}

sluice::api::v1::PolicySet policiesForNode(
    const std::string& node, const std::map<std::string, sluice::api::v1::Workload>& workloads,
    const sluice::api::v1::PolicySet& all) {
  std::vector<const sluice::api::v1::Workload*> local;
  for (const auto& [uid, w] : workloads)
    if (w.node() == node) local.push_back(&w);
  auto anySelected = [&](PolicyKind kind, const auto& p) {
    for (const auto* w : local)
      if (scopeSelects(kind, p.namespace_(), p.selector(), *w)) return true;
    return false;
  };
  sluice::api::v1::PolicySet out;
  for (const auto& p : all.authorization())
    if (anySelected(PolicyKind::kAuthorization, p)) *out.add_authorization() = p;
  for (const auto& p : all.peer())
    if (anySelected(PolicyKind::kPeerAuthentication, p)) *out.add_peer() = p;
  return out;
}

}  // namespace sluice::controlplane::model
