// The policy resources the Kubernetes source lists and watches, next to the
// core ones: Sluice's AuthorizationPolicy and PeerAuthentication CRDs
// (security.sluice.dev/v1, deploy/crds.yaml), and with --watch-istio-policies
// Istio's (security.istio.io/v1, read only: istiod owns their status).
// Sluice writes an `Accepted` condition on its own objects (policy_status.h).
#pragma once

#include <string>
#include <vector>

#include "controlplane/kube/client.h"
#include "controlplane/kube/policy_status.h"

namespace sluice::controlplane::kube {

struct PolicyResource {
  std::string kind;
  std::string path;  // the collection, e.g. /apis/security.sluice.dev/v1/authorizationpolicies
  std::string api_version;  // e.g. security.sluice.dev/v1
  bool write_status = false;
};

std::vector<PolicyResource> policyResources(bool watch_istio);

// PATCHes the object's status subresource; logs the outcome (a refusal says
// which RBAC rule is missing). Never throws, never blocks longer than 10 s.
void writeStatus(const Client& client, const std::string& collection_path,
                 const StatusWrite& write);

}  // namespace sluice::controlplane::kube
