// The admin API's policy documents: /policies (the set in force and the
// local workloads each policy applies to; `sluicectl policies`) and
// /authz?from=...&to=... (one decision by the data path's code;
// `sluicectl authz check`).
#pragma once

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "agent/authz/policy_authorizer.h"
#include "sluice/common/addr.h"

namespace sluice::agent::wiring {

// "NAMESPACE/NAME" of this node's enrolled pods: a policy is enforced only
// for those (the proxy never sees an unmeshed pod's traffic).
using MeshedPods = std::set<std::string>;

// `rejected`: the error of the last policy set that did not compile (empty:
// none). Each policy names the meshed local workloads it applies to
// (`workloads`) and, apart, the unmeshed ones it selects but is not enforced
// for (`unmeshed_workloads`).
nlohmann::json policiesJson(const authz::PolicyAuthorizer& authorizer, const MeshedPods& meshed,
                            const std::string& rejected);

// from: "NS/SA" (an authenticated peer of that service account) or "IP"
// (plaintext from that address); to: "NS/POD:PORT", a workload of this node.
// 400 with {"error"} when a parameter is missing or malformed. A pod that
// is not meshed is ALLOW, reason "not meshed" (nothing is enforced for it),
// with what the policies would decide under `if_meshed`. An IP that
// `identity_of` names (a meshed pod's, mesh-wide) is judged as that pod's
// connections arrive: with its identity, over mutual TLS, from that IP.
using IdentityOf = std::function<std::optional<std::string>(const IpAddr&)>;
std::pair<int, nlohmann::json> authzCheckJson(const authz::PolicyAuthorizer& authorizer,
                                              const MeshedPods& meshed,
                                              const IdentityOf& identity_of,
                                              const std::string& trust_domain,
                                              const std::map<std::string, std::string>& query);

}  // namespace sluice::agent::wiring
