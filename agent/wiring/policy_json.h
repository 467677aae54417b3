// The admin API's policy documents: /policies (the set in force and the
// local workloads each policy applies to; `sluicectl policies`) and
// /authz?from=...&to=... (one decision by the data path's code;
// `sluicectl authz check`).
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "agent/authz/policy_authorizer.h"

namespace sluice::agent::wiring {

// `rejected`: the error of the last policy set that did not compile (empty: none).
nlohmann::json policiesJson(const authz::PolicyAuthorizer& authorizer, const std::string& rejected);

// from: "NS/SA" (an authenticated peer of that service account) or "IP"
// (plaintext from that address); to: "NS/POD:PORT", a workload of this node.
// 400 with {"error"} when a parameter is missing or malformed.
std::pair<int, nlohmann::json> authzCheckJson(const authz::PolicyAuthorizer& authorizer,
                                              const std::string& trust_domain,
                                              const std::map<std::string, std::string>& query);

}  // namespace sluice::agent::wiring
