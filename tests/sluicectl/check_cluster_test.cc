// `sluicectl check --kubeconfig` against the fake API server: the agent
// DaemonSet across nodes and the control-plane Deployment, healthy and broken
// in each way the checks tell apart.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <stdlib.h>

#include "controlplane/fake_apiserver.h"
#include "tools/sluicectl/check.h"

using namespace sluice::testing;
using namespace sluice::ctl::check;

namespace {

json daemonSet(int desired, int ready, int updated, const char* ns = "sluice-system") {
  return {{"metadata", {{"name", "sluice-agent"}, {"namespace", ns}, {"generation", 2}}},
          {"status",
           {{"desiredNumberScheduled", desired},
            {"numberReady", ready},
            {"updatedNumberScheduled", updated},
            {"numberAvailable", ready},
            {"observedGeneration", 2}}}};
}

json deployment(int replicas, int ready) {
  return {
      {"metadata", {{"name", "sluice-controlplane"}, {"namespace", "sluice-system"}}},
      {"spec", {{"replicas", replicas}}},
      {"status",
       {{"readyReplicas", ready}, {"availableReplicas", ready}, {"updatedReplicas", replicas}}}};
}

// A pod of `app` on `node`; not ready with `reason` as its container's waiting reason.
json pod(const std::string& app, const std::string& name, const std::string& node,
         const std::string& reason = "") {
  json status = {
      {"phase", "Running"},
      {"conditions", {{{"type", "Ready"}, {"status", reason.empty() ? "True" : "False"}}}}};
  if (!reason.empty())
    status["containerStatuses"] = {
        {{"name", "c"}, {"ready", false}, {"state", {{"waiting", {{"reason", reason}}}}}}};
  return {{"metadata",
           {{"name", name},
            {"namespace", "sluice-system"},
            {"uid", name},
            {"labels", {{"app.kubernetes.io/name", app}}}}},
          {"spec", {{"nodeName", node}}},
          {"status", status}};
}

void put(const FakeApiServer& api, const char* plural, const json& object) {
  api.call("put-object", {{"plural", plural}, {"object", object}});
}

// title -> outcome of the cluster checks through a kubeconfig for `api`.
std::map<std::string, Outcome> run(const FakeApiServer& api,
                                   const std::string& token = "good-token",
                                   const std::string& ns = "sluice-system") {
  auto access = findCluster(writeKubeconfig(api, token));
  REQUIRE(access.has_value());
  std::map<std::string, Outcome> out;
  for (auto& r : runAll(clusterChecks(std::move(*access), ns))) out[r.title] = r.outcome;
  REQUIRE(out.size() == 3);
  return out;
}

const char* kApi = "the Kubernetes API answers";
const char* kAgents = "the sluice-agent DaemonSet is ready on every node";
const char* kControlPlane = "the sluice-controlplane Deployment is available";

std::string result(const Outcome& o) { return toString(o.status); }

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_SUITE("sluicectl check --kubeconfig") {
  TEST_CASE("a healthy cluster passes, and each broken state gets its mark and hint") {
    FakeApiServer api;
    put(api, "daemonsets", daemonSet(3, 3, 3));
    put(api, "deployments", deployment(1, 1));
    auto ok = run(api);
    CHECK(result(ok[kApi]) == "ok");
    CHECK(ok[kApi].detail == api.server());
    CHECK(result(ok[kAgents]) == "ok");
    CHECK(ok[kAgents].detail == "3 of 3 nodes");
    CHECK(result(ok[kControlPlane]) == "ok");

    // An agent crash-looping on node2, node3 without a pod yet.
    put(api, "daemonsets", daemonSet(3, 1, 3));
    api.call("upsert", {{"resource", "pods"}, {"object", pod("sluice-agent", "agent-a", "node1")}});
    api.call("upsert", {{"resource", "pods"},
                        {"object", pod("sluice-agent", "agent-b", "node2", "CrashLoopBackOff")}});
    api.call("upsert", {{"resource", "pods"},
                        {"object", pod("sluice-controlplane", "cp-a", "node1", "Evicted")}});
    auto down = run(api);
    CHECK(result(down[kAgents]) == "error");
    CHECK(has(down[kAgents].detail, "1 of 3 agents ready"));
    CHECK(has(down[kAgents].detail, "node2: agent-b (CrashLoopBackOff)"));
    CHECK_FALSE(has(down[kAgents].detail, "agent-a"));
    CHECK_FALSE(has(down[kAgents].detail, "cp-a"));  // another app's pod
    CHECK(has(down[kAgents].detail, "1 node(s) have no sluice-agent pod yet"));
    CHECK(has(down[kAgents].hint, "kubectl -n sluice-system describe pod"));
    // The namespaced list was asked with the agent's label selector.
    bool asked = false;
    for (const auto& r : api.requests())
      asked |= has(r, "/api/v1/namespaces/sluice-system/pods?labelSelector=app.kubernetes.io");
    CHECK(asked);

    // A rolling update half done: ready everywhere, not yet updated.
    put(api, "daemonsets", daemonSet(3, 3, 1));
    auto rolling = run(api);
    CHECK(result(rolling[kAgents]) == "warning");
    CHECK(has(rolling[kAgents].detail, "1 of 3 agents run the current template"));
    CHECK(has(rolling[kAgents].hint, "rollout status daemonset/sluice-agent"));

    // The control plane has no replica available.
    put(api, "deployments", deployment(1, 0));
    auto no_cp = run(api);
    CHECK(result(no_cp[kControlPlane]) == "error");
    CHECK(has(no_cp[kControlPlane].detail, "0 of 1 replicas ready"));
    CHECK(has(no_cp[kControlPlane].detail, "node1: cp-a (Evicted)"));
    CHECK(has(no_cp[kControlPlane].hint, "cannot renew certificates"));
    // One of two replicas: a warning.
    put(api, "deployments", deployment(2, 1));
    CHECK(result(run(api)[kControlPlane]) == "warning");
  }

  TEST_CASE("not installed, wrong credentials, no API server, no kubeconfig") {
    FakeApiServer api;
    auto absent = run(api, "good-token", "elsewhere");
    CHECK(result(absent[kApi]) == "ok");
    CHECK(result(absent[kAgents]) == "error");
    CHECK(absent[kAgents].detail == "no DaemonSet sluice-agent in the namespace elsewhere");
    CHECK(has(absent[kAgents].hint, "sluicectl install"));
    CHECK(absent[kControlPlane].detail ==
          "no Deployment sluice-controlplane in the namespace elsewhere");

    auto refused = run(api, "stale-token");
    CHECK(result(refused[kApi]) == "error");
    CHECK(has(refused[kApi].detail, "refused the credentials"));
    CHECK(has(refused[kApi].hint, "log in again"));
    CHECK(result(refused[kAgents]) == "warning");  // not checked
    CHECK(has(refused[kAgents].detail, "not checked"));

    const std::string dead = api.dir() + "/dead";
    std::ofstream(dead) << "current-context: t\nclusters:\n- name: c\n  cluster: {server: "
                           "'https://127.0.0.1:1'}\nusers:\n- name: u\n  user: {token: x}\n"
                           "contexts:\n- name: t\n  context: {cluster: c, user: u}\n";
    auto unreachable = findCluster(dead);
    REQUIRE(unreachable.has_value());
    auto none = runAll(clusterChecks(std::move(*unreachable), "sluice-system"));
    CHECK(result(none[0].outcome) == "error");
    CHECK(has(none[0].outcome.detail, "cannot reach https://127.0.0.1:1 (kubeconfig " + dead));
    CHECK(has(none[0].outcome.hint, "kubectl cluster-info"));

    auto missing = findCluster("/nonexistent/kubeconfig");
    REQUIRE(missing.has_value());
    auto results = runAll(clusterChecks(std::move(*missing), "sluice-system"));
    CHECK(result(results[0].outcome) == "error");
    CHECK(has(results[0].outcome.detail, "kubeconfig /nonexistent/kubeconfig"));
    CHECK(has(results[0].outcome.hint, "--kubeconfig"));

    // Where the configuration comes from without the flag.
    const std::string path = writeKubeconfig(api, "good-token");
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBECONFIG");
    CHECK_FALSE(findCluster("").has_value());  // this node only
    setenv("KUBECONFIG", (path + ":/some/other").c_str(), 1);
    auto from_env = findCluster("");
    REQUIRE(from_env.has_value());
    REQUIRE(from_env->config.has_value());
    CHECK(from_env->config->server == api.server());
    CHECK(has(from_env->where, "$KUBECONFIG"));
    unsetenv("KUBECONFIG");
    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    auto in_cluster = findCluster("");
    REQUIRE(in_cluster.has_value());
    CHECK(in_cluster->where == "the pod's service account");
    unsetenv("KUBERNETES_SERVICE_HOST");
  }
}
