// The proxy's InboundAuthorizer on top of the compiled PolicySet: every
// inbound connection (15006 plaintext, 15008 CONNECT, same-node handoff) is
// evaluated against the policy set in force with the destination pod's
// labels from the control plane's view and the peer identity the engine
// authenticated (never anything the pod says).
//
// Complete-view gating: a pod is served only once the view holds its
// workload (by namespace/name; and by IP once the view has the pod's IP, so
// a pod recreated under the same name is not judged by its predecessor); the control plane sends
// the policies that select a workload in the message that first carries it (or earlier), so from
// then on its policies are here. Before that every connection to it is refused
// ("no policy view").
//
// Threads: update() on the discovery thread swaps one immutable snapshot
// (std::atomic<std::shared_ptr>); authorize() on worker threads loads it,
// evaluates and counts (relaxed atomics). No lock and no allocation on an
// allow.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/policy/policy_set.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::authz {

// A workload of this node as its policies see it.
struct LocalWorkload {
  std::string uid, ns, name;  // uid: the Kubernetes pod uid (shown, not matched)
  std::string identity;       // SPIFFE URI
  std::vector<std::pair<std::string, std::string>> labels;
  uint32_t ip4 = 0;  // network order; 0: none yet
  IpAddr ip6;        // empty: none (yet)
  // The address this node's own connections to the pod come from (kubelet
  // probes): what the node's routing picks towards the pod's IP. 0: unknown.
  uint32_t probe_source = 0;
  IpAddr probe_source6;  // the same towards the pod's IPv6 address; empty: unknown
};

// What the authorizer decides by: the policy set and this node's workloads
// by "namespace/name". Immutable once published.
class AuthzView {
 public:
  AuthzView(std::shared_ptr<const policy::PolicySet> policies,
            std::vector<LocalWorkload> workloads);
  const policy::PolicySet& policies() const { return *policies_; }
  const std::shared_ptr<const policy::PolicySet>& policySet() const { return policies_; }

  struct Entry {
    LocalWorkload workload;
    std::vector<policy::Label> labels;  // views into workload.labels
    policy::Workload view() const {
      return {workload.ns, workload.name, labels, workload.identity};
    }
  };
  // The workload "namespace/name" at ip (either family; the view may not
  // have the pod's IP of that family yet: then any; empty: any), or null.
  const Entry* find(std::string_view pod, const IpAddr& ip) const;
  const std::map<std::string, Entry, std::less<>>& workloads() const { return workloads_; }

 private:
  std::shared_ptr<const policy::PolicySet> policies_;
  std::map<std::string, Entry, std::less<>> workloads_;
};

// Why a connection was refused, for the counters (one per reason).
enum class DenyReason : uint8_t {
  kNoPolicyView,
  kDenyMatched,
  kNoAllowMatched,
  kStrictMtls,
  kCount
};
const char* toString(DenyReason r);  // "no_policy_view", "deny_matched", ...

struct AuthzStats {
  std::array<uint64_t, static_cast<size_t>(DenyReason::kCount)> denied{};
  uint64_t audit_matches = 0;  // connections that matched at least one AUDIT policy
};

class PolicyAuthorizer final : public ztunnel::InboundAuthorizer {
 public:
  struct Options {
    // Plaintext from the node's own address (kubelet probes) is allowed,
    // even under STRICT and whatever AuthorizationPolicies say (as Istio
    // ambient does); off: probes are ordinary plaintext.
    bool allow_node_probes = true;
    // Whether the node itself opened the connection from `node_side` to
    // `pod_side` (NodeSockets::has): only then is plaintext from the node's
    // address a probe; a connection the node forwarded with its address as
    // the source (a NodePort's, masqueraded) is ordinary plaintext. Unset:
    // every connection from the node's address is taken for a probe.
    std::function<bool(const SockAddr& node_side, const SockAddr& pod_side)> node_opened;
  };
  explicit PolicyAuthorizer(Options options);

  // Publishes a new view (discovery thread). Returns whether decisions may
  // differ from the previous view's for open connections (another policy
  // set, or a workload's labels changed): then the caller reauthorizes.
  bool update(std::shared_ptr<const policy::PolicySet> policies,
              std::vector<LocalWorkload> workloads);
  // The view in force; null until the first update (nothing is served).
  std::shared_ptr<const AuthzView> view() const { return view_.load(std::memory_order_acquire); }

  ztunnel::Authorization authorize(const ztunnel::InboundRequest& request) override;

  // The question authorize() asks the PolicySet, for a workload of `view`
  // (used by the admin API's authz check, so it is the data path's code).
  policy::Request requestFor(const AuthzView::Entry& entry, const IpAddr& source_ip,
                             std::string_view source_principal, const IpAddr& destination_ip,
                             uint16_t destination_port, bool mutual_tls) const;
  // "DENY matched by policy ns/name", "no ALLOW matched", ...
  static std::string explain(const policy::Decision& d);

  AuthzStats stats() const;
  const Options& options() const { return options_; }

 private:
  ztunnel::Authorization deny(DenyReason r, std::string why);

  Options options_;
  std::atomic<std::shared_ptr<const AuthzView>> view_;
  std::array<std::atomic<uint64_t>, static_cast<size_t>(DenyReason::kCount)> denied_{};
  std::atomic<uint64_t> audit_matches_{0};
};

}  // namespace sluice::agent::authz
