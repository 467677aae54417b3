// AuthorizationPolicy and PeerAuthentication from their Kubernetes object
// form (a YAML or JSON document), apiVersion security.sluice.dev/v1 or
// security.istio.io/v1 / v1beta1.
//
// Refused, with a message that names the object and the field and says what
// to write instead: what Istio's validation refuses (pkg/config/validation:
// empty sources, DENY without rules, bad CIDRs and ports, unknown `when`
// keys...), wrong types (a list where a string belongs, an unquoted port),
// unknown fields (as `kubectl apply` does with its default strict field
// validation; a misspelt `principal` must not silently widen a policy), and
// what Sluice cannot enforce at all: CUSTOM (external authorization) and
// targetRef(s) (waypoints and gateways; Sluice has neither).
// Accepted with a warning on the object: HTTP fields (see policy_set.cc for
// how they are enforced), dry-run, DISABLE, IPv6 blocks, and the documented
// pitfalls (mTLS-only not-forms in ALLOW, spiffe:// principals).
#pragma once

#include <yaml-cpp/yaml.h>

#include "common/policy/model.h"
#include "sluice/common/result.h"

namespace sluice::policy {

// Whether the document is a kind this file parses ("AuthorizationPolicy" or
// "PeerAuthentication" in an accepted group), so a caller can route it.
bool isAuthorizationPolicy(const YAML::Node& object);
bool isPeerAuthentication(const YAML::Node& object);

// metadata.annotations["istio.io/dry-run"] says true (as Go's strconv.ParseBool).
bool dryRunRequested(const YAML::Node& metadata);

// The namespace a policy object's scope is judged in: its own, except a
// security.istio.io object in Istio's root namespace, which is Sluice's
// root namespace (mesh-wide, as in Istio).
std::string scopeNamespace(const YAML::Node& object, const std::string& ns);

Result<AuthorizationPolicy> parseAuthorizationPolicy(const YAML::Node& object);
Result<PeerAuthentication> parsePeerAuthentication(const YAML::Node& object);

}  // namespace sluice::policy
