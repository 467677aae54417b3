// The L4 subset of Istio's security.istio.io/v1 AuthorizationPolicy and
// PeerAuthentication, as Sluice converts them (group security.sluice.dev/v1,
// same field names and semantics). Values stay in Istio's string form (what a
// user wrote, what `sluicectl policies` shows, what goes on the wire); the
// parser has validated them and PolicySet::build compiles them.
//
// Sources for the semantics (snapshots listed in
// shared/research/observability-policy.md): istio/api
// security/v1beta1/authorization_policy.proto (the reference doc),
// istio/istio pilot/pkg/serviceregistry/ambient/authorization.go (conversion
// for ztunnel) and pkg/config/validation (what Istio rejects), istio/ztunnel
// src/rbac.rs and src/state.rs (matching and evaluation order).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sluice::policy {

// Policies here apply to every namespace (as in Istio's root namespace).
inline constexpr const char* kRootNamespace = "sluice-system";
// Istio's default root namespace: a security.istio.io policy there is read
// into kRootNamespace (policy::scopeNamespace), so a mesh-wide policy moved
// from Istio stays mesh-wide.
inline constexpr const char* kIstioRootNamespace = "istio-system";

// matchLabels, sorted by key. Empty: no selector.
using LabelMap = std::vector<std::pair<std::string, std::string>>;

enum class Action : uint8_t { kAllow, kDeny, kAudit };
const char* toString(Action a);  // "ALLOW" | "DENY" | "AUDIT"

// rules[].from[].source. `l7_fields` names the fields that need HTTP
// (requestPrincipals, remoteIpBlocks, trustDomains and their not-forms):
// Sluice enforces at L4 only, so their values are not kept.
struct Source {
  std::vector<std::string> principals, not_principals;
  std::vector<std::string> namespaces, not_namespaces;
  std::vector<std::string> service_accounts, not_service_accounts;  // "ns/sa" or "sa"
  std::vector<std::string> ip_blocks, not_ip_blocks;
  std::vector<std::string> l7_fields;
};

// rules[].to[].operation; `l7_fields`: hosts, methods, paths and not-forms.
struct Operation {
  std::vector<std::string> ports, not_ports;
  std::vector<std::string> l7_fields;
};

// rules[].when[]. Keys enforced at L4: source.ip, source.namespace,
// source.principal, destination.ip, destination.port; any other (valid
// Istio) key needs HTTP.
struct Condition {
  std::string key;
  std::vector<std::string> values, not_values;
};
bool isL4ConditionKey(const std::string& key);

// One rule: from (OR'd sources) AND to (OR'd operations) AND every condition.
// An absent from/to/when does not constrain; a rule with none matches
// everything ("An empty rule is always matched", authorization_policy.proto).
struct Rule {
  std::vector<Source> from;
  std::vector<Operation> to;
  std::vector<Condition> when;
  bool hasL7() const;
  std::vector<std::string> l7Fields() const;  // sorted, unique
};

struct AuthorizationPolicy {
  std::string ns;
  std::string name;
  std::string created;  // metadata.creationTimestamp (RFC 3339) or empty
  LabelMap selector;    // empty: the whole namespace (the mesh in kRootNamespace)
  Action action = Action::kAllow;
  std::vector<Rule> rules;  // empty: matches nothing (an ALLOW then allows nothing)
  bool dry_run = false;     // istio.io/dry-run: "true": kept for display, never enforced
  // What Sluice enforces differently from what was written (HTTP fields,
  // dry-run, ...): human-readable, for status conditions and the log.
  std::vector<std::string> warnings;
};

// UNSET inherits from the enclosing scope (workload -> namespace -> mesh);
// UNSET at every level is PERMISSIVE. DISABLE is accepted and enforced as
// PERMISSIVE: mutual TLS between enrolled pods cannot be turned off (Istio
// ambient ignores it the same way).
enum class MtlsMode : uint8_t { kUnset, kPermissive, kStrict, kDisable };
const char* toString(MtlsMode m);  // "UNSET" | "PERMISSIVE" | "STRICT" | "DISABLE"

struct PeerAuthentication {
  std::string ns;
  std::string name;
  std::string created;  // the oldest policy of a scope wins (Istio)
  LabelMap selector;    // empty: namespace scope (mesh scope in kRootNamespace)
  MtlsMode mode = MtlsMode::kUnset;
  std::vector<std::pair<uint16_t, MtlsMode>> port_level;  // sorted by port; workload scope only
  std::vector<std::string> warnings;
};

}  // namespace sluice::policy
