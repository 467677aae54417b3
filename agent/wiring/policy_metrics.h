// The policy authorizer's counters as Prometheus families (one name each;
// the engine's sluice_proxy_denied_total is the total of refusals over every
// path, these say why).
#pragma once

#include <cstdint>

#include "agent/authz/policy_authorizer.h"
#include "agent/telemetry/exposition.h"

namespace sluice::agent::wiring {

inline void writePolicyMetrics(telemetry::TextWriter& out,
                               const authz::PolicyAuthorizer& authorizer,
                               uint64_t updates_rejected) {
  using telemetry::MetricType;
  auto stats = authorizer.stats();
  out.family("sluice_policy_denied_total", MetricType::kCounter,
             "Inbound connections refused by policy (and open ones closed after a policy "
             "change), by reason");
  for (size_t i = 0; i < stats.denied.size(); ++i)
    out.sample(
        "sluice_policy_denied_total",
        telemetry::renderLabels({{"reason", authz::toString(static_cast<authz::DenyReason>(i))}}),
        stats.denied[i]);
  out.family("sluice_policy_audit_matches_total", MetricType::kCounter,
             "Inbound connection decisions that matched at least one AUDIT policy");
  out.sample("sluice_policy_audit_matches_total", "", stats.audit_matches);
  out.family("sluice_policy_updates_rejected_total", MetricType::kCounter,
             "Policy sets from the control plane that did not compile (the previous set stays)");
  out.sample("sluice_policy_updates_rejected_total", "", updates_rejected);
  auto view = authorizer.view();
  out.family("sluice_policy_authorization_policies", MetricType::kGauge,
             "AuthorizationPolicies in force on this node");
  out.sample("sluice_policy_authorization_policies", "",
             uint64_t{view ? view->policies().authorizationPolicies().size() : 0});
  out.family("sluice_policy_peer_authentications", MetricType::kGauge,
             "PeerAuthentications in force on this node");
  out.sample("sluice_policy_peer_authentications", "",
             uint64_t{view ? view->policies().peerAuthentications().size() : 0});
}

}  // namespace sluice::agent::wiring
