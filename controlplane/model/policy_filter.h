// Which policies a node receives: those whose scope selects at least one
// workload on the node, as the agent's PolicySet scopes them. The scope of a
// policy in the root namespace (sluice-system) without a selector is the
// whole mesh; without a selector, its namespace; with one, the workloads of
// its namespace whose labels hold every matchLabels pair, except for an
// AuthorizationPolicy in the root namespace, whose selector picks workloads
// of every namespace (Istio). (A PeerAuthentication in the root namespace
// with a selector is ignored by the agents, as by ambient Istio.)
#pragma once

#include <map>
#include <string>

#include "sluice.pb.h"

namespace sluice::controlplane::model {

enum class PolicyKind { kAuthorization, kPeerAuthentication };

bool scopeSelects(PolicyKind kind, const std::string& policy_ns,
                  const google::protobuf::Map<std::string, std::string>& selector,
                  const sluice::api::v1::Workload& w);

// `all`: every policy, in a deterministic order (kept in the result).
sluice::api::v1::PolicySet policiesForNode(
    const std::string& node, const std::map<std::string, sluice::api::v1::Workload>& workloads,
    const sluice::api::v1::PolicySet& all);

}  // namespace sluice::controlplane::model
