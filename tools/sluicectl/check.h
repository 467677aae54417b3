// `sluicectl check`: is this node ready for Sluice (--pre), and is Sluice on
// it healthy? Grouped ✔ / ‼ / ✘ lines like `linkerd check`, each problem with
// a hint saying what to do; exit status 1 when anything failed; -o json.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "controlplane/kube/client.h"

namespace sluice::ctl::check {

enum class Status { kOk, kWarn, kFail };
const char* toString(Status s);  // "ok" | "warning" | "error"

struct Outcome {
  Status status = Status::kOk;
  std::string detail;  // what was found (shown under the line when not ok)
  std::string hint;    // what to do (required when not ok)

  static Outcome ok(std::string detail = "") { return {Status::kOk, std::move(detail), ""}; }
  static Outcome warn(std::string detail, std::string hint) {
    return {Status::kWarn, std::move(detail), std::move(hint)};
  }
  static Outcome failed(std::string detail, std::string hint) {
    return {Status::kFail, std::move(detail), std::move(hint)};
  }
};

struct Check {
  std::string group;
  std::string title;  // what holds when it passes: "the agent is ready"
  std::function<Outcome()> run;
};

struct Result {
  std::string group;
  std::string title;
  Outcome outcome;
};

// Runs every check in order (a check that throws fails with the message).
std::vector<Result> runAll(const std::vector<Check>& checks);
// Linkerd's layout: a header per group, a line per check, detail and hint
// indented under a problem, and a closing status line.
std::string render(const std::vector<Result>& results);
nlohmann::json toJson(const std::vector<Result>& results);
// 0 when nothing failed (warnings pass), else 1.
int exitStatus(const std::vector<Result>& results);

// Where the node's pieces are (flags of `sluicectl check`).
struct NodePaths {
  std::string admin;         // agent admin API, IP:PORT
  std::string pin_dir;       // pinned BPF state of the agent
  std::string cni_conf_dir;  // the container runtime's CNI config dir
  std::string cni_bin_dir;   // where sluice-cni is installed
};

// Before install: kernel, BPF, io_uring, CNI, clock (check_pre.cc).
std::vector<Check> preInstallChecks(const NodePaths& paths);
// After install: agent, control plane, identities, BPF, CNI (check_install.cc).
std::vector<Check> installChecks(const NodePaths& paths);

// The Kubernetes API, for the cluster-wide checks (check_cluster.cc).
namespace kube = controlplane::kube;
struct ClusterAccess {
  sluice::Result<kube::Config> config;  // an error is reported by the first check
  std::string where;                    // "kubeconfig PATH", for messages
};
// --kubeconfig PATH, else $KUBECONFIG (its first file), else the pod's service
// account when KUBERNETES_SERVICE_HOST is set; nullopt: none (no cluster checks).
std::optional<ClusterAccess> findCluster(const std::string& kubeconfig);
// The agent DaemonSet on every node and the control-plane Deployment in `ns`.
std::vector<Check> clusterChecks(ClusterAccess access, const std::string& ns);

}  // namespace sluice::ctl::check
