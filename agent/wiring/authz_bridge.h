// The discovery view -> the policy authorizer's view: the policy set in
// force and this node's workloads (labels, identity, the address the node's
// own probes come from). A change that can alter decisions makes the engine
// re-evaluate its open inbound connections.
#pragma once

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "agent/authz/policy_authorizer.h"
#include "agent/authz/probe_source.h"
#include "agent/discovery/client.h"
#include "sluice/common/addr.h"
#include "sluice/common/x509.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::wiring {

class AuthzBridge {
 public:
  AuthzBridge(authz::PolicyAuthorizer& authorizer, std::string node, std::string trust_domain)
      : authorizer_(authorizer), node_(std::move(node)), trust_domain_(std::move(trust_domain)) {}
  // The engine to reauthorize on a change (set once it exists).
  void setEngine(ztunnel::Engine* engine) { engine_ = engine; }

  // Discovery thread: before the pods of `view` are enrolled, so that a pod's
  // first connection finds its workload and policies.
  void onView(const discovery::View& view) {
    std::vector<authz::LocalWorkload> local;
    for (const auto& [uid, w] : view.workloads) {
      if (w.node() != node_) continue;
      authz::LocalWorkload l;
      l.uid = uid;
      l.ns = w.namespace_();
      l.name = w.name();
      l.identity = x509::workloadUri(trust_domain_, w.namespace_(), w.service_account());
      for (const auto& [k, v] : w.labels()) l.labels.emplace_back(k, v);
      std::sort(l.labels.begin(), l.labels.end());
      // The first address of each family.
      for (const auto& ip : w.ips()) {
        auto a = IpAddr::parse(ip);
        if (a && a->isV4() && l.ip4 == 0) l.ip4 = a->v4net();
        if (a && a->isV6() && l.ip6.empty()) l.ip6 = *a;
      }
      if (l.ip4 != 0) l.probe_source = probes_.forPod(IpAddr::v4(l.ip4)).v4net();
      l.probe_source6 = probes_.forPod(l.ip6);
      local.push_back(std::move(l));
    }
    {
      std::lock_guard lk(mu_);
      rejected_.count = view.policy_sets_rejected;
      rejected_.error = view.policy_error;
    }
    if (authorizer_.update(view.policies, std::move(local)) && engine_) engine_->reauthorize();
  }

  // Policy sets of the control plane that did not compile, and why the last
  // one did not (empty once a good one followed).
  struct Rejected {
    uint64_t count = 0;
    std::string error;
  };
  Rejected rejected() const {
    std::lock_guard lk(mu_);
    return rejected_;
  }

 private:
  authz::PolicyAuthorizer& authorizer_;
  std::string node_, trust_domain_;
  authz::ProbeSources probes_;
  ztunnel::Engine* engine_ = nullptr;
  mutable std::mutex mu_;
  Rejected rejected_;
};

}  // namespace sluice::agent::wiring
