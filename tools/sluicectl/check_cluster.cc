// `sluicectl check --kubeconfig`: Sluice across the cluster, from the
// Kubernetes API: the agent DaemonSet on every node and the control-plane
// Deployment. Uses the control plane's own client (controlplane/kube/).
#include <cstdlib>
#include <map>
#include <memory>

#include "sluice/common/fmt.h"
#include "tools/sluicectl/check.h"

using nlohmann::json;

namespace sluice::ctl::check {
namespace {

constexpr const char* kAgent = "sluice-agent";
constexpr const char* kControlPlane = "sluice-controlplane";

// One GET, parsed; `error` says why there is no object.
struct Fetched {
  long status = 0;
  json body;
  std::string error;  // no response at all
};

std::string message(const Fetched& f) {
  if (f.body.is_object() && f.body.contains("message") && f.body["message"].is_string())
    return f.body["message"].get<std::string>();
  return fmt::format("HTTP {}", f.status);
}

int64_t num(const json& obj, const char* key, int64_t otherwise = 0) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_number_integer() ? it->get<int64_t>() : otherwise;
}

// What the cluster said, fetched once and shared by the checks.
struct ClusterState {
  sluice::Result<kube::Config> config;
  std::string where;  // where the configuration came from, for messages
  std::string ns;
  std::unique_ptr<kube::Client> client;
  std::map<std::string, Fetched> cache;

  ClusterState(sluice::Result<kube::Config> c, std::string w, std::string n)
      : config(std::move(c)), where(std::move(w)), ns(std::move(n)) {
    if (config) client = std::make_unique<kube::Client>(*config);
  }

  const Fetched& get(const std::string& path) {
    auto it = cache.find(path);
    if (it != cache.end()) return it->second;
    Fetched f;
    auto r = client->get(path, 10000);
    if (!r) {
      f.error = r.error().describe();
    } else {
      f.status = r->status;
      f.body = json::parse(r->body, nullptr, false);
      if (f.body.is_discarded() && f.status == 200)
        f.error = fmt::format("the answer to GET {} is not JSON", path);
    }
    return cache.emplace(path, std::move(f)).first->second;
  }
  const Fetched& daemonSet() {
    return get(fmt::format("/apis/apps/v1/namespaces/{}/daemonsets/{}", ns, kAgent));
  }
  const Fetched& deployment() {
    return get(fmt::format("/apis/apps/v1/namespaces/{}/deployments/{}", ns, kControlPlane));
  }
  const Fetched& pods(const char* app) {
    return get(fmt::format("/api/v1/namespaces/{}/pods?labelSelector=app.kubernetes.io%2Fname%3D{}",
                           ns, app));
  }
  // The API answered at all, with credentials it accepts.
  bool reachable() {
    if (!config) return false;
    const auto& f = daemonSet();
    return f.error.empty() && f.status != 401 && f.status != 403;
  }
  Outcome notChecked() const {
    return Outcome::warn("not checked: the Kubernetes API could not be read",
                         "fix the check above first");
  }
  std::string describe(const char* kind, const char* name) const {
    return fmt::format("kubectl -n {} describe {} {}", ns, kind, name);
  }
};

// "node2: sluice-agent-x7k2p (CrashLoopBackOff)" for each pod that is not
// Ready; nodes that have no pod are counted by the caller.
std::vector<std::string> notReadyPods(const Fetched& pods, size_t* total) {
  std::vector<std::string> out;
  *total = 0;
  if (pods.status != 200 || !pods.body.is_object()) return out;
  for (const auto& p : pods.body.value("items", json::array())) {
    ++*total;
    const json status = p.value("status", json::object());
    bool ready = false;
    for (const auto& c : status.value("conditions", json::array()))
      if (c.value("type", "") == "Ready") ready = c.value("status", "") == "True";
    if (ready) continue;
    std::string why = status.value("phase", "");
    for (const auto& cs : status.value("containerStatuses", json::array())) {
      const json state = cs.value("state", json::object());
      for (const char* s : {"waiting", "terminated"})
        if (state.contains(s) && state[s].is_object() && !state[s].value("reason", "").empty()) {
          why = state[s].value("reason", "");
          break;
        }
      if (!cs.value("ready", false) && why == "Running") why = "not ready";
    }
    const json meta = p.value("metadata", json::object());
    const json spec = p.value("spec", json::object());
    out.push_back(fmt::format("{}: {} ({})", spec.value("nodeName", "<unscheduled>"),
                              meta.value("name", "?"), why.empty() ? "not ready" : why));
  }
  return out;
}

std::string lines(const std::string& head, const std::vector<std::string>& items) {
  std::string out = head;
  for (const auto& i : items) out += "\n    " + i;
  return out;
}

Outcome apiAnswers(ClusterState& s) {
  if (!s.config)
    return Outcome::failed(s.config.error().describe(),
                           fmt::format("from {}: pass --kubeconfig with a readable kubeconfig "
                                       "(or unset KUBECONFIG to check this node only)",
                                       s.where));
  const auto& f = s.daemonSet();
  const std::string server = s.config->server;
  if (!f.error.empty())
    return Outcome::failed(fmt::format("cannot reach {} ({}): {}", server, s.where, f.error),
                           "check the kubeconfig's current context and that the API server is "
                           "reachable from here (kubectl cluster-info)");
  if (f.status == 401)
    return Outcome::failed(fmt::format("{} refused the credentials of {}", server, s.where),
                           "the credentials are wrong or expired: log in again or refresh the "
                           "kubeconfig's token");
  if (f.status == 403)
    return Outcome::failed(
        fmt::format("{} forbids it: {}", server, message(f)),
        fmt::format("sluicectl check needs get on daemonsets and deployments and list on pods "
                    "in the namespace {}",
                    s.ns));
  return Outcome::ok(server);
}

// Not found, or another error, as an outcome; nullopt when the object is there.
std::optional<Outcome> missing(const Fetched& f, const char* kind, const char* name,
                               const std::string& ns) {
  if (f.status == 200 && f.body.is_object()) return std::nullopt;
  if (f.status == 404)
    return Outcome::failed(
        fmt::format("no {} {} in the namespace {}", kind, name, ns),
        "install Sluice (kubectl apply -k deploy/, or sluicectl install | kubectl apply -f -); "
        "--sluice-namespace selects another namespace");
  return Outcome::failed(fmt::format("reading the {} {}/{} failed: {}", kind, ns, name, message(f)),
                         "retry; if it persists, check the API server");
}

Outcome agentDaemonSet(ClusterState& s) {
  if (!s.reachable()) return s.notChecked();
  const auto& f = s.daemonSet();
  if (auto m = missing(f, "DaemonSet", kAgent, s.ns)) return *m;
  const json status = f.body.value("status", json::object());
  const int64_t desired = num(status, "desiredNumberScheduled");
  const int64_t ready = num(status, "numberReady");
  const int64_t updated = num(status, "updatedNumberScheduled");
  const int64_t generation = num(f.body.value("metadata", json::object()), "generation");
  const int64_t observed = num(status, "observedGeneration", generation);
  if (desired == 0)
    return Outcome::failed("the DaemonSet is scheduled on no node",
                           fmt::format("check its nodeSelector and tolerations against the "
                                       "nodes' labels and taints ({})",
                                       s.describe("daemonset", kAgent)));
  if (ready < desired) {
    size_t pods = 0;
    auto bad = notReadyPods(s.pods(kAgent), &pods);
    if (static_cast<int64_t>(pods) < desired)
      bad.push_back(fmt::format("{} node(s) have no sluice-agent pod yet", desired - pods));
    return Outcome::failed(
        lines(fmt::format("{} of {} agents ready; not ready:", ready, desired), bad),
        fmt::format("pods on those nodes are not meshed and new ones cannot start there "
                    "(sluice-cni fails closed): kubectl -n {} describe pod POD and kubectl -n "
                    "{} logs POD say why",
                    s.ns, s.ns));
  }
  if (updated < desired || observed < generation)
    return Outcome::warn(
        fmt::format("rolling update in progress: {} of {} agents run the current template", updated,
                    desired),
        fmt::format("wait for it: kubectl -n {} rollout status daemonset/{}", s.ns, kAgent));
  return Outcome::ok(fmt::format("{} of {} nodes", ready, desired));
}

Outcome controlPlaneDeployment(ClusterState& s) {
  if (!s.reachable()) return s.notChecked();
  const auto& f = s.deployment();
  if (auto m = missing(f, "Deployment", kControlPlane, s.ns)) return *m;
  const json status = f.body.value("status", json::object());
  const int64_t replicas = num(f.body.value("spec", json::object()), "replicas", 1);
  const int64_t ready = num(status, "readyReplicas");
  const int64_t available = num(status, "availableReplicas");
  const int64_t updated = num(status, "updatedReplicas");
  const int64_t generation = num(f.body.value("metadata", json::object()), "generation");
  const int64_t observed = num(status, "observedGeneration", generation);
  if (replicas == 0)
    return Outcome::failed(
        "scaled to 0 replicas",
        fmt::format("kubectl -n {} scale deployment/{} --replicas=1", s.ns, kControlPlane));
  if (available == 0 || ready < replicas) {
    size_t pods = 0;
    auto bad = notReadyPods(s.pods(kControlPlane), &pods);
    auto detail = lines(fmt::format("{} of {} replicas ready{}", ready, replicas,
                                    bad.empty() ? "" : "; not ready:"),
                        bad);
    if (available == 0)
      return Outcome::failed(
          detail, fmt::format("agents keep serving their last view but see no cluster change "
                              "and cannot renew certificates: {} and its pods' logs say why",
                              s.describe("deployment", kControlPlane)));
    return Outcome::warn(detail, fmt::format("{} and its pods' logs say why",
                                             s.describe("deployment", kControlPlane)));
  }
  if (updated < replicas || observed < generation)
    return Outcome::warn(
        fmt::format("rollout in progress: {} of {} replicas run the current template", updated,
                    replicas),
        fmt::format("wait for it: kubectl -n {} rollout status deployment/{}", s.ns,
                    kControlPlane));
  return Outcome::ok(fmt::format("{} of {} replicas", ready, replicas));
}

}  // namespace

std::optional<ClusterAccess> findCluster(const std::string& kubeconfig) {
  if (!kubeconfig.empty())
    return ClusterAccess{kube::Config::fromKubeconfig(kubeconfig), "kubeconfig " + kubeconfig};
  if (const char* env = std::getenv("KUBECONFIG"); env && *env) {
    // A list like kubectl's; the first file names the cluster.
    std::string first = env;
    first = first.substr(0, first.find(':'));
    return ClusterAccess{kube::Config::fromKubeconfig(first),
                         "kubeconfig " + first + " ($KUBECONFIG)"};
  }
  if (const char* host = std::getenv("KUBERNETES_SERVICE_HOST"); host && *host)
    return ClusterAccess{kube::Config::inCluster(), "the pod's service account"};
  return std::nullopt;
}

std::vector<Check> clusterChecks(ClusterAccess access, const std::string& ns) {
  auto s = std::make_shared<ClusterState>(std::move(access.config), std::move(access.where), ns);
  return {
      {"kubernetes", "the Kubernetes API answers", [s] { return apiAnswers(*s); }},
      {"kubernetes", "the sluice-agent DaemonSet is ready on every node",
       [s] { return agentDaemonSet(*s); }},
      {"kubernetes", "the sluice-controlplane Deployment is available",
       [s] { return controlPlaneDeployment(*s); }},
  };
}

}  // namespace sluice::ctl::check
