// The compiled, immutable set of authorization and peer authentication
// policies a node enforces. Built once per policy update (off the data path),
// shared as shared_ptr<const PolicySet>; evaluate() is thread-safe, does not
// allocate and does not block, so the proxy's InboundAuthorizer can call it
// on worker threads for every new connection.
//
// Evaluation (ztunnel src/state.rs::assert_rbac, istio/api
// authorization_policy.proto "The evaluation is determined by the following
// rules"):
//   0. a node probe (plaintext from this node's own address) is allowed when
//      Options::allow_node_probes (default on: see Options);
//   1. plaintext to a port whose effective PeerAuthentication mode is STRICT
//      is denied ("STRICT mTLS");
//   2. any matching DENY policy denies;
//   3. no ALLOW policy applies to the workload: allowed;
//   4. any matching ALLOW policy allows;
//   5. denied ("no ALLOW matched").
// AUDIT policies never decide; every matching one is reported.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/policy/model.h"
#include "sluice/common/result.h"

namespace sluice::policy {

struct Label {
  std::string_view key;
  std::string_view value;
};

// The destination workload (an enrolled pod of this node).
struct Workload {
  std::string_view ns;
  std::string_view name;
  std::span<const Label> labels;  // any order, unique keys
  std::string_view identity;      // its SPIFFE ID (logs only)
};

// One inbound connection. All views must outlive the evaluate() call only.
struct Request {
  Workload destination;
  uint32_t destination_ip = 0;  // network order
  // An IPv6 destination instead (destination_ip 0); IPv4-mapped ones count as IPv4.
  std::optional<std::array<uint8_t, 16>> destination_ip6;
  uint16_t destination_port = 0;
  uint32_t source_ip = 0;  // network order
  // An IPv6 source instead (source_ip 0); IPv4-mapped ones count as IPv4.
  std::optional<std::array<uint8_t, 16>> source_ip6;
  // The peer's verified SPIFFE ID (mTLS handshake, or the node itself for a
  // same-node handoff); empty: plaintext, not authenticated. Never anything
  // the client claims about itself.
  std::string_view source_principal;
  bool mutual_tls = false;  // carried by an HBONE tunnel (logs; authentication is the principal)
  uint32_t node_ip = 0;     // this node's address, network order; 0: unknown (no probe allowance)
  // Its IPv6 address towards the pod (probes to the pod's IPv6 address come from it); none:
  // unknown.
  std::optional<std::array<uint8_t, 16>> node_ip6;

  // Whether the source is this node's address (node_ip or node_ip6).
  bool fromNode() const {
    return (node_ip != 0 && source_ip == node_ip) ||
           (node_ip6 && source_ip6 && *node_ip6 == *source_ip6);
  }
};

struct PolicyRef {
  std::string_view ns;  // empty: none
  std::string_view name;
  bool empty() const { return name.empty(); }
};

enum class Reason : uint8_t {
  kNoPolicy,        // allowed: no ALLOW policy applies to the workload
  kAllowMatched,    // allowed by `policy`
  kNodeProbe,       // allowed: plaintext from the node's own address (kubelet probes)
  kDenyMatched,     // denied by `policy`
  kNoAllowMatched,  // denied: ALLOW policies apply, none matched
  kStrictMtls,      // denied: plaintext, and `policy` (a PeerAuthentication) makes the port STRICT
};
const char* toString(
    Reason r);  // "no policy", "ALLOW matched", ..., "no ALLOW matched", "STRICT mTLS"

// The PolicyRefs point into the PolicySet: keep the set (its shared_ptr)
// alive as long as the Decision is used.
struct Decision {
  static constexpr size_t kMaxAudits = 4;

  bool allow = false;
  Reason reason = Reason::kNoPolicy;
  PolicyRef policy;  // the policy that decided, when there is one
  std::array<PolicyRef, kMaxAudits> audits{};
  uint8_t audit_count = 0;  // matching AUDIT policies (the first kMaxAudits are in `audits`)

  // "deny: policy ns/name (DENY matched)", "deny: no ALLOW matched", ... (allocates).
  std::string describe() const;
};

class PolicySet {
 public:
  struct Options {
    std::string root_namespace = kRootNamespace;
    // Kubelet probes come in plaintext from the node's own address; the issue
    // makes allowing them the documented default, as Istio ambient does: its
    // CNI marks node-originated probe traffic so that it is "explicitly
    // ignored by Istio policy enforcement" (istio.io docs/ambient/usage/
    // networkpolicy, "Ambient, health probes, and Kubernetes NetworkPolicy").
    // So a probe passes STRICT and AuthorizationPolicy alike; off: probes are
    // ordinary plaintext.
    bool allow_node_probes = true;
  };

  // Compiles the policies. Fails, naming the object, on a value the parser
  // would have refused (objects can also come off the wire) or on a
  // duplicate ns/name; CUSTOM does not exist here (the parser refuses it).
  static Result<std::shared_ptr<const PolicySet>> build(
      std::vector<AuthorizationPolicy> authorization, std::vector<PeerAuthentication> peer,
      Options options);
  static Result<std::shared_ptr<const PolicySet>> build(
      std::vector<AuthorizationPolicy> authorization, std::vector<PeerAuthentication> peer) {
    return build(std::move(authorization), std::move(peer), Options{});
  }
  // No policies at all: everything allowed (until the first update arrives the
  // agent does not serve a pod; that is the caller's business).
  static std::shared_ptr<const PolicySet> empty();

  ~PolicySet();
  PolicySet(const PolicySet&) = delete;
  PolicySet& operator=(const PolicySet&) = delete;

  Decision evaluate(const Request& request) const;

  // The effective mTLS mode on a port of a workload (never kUnset or
  // kDisable: PERMISSIVE or STRICT), and the PeerAuthentication that set it.
  MtlsMode mtlsMode(const Workload& workload, uint16_t port, PolicyRef* from = nullptr) const;
  // The enforced AuthorizationPolicies that apply to a workload (sluicectl
  // policies, sluicectl authz check): mesh-wide first, then namespace, each
  // by name. Allocates.
  std::vector<const AuthorizationPolicy*> applicable(const Workload& workload) const;

  const std::vector<AuthorizationPolicy>& authorizationPolicies() const { return authorization_; }
  const std::vector<PeerAuthentication>& peerAuthentications() const { return peer_; }
  const Options& options() const { return options_; }

  struct Index;  // compiled form (policy_set.cc)

 private:
  PolicySet(std::vector<AuthorizationPolicy> a, std::vector<PeerAuthentication> p, Options o);

  std::vector<AuthorizationPolicy> authorization_;  // sorted by ns/name
  std::vector<PeerAuthentication> peer_;            // sorted by ns/name
  Options options_;
  std::unique_ptr<const Index> index_;
};

}  // namespace sluice::policy
