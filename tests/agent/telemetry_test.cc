#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "agent/telemetry/exposition.h"
#include "agent/telemetry/workloads.h"
#include "telemetry_scrape.h"

using namespace sluice;
using namespace sluice::agent::telemetry;
using namespace sluice::agent::telemetry::test_scrape;

// Exposition format, and workload names and labels as Istio derives them.
TEST_SUITE("telemetry") {
  TEST_CASE("exposition: escaping, HELP and TYPE lines, samples") {
    CHECK(escapeLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
    CHECK(renderLabels({}) == "");
    CHECK(renderLabels({{"a", "x"}, {"b", "say \"hi\"\n"}}) == "{a=\"x\",b=\"say \\\"hi\\\"\\n\"}");
    TextWriter w;
    w.family("x_total", MetricType::kCounter, "Help with \\ and\nnewline");
    w.sample("x_total", renderLabels({{"k", "v"}}), uint64_t{42});
    w.family("y", MetricType::kGauge, "A gauge");
    w.sample("y", "", 1.5);
    CHECK(w.take() ==
          "# HELP x_total Help with \\\\ and\\nnewline\n# TYPE x_total counter\n"
          "x_total{k=\"v\"} 42\n# HELP y A gauge\n# TYPE y gauge\ny 1.5\n");
  }

  TEST_CASE("workload names from the pod's controller as Istio derives them") {
    const PodLabels hash = {{"pod-template-hash", "7d9f8b6c5"}};
    struct Case {
      const char* pod;
      Owner owner;
      PodLabels labels;
      const char* kind;
      const char* name;
    } cases[] = {
        // A Deployment's pods are owned by its ReplicaSet "<deployment>-<hash>".
        {"web-7d9f8b6c5-x2x4z", {"ReplicaSet", "web-7d9f8b6c5"}, hash, "Deployment", "web"},
        {"a-b-c-7d9f8b6c5-q", {"ReplicaSet", "a-b-c-7d9f8b6c5"}, hash, "Deployment", "a-b-c"},
        // A bare ReplicaSet (no hash label, or a name without the hash).
        {"rs-x2x4z", {"ReplicaSet", "rs"}, {}, "ReplicaSet", "rs"},
        {"rs-x2x4z", {"ReplicaSet", "rs"}, hash, "ReplicaSet", "rs"},
        // Istio's letter: the hash without its dash still means a Deployment.
        {"rs7d9f8b6c5-q", {"ReplicaSet", "rs7d9f8b6c5"}, hash, "Deployment", "rs7d9f8b6c5"},
        {"db-12", {"StatefulSet", "db"}, {}, "StatefulSet", "db"},
        {"agent-x7k2p", {"DaemonSet", "agent"}, {}, "DaemonSet", "agent"},
        {"migrate-abcde", {"Job", "migrate"}, {}, "Job", "migrate"},
        // A CronJob's Jobs are "<cronjob>-<scheduled minute, 8 to 10 digits>".
        {"backup-28391040-zk2", {"Job", "backup-28391040"}, {}, "CronJob", "backup"},
        {"r-1-2839104012-a", {"Job", "r-1-2839104012"}, {}, "CronJob", "r-1"},
        {"j-1234567-a", {"Job", "j-1234567"}, {}, "Job", "j-1234567"},              // 7 digits
        {"j-12345678901-a", {"Job", "j-12345678901"}, {}, "Job", "j-12345678901"},  // 11
        {"j-1234x678-a", {"Job", "j-1234x678"}, {}, "Job", "j-1234x678"},
        {"dc-1-x",
         {"ReplicationController", "dc-1"},
         {{"deploymentconfig", "dc"}},
         "DeploymentConfig",
         "dc"},
        {"rc-x", {"ReplicationController", "rc"}, {}, "ReplicationController", "rc"},
        {"node-agent-x", {"Node", "n1"}, {}, "Node", "n1"},
        // No controller: the pod is its own workload, whatever its labels say.
        {"client", {}, {}, "Pod", "client"},
        {"client-7d9f8b6c5-x2x4z", {}, hash, "Pod", "client-7d9f8b6c5-x2x4z"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.pod);
      // Controllers give their pods a generateName "<controller>-".
      std::string generate_name = c.owner.name.empty() ? "" : c.owner.name + "-";
      auto w = workloadOf(c.pod, generate_name, c.owner, c.labels);
      CHECK(w.kind == std::string(c.kind));
      CHECK(w.name == std::string(c.name));
    }
  }

  TEST_CASE("only a pod with a generateName is named after its controller (Istio)") {
    const PodLabels hash = {{"pod-template-hash", "7d9f8b6c5"}};
    struct Case {
      const char* pod;
      const char* generate_name;
      Owner owner;
      PodLabels labels;
      const char* kind;
      const char* name;
    } cases[] = {
        {"web-7d9f8b6c5-x2x4z",
         "web-7d9f8b6c5-",
         {"ReplicaSet", "web-7d9f8b6c5"},
         hash,
         "Deployment",
         "web"},
        // Named by hand (no generateName): its own workload despite the owner.
        {"web-manual", "", {"ReplicaSet", "web-7d9f8b6c5"}, hash, "Pod", "web-manual"},
        {"db-0", "db-", {"StatefulSet", "db"}, {}, "StatefulSet", "db"},
        {"db-0", "", {"StatefulSet", "db"}, {}, "Pod", "db-0"},
        {"backup-28391040-zk2",
         "backup-28391040-",
         {"Job", "backup-28391040"},
         {},
         "CronJob",
         "backup"},
        {"backup-28391040-zk2", "", {"Job", "backup-28391040"}, {}, "Pod", "backup-28391040-zk2"},
        // A generateName but no controller: the pod.
        {"adhoc-k2x9q", "adhoc-", {}, hash, "Pod", "adhoc-k2x9q"},
        // The generateName is not compared with the owner (Istio does not).
        {"x-q", "other-", {"ReplicaSet", "web-7d9f8b6c5"}, hash, "Deployment", "web"},
        // An Argo Rollout's ReplicaSet: "<rollout>-<rollouts-pod-template-hash>".
        {"checkout-6f7d8-abcde",
         "checkout-6f7d8-",
         {"ReplicaSet", "checkout-6f7d8"},
         {{"rollouts-pod-template-hash", "6f7d8"}},
         "Rollout",
         "checkout"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.pod);
      CAPTURE(c.generate_name);
      auto w = workloadOf(c.pod, c.generate_name, c.owner, c.labels);
      CHECK(w.kind == std::string(c.kind));
      CHECK(w.name == std::string(c.name));
    }
  }

  TEST_CASE("canonical service and revision from Istio's label precedence") {
    CHECK(canonicalService({{"app", "a"},
                            {"app.kubernetes.io/name", "b"},
                            {"service.istio.io/canonical-name", "c"}},
                           "w") == "c");
    CHECK(canonicalService({{"app", "a"}, {"version", "v"}}, "w") == "a");
    CHECK(canonicalService({{"app", ""}}, "w") == "w");  // empty values do not count
    CHECK(canonicalRevision({{"version", "v2"}, {"app.kubernetes.io/version", "3"}}) == "3");
    CHECK(canonicalRevision(
              {{"service.istio.io/canonical-revision", "canary"}, {"version", "v2"}}) == "canary");
    auto w = describeWorkload("web-7d9f8b6c5-x2x4z", "shop", "web-7d9f8b6c5-",
                              {"ReplicaSet", "web-7d9f8b6c5"}, {{"pod-template-hash", "7d9f8b6c5"}},
                              "Kubernetes");
    CHECK(w.workload == "web");
    CHECK(w.canonical_service == "web");  // no label: the workload's name
    CHECK(w.canonical_revision == "latest");
    CHECK(canonicalService({{"app", "a"}, {"app.kubernetes.io/name", "b"}}, "w") == "b");
    CHECK(canonicalService({}, "w") == "w");
    CHECK(canonicalRevision({{"version", "v2"}}) == "v2");
    CHECK(canonicalRevision({}) == "latest");
  }
}
