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
#include <vector>

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

// The mesh's meshed pods (the control plane's view, every node), as authz
// check asks about a source. Either may be unset (none known).
struct SourceLookup {
  // A meshed pod's identity (SPIFFE URI) by its address.
  std::function<std::optional<std::string>(const IpAddr&)> identity_of;
  // The addresses of the meshed pods with an identity, each with its "NS/NAME".
  std::function<std::vector<std::pair<IpAddr, std::string>>(const std::string&)> pods_of;
  // The addresses of the pods of service account NS/SA that are not meshed
  // (their connections arrive in plaintext), each with its "NS/NAME".
  std::function<std::vector<std::pair<IpAddr, std::string>>(const std::string& ns,
                                                            const std::string& sa)>
      unmeshed_of;
};

// from: "NS/SA" (an authenticated peer of that service account) or "IP"
// (plaintext from that address); to: "NS/POD:PORT", a workload of this node.
// 400 with {"error"} when a parameter is missing or malformed. A pod that
// is not meshed is ALLOW, reason "not meshed" (nothing is enforced for it),
// with what the policies would decide under `if_meshed`. An IP that
// `identity_of` names is judged as that pod's connections arrive: with its
// identity, over mutual TLS, from that IP. NS/SA is judged from each
// address `pods_of` gives (`by_source`), as its pods' connections arrive:
// when the policies decide by source address and those differ, the decision
// is "DEPENDS" (reason "source address"); with no pod known, from no address.
std::pair<int, nlohmann::json> authzCheckJson(const authz::PolicyAuthorizer& authorizer,
                                              const MeshedPods& meshed, const SourceLookup& sources,
                                              const std::string& trust_domain,
                                              const std::map<std::string, std::string>& query);

}  // namespace sluice::agent::wiring
