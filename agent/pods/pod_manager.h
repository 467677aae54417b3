// The enrolled-pod table of a node: which local pods exist (learned from CNI
// ADD, or re-adopted from the state file after a restart) and, from the
// control plane's view, which of them are enrolled. Enrolling a pod means:
// proxy listeners in its netns, the tc program on its interface, and its
// netns cookie in sluice_enrolled_v1 — in that order, so capture never points
// at a missing listener. Unenrolling undoes it in reverse.
//
// Thread-safe: CNI requests, control-plane updates and admin reads arrive on
// different threads; one mutex serialises them (never on the data path).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "agent/bpf/loader.h"
#include "sluice.pb.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::pods {

using Workload = sluice::api::v1::Workload;

struct PodRef {
  std::string uid;           // K8S_POD_UID (may be empty with some runtimes)
  std::string ns;            // K8S_POD_NAMESPACE
  std::string name;          // K8S_POD_NAME
  std::string container_id;  // CNI_CONTAINERID
  std::string netns_path;    // CNI_NETNS
  std::string ifname;        // CNI_IFNAME
  uint32_t ip4 = 0;          // from prevResult, network order
  std::string ip6;           // from prevResult, canonical text; empty when none
};

struct LocalPod {
  PodRef ref;
  UniqueFd netns;
  uint64_t netns_cookie = 0;
  bool enrolled = false;
  // From the control plane's view (persisted: a restarted agent needs the
  // pod's identity before the control plane answers).
  std::string service_account;
  // Its SPIFFE URI, from the namespace and service_account and computed only
  // where those are set; empty while the service account is unknown.
  std::string identity;
  // What the engine was given at addPod while enrolled: its identity for the
  // pod is fixed there, so a different service_account needs a re-register.
  std::string engine_service_account;
  std::string last_error;  // why enrollment failed, for config_dump
  // Not enrolled, yet its netns cookie stayed in the enrolled map (restore:
  // it was enrolled before and could not be re-adopted): its connections
  // are refused until it is enrolled again, or released when it leaves the
  // mesh or is deleted.
  bool held_capture = false;
};

// Decision taken for a pod: known to the control plane, and enrolled or not.
struct Decision {
  bool known = false;
  bool enrolled = false;
};

class PodManager {
 public:
  // Pod identities are SPIFFE URIs in trust_domain.
  PodManager(bpf::Loader& loader, ztunnel::Engine& engine, std::string state_file,
             std::string trust_domain);

  // CNI ADD. Waits up to `wait` for the control plane to know the pod, then
  // enrolls it if its workload is enrolled. Returns whether it is enrolled.
  Result<bool> add(const PodRef& ref, std::chrono::milliseconds wait);
  // CNI DEL: unenrolls and forgets the pod of container_id; an unknown
  // container is a no-op. Another container's pod is never removed, even
  // with the same uid (a pod's replacement sandbox); uid and netns_path only
  // find a record kept without a container id.
  void remove(const std::string& container_id, const std::string& uid,
              const std::string& netns_path);
  // Whether container_id is one of this node's pods (CNI CHECK tells an
  // unknown container from a wrong one).
  bool knows(const std::string& container_id) const;
  // CNI CHECK: the pod is known and its enrollment matches the desired state.
  Result<void> check(const std::string& container_id, const std::string& uid);

  // A view: reconciles every local pod. Version 0 is an interim (the view
  // the previous process kept, loaded before restore()): pods follow it where
  // it knows them, but a pod it does not know keeps its state until the
  // control plane's own view arrives.
  void onWorkloads(const std::map<std::string, Workload>& all, uint64_t version);

  // After a restart: re-opens the pods of the state file and re-enrolls those
  // that were enrolled, under the service account kept there (or, from an
  // older state file, the seeded view's), without waiting for the control
  // plane. Stale netns cookies in the enrolled map are removed.
  void restore();

  // An upgrade: while frozen, nothing is enrolled, unenrolled or persisted
  // (the successor takes the pods over from the state file); views are
  // only recorded and CNI ADD is refused (retry). thaw() (a handover that
  // did not finish) reconciles every pod with the latest view.
  void freeze();
  void thaw();

  nlohmann::json dump() const;
  size_t enrolledCount() const;
  // The SPIFFE URIs of the enrolled pods whose service account is known.
  std::set<std::string> enrolledIdentities() const;
  // "NAMESPACE/NAME" of each enrolled pod: the pods whose traffic the proxy
  // sees, and so the only ones its policies are enforced for.
  std::set<std::string> enrolledPods() const;

 private:
  Decision decide(const PodRef& ref) const;               // needs mu_
  void reconcile(LocalPod& pod);                          // needs mu_
  Result<void> enroll(LocalPod& pod);                     // needs mu_
  void unenroll(LocalPod& pod);                           // needs mu_
  void reregister(LocalPod& pod);                         // needs mu_
  void setServiceAccount(LocalPod& pod, std::string sa);  // needs mu_
  void persist() const;                                   // needs mu_
  const Workload* findWorkload(const PodRef& ref) const;  // needs mu_
  void warnSharedAddress(const LocalPod& pod) const;      // needs mu_

  bpf::Loader& loader_;
  ztunnel::Engine& engine_;
  std::string state_file_;
  std::string trust_domain_;

  mutable std::mutex mu_;
  std::condition_variable workloads_changed_;
  std::map<std::string, LocalPod> pods_;  // by container id
  std::map<std::string, Workload> workloads_;
  uint64_t version_ = 0;
  bool frozen_ = false;
};

}  // namespace sluice::agent::pods
