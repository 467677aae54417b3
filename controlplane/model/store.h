// The control plane's model: Kubernetes objects grouped by the source that
// supplied them (a file in local mode), the workloads derived from them, and a
// bounded history of versioned deltas so agents can resume.
//
// Thread-safe. Sources call setSource/removeSource; discovery streams call
// snapshot/waitSince from gRPC threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/policy/model.h"
#include "controlplane/model/opaque_ports.h"
#include "sluice.pb.h"
#include "sluice/common/result.h"

namespace sluice::controlplane::model {

using Workload = sluice::api::v1::Workload;
using ServiceView = sluice::api::v1::Service;  // what agents receive

inline constexpr const char* kMeshLabel = "sluice.dev/mesh";

struct Namespace {
  std::string name;
  std::map<std::string, std::string> labels;
};

struct Pod {
  std::string uid;
  std::string name;
  std::string ns;
  std::string service_account = "default";
  std::string node;
  std::vector<std::string> ips;
  std::map<std::string, std::string> labels;
  // The controller from metadata.ownerReferences (the entry with controller:
  // true, as Istio reads it). Empty when the pod has none.
  std::string owner_kind;
  std::string owner_name;
  std::string generate_name;  // metadata.generateName
  // sluice.dev/opaque-ports (model/opaque_ports.h); a bad value is ignored.
  std::vector<PortRange> opaque_ports;
  // Ready condition True (local mode: no conditions given counts as ready
  // unless the phase says otherwise); false while terminating.
  bool ready = true;
  std::map<std::string, uint32_t> named_ports;  // containers[].ports[] by name
  // spec.hostNetwork: the pod runs in its node's network namespace. It is
  // never enrolled (its traffic cannot be told from the node's), and its
  // address names the node, not the pod: the view gives it none (it stays
  // an endpoint of the Services that select it).
  bool host_network = false;
};

struct ServicePort {
  std::string name;
  uint32_t port = 0;
  std::string protocol = "TCP";
  uint32_t target_port = 0;      // 0 and no name: same as port
  std::string target_port_name;  // a named container port
  std::string app_protocol;      // spec.ports[].appProtocol, as written
};

struct Service {
  std::string ns;
  std::string name;
  std::vector<std::string> vips;  // empty: headless or ExternalName
  bool headless = false;          // spec.clusterIP: None
  std::vector<ServicePort> ports;
  bool has_selector = false;
  std::map<std::string, std::string> selector;
  std::vector<PortRange> opaque_ports;  // sluice.dev/opaque-ports: Service ports
};

struct EndpointSlice {
  struct Endpoint {
    std::vector<std::string> addresses;
    bool ready = true;  // conditions.ready; unset means ready (API semantics)
    // conditions.serving (unset: as ready) and conditions.terminating (unset:
    // false): a Service with no ready endpoint falls back to the serving,
    // terminating ones, as kube-proxy does (KEP-1669).
    bool serving = true;
    bool terminating = false;
    std::string target_uid;
  };
  std::string ns;
  std::string name;
  std::string service;                                  // label kubernetes.io/service-name
  std::vector<std::pair<std::string, uint32_t>> ports;  // name -> port
  std::vector<Endpoint> endpoints;
};

struct Objects {
  std::vector<Namespace> namespaces;
  std::vector<Pod> pods;
  std::vector<Service> services;
  std::vector<EndpointSlice> endpoint_slices;
  std::vector<policy::AuthorizationPolicy> authorization_policies;
  std::vector<policy::PeerAuthentication> peer_authentications;
};

struct Delta {
  uint64_t version = 0;
  bool full = false;  // true: `upserts` and `services` are the whole state
  std::vector<Workload> upserts;
  std::vector<std::string> removed_uids;
  std::vector<ServiceView> services;
  std::vector<std::string> removed_services;  // "namespace/name"
  bool policies_changed = false;              // some policy was added, changed or removed
  // Asked for a node: the complete set of policies that select a workload on
  // it (model/policy_filter.h), at `version` (computed under the same lock
  // as the workloads, so a workload never arrives before its policies).
  std::optional<sluice::api::v1::PolicySet> policies;
};

// How a Service's endpoints are found.
enum class EndpointsMode {
  // From EndpointSlices; a selector Service without slices gets its
  // endpoints from the selector and pod readiness, as the endpoints
  // controller would (local mode, where there is no such controller).
  kSlicesOrSelector,
  // From EndpointSlices only (Kubernetes: the cluster's controller writes them).
  kSlicesOnly,
};

class Store {
 public:
  static constexpr size_t kHistory = 4096;

  explicit Store(EndpointsMode mode = EndpointsMode::kSlicesOrSelector);

  // Replaces everything `source` supplied. Fails (changing nothing) when an
  // object collides with one from another source (same pod uid / namespace).
  Result<void> setSource(const std::string& source, Objects objects);
  void removeSource(const std::string& source);
  // A source that will supply objects: until each expected one has applied
  // once, the store is not ready (its view would be partial: an empty one
  // would take every workload, Service and policy from the agents).
  void expect(const std::string& source);
  bool ready() const;
  // Blocks until ready, stop() or the timeout; returns ready().
  bool waitReady(std::chrono::milliseconds timeout);

  uint64_t version() const;
  // Random and non-zero, fixed for the life of this Store: versions of two
  // Stores (a control plane and its restarted self) are only comparable
  // when their epochs are equal.
  uint64_t epoch() const { return epoch_; }
  // With a node name, the result also carries that node's policies.
  Delta snapshot(const std::string& node = "") const;
  // Blocks until the version moves past `since` (or timeout / stop()).
  // Returns the changes since `since` (full snapshot if history is too short),
  // or nullopt when nothing changed.
  std::optional<Delta> waitSince(uint64_t since, std::chrono::milliseconds timeout,
                                 const std::string& node = "");
  // Every policy of every source, ordered by kind, namespace and name.
  sluice::api::v1::PolicySet policies() const;
  void stop();

  static bool enrolled(const Pod& pod, const Namespace* ns);

  // Node authorization: a pod with this namespace and service account is
  // scheduled on `node` and running (has an IP) in the current view.
  bool runsOn(const std::string& node, const std::string& ns,
              const std::string& service_account) const;

 private:
  void recompute();                                            // needs mu_
  std::map<std::string, ServiceView> computeServices() const;  // needs mu_
  sluice::api::v1::PolicySet computePolicies() const;          // needs mu_
  Delta snapshotLocked(const std::string& node) const;         // needs mu_

  const EndpointsMode mode_;
  const uint64_t epoch_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  bool stopped_ = false;
  std::map<std::string, Objects> sources_;
  std::set<std::string> pending_;  // expected sources that have not applied yet
  std::map<std::string, Workload> workloads_;
  std::map<std::string, ServiceView> services_;  // by "namespace/name"
  sluice::api::v1::PolicySet policies_;
  uint64_t version_ = 0;
  std::deque<Delta> history_;  // deltas with versions (oldest first)
};

}  // namespace sluice::controlplane::model
