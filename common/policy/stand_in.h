// What enforces a policy that was refused and has no good version to keep in
// force: a control plane that (re)starts while the object is invalid, or an
// object that was never valid. Dropping it would fail open (a DENY or a
// STRICT gone, an ALLOW gone that was the only one), so a stand-in fails
// closed within the scope that can still be read, as Istio does with the
// parts of a policy it cannot enforce:
//   - AuthorizationPolicy ALLOW: allows nothing (other ALLOWs still allow);
//   - DENY, CUSTOM, or an action that cannot be read: denies everything;
//   - AUDIT, dry-run, or one bound with targetRef(s): none (it decides for
//     no workload);
//   - PeerAuthentication: STRICT (no port-level exceptions).
// Scope: spec.selector.matchLabels when it reads as a map of strings, else
// the whole namespace. None without a readable name and namespace. The
// stand-in's warnings say what it is and why.
#pragma once

#include <yaml-cpp/yaml.h>

#include <optional>
#include <string>

#include "common/policy/model.h"

namespace sluice::policy {

std::optional<AuthorizationPolicy> standInAuthorizationPolicy(const YAML::Node& object,
                                                              const std::string& why);
std::optional<PeerAuthentication> standInPeerAuthentication(const YAML::Node& object,
                                                            const std::string& why);

}  // namespace sluice::policy
