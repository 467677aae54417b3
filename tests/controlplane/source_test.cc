#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "controlplane/local/source.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace sluice::controlplane;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("sluice-cp-test-" + std::to_string(getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path / (name + ".tmp")) << text;
    fs::rename(path / (name + ".tmp"), path / name);
  }
};

const char* kShop = R"(apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {sluice.dev/mesh: enabled}
)";

std::string pod(const std::string& name, const std::string& ip,
                const std::string& extra_labels = "") {
  return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name +
         "\n  namespace: shop\n  uid: uid-" + name + "\n  labels: {app: " + name + extra_labels +
         "}\nspec:\n  nodeName: node1\n  serviceAccountName: sa-" + name +
         "\nstatus:\n  podIP: " + ip + "\n";
}

std::map<std::string, model::Workload> view(const model::Store& s) {
  std::map<std::string, model::Workload> out;
  for (const auto& w : s.snapshot().upserts) out[w.uid()] = w;
  return out;
}

}  // namespace

TEST_SUITE("local.source") {
  TEST_CASE("multi-document files become workloads with enrollment computed") {
    auto objs = local::parseYaml(std::string(kShop) + "---\n" + pod("web", "10.244.1.5") + "---\n" +
                                 pod("db", "10.244.1.6", ", sluice.dev/mesh: disabled") +
                                 "---\nkind: ConfigMap\nmetadata: {name: x}\n");
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store;
    REQUIRE(store.setSource("all.yaml", *objs).has_value());
    auto v = view(store);
    REQUIRE(v.size() == 2);
    CHECK(v["uid-web"].enrolled());
    CHECK(v["uid-web"].service_account() == "sa-web");
    CHECK(v["uid-web"].node() == "node1");
    CHECK(v["uid-web"].ips(0) == "10.244.1.5");
    CHECK_FALSE(v["uid-db"].enrolled());  // the pod opted out
  }

  TEST_CASE("a hostNetwork pod is never enrolled, has no address of its own, stays an endpoint") {
    auto objs = local::parseYaml(std::string(kShop) + R"(---
kind: Service
apiVersion: v1
metadata: {name: exporter, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: exporter}
  ports: [{port: 9100}]
---
kind: Pod
metadata: {name: exporter-x, namespace: shop, uid: uid-x, labels: {app: exporter}}
spec: {nodeName: node1, hostNetwork: true}
status: {podIP: 10.99.0.11}
)");
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store;
    REQUIRE(store.setSource("f", *objs).has_value());
    auto v = view(store);
    REQUIRE(v.count("uid-x"));
    // In a meshed namespace, but it shares its node's network namespace:
    // nothing could tell its traffic from the node's.
    CHECK_FALSE(v["uid-x"].enrolled());
    CHECK(v["uid-x"].ips_size() == 0);  // 10.99.0.11 is the node's
    auto snap = store.snapshot();
    REQUIRE(snap.services.size() == 1);
    REQUIRE(snap.services[0].endpoints_size() == 1);
    CHECK(snap.services[0].endpoints(0).ip() == "10.99.0.11");

    auto bad = local::parseYaml(std::string(kShop) +
                                "---\nkind: Pod\nmetadata: {name: p, namespace: shop}\n"
                                "spec: {hostNetwork: \"yes\"}\n");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().describe().find("spec.hostNetwork must be true or false") !=
          std::string::npos);
  }

  TEST_CASE("a finished pod's address, free for another pod, is not its own any more") {
    std::string finished = pod("job-x", "10.244.1.7") + "  phase: Succeeded\n";
    std::string failed = pod("job-y", "10.244.1.8") + "  phase: Failed\n";
    auto objs = local::parseYaml(std::string(kShop) + "---\n" + finished + "---\n" + failed +
                                 "---\n" + pod("web", "10.244.1.7"));
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store;
    REQUIRE(store.setSource("f", *objs).has_value());
    auto v = view(store);
    CHECK(v["uid-job-x"].ips_size() == 0);
    CHECK(v["uid-job-y"].ips_size() == 0);
    REQUIRE(v["uid-web"].ips_size() == 1);  // the running pod that has the address now
    CHECK(v["uid-web"].ips(0) == "10.244.1.7");
  }

  TEST_CASE("the pod's controller from metadata.ownerReferences travels in the Workload") {
    auto owned = [](const std::string& name, const std::string& refs) {
      return "kind: Pod\nmetadata:\n  name: " + name + "\n  namespace: shop\n  uid: uid-" + name +
             "\n  ownerReferences:\n" + refs +
             "spec: {nodeName: node1}\nstatus: {podIP: 10.244.1.9}\n";
    };
    std::string text =
        std::string(kShop) + "---\n" +
        owned("web-5d8f7c9b4-x2x7q",
              "  - {apiVersion: v1, kind: Node, name: n, uid: u1}\n"
              "  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8f7c9b4, uid: u2, "
              "controller: true}\n") +
        "---\n" + owned("loose", "  - {apiVersion: v1, kind: ConfigMap, name: c, uid: u3}\n") +
        "---\n" + pod("plain", "10.244.1.10");
    auto objs = local::parseYaml(text);
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store;
    REQUIRE(store.setSource("all.yaml", *objs).has_value());
    auto v = view(store);
    CHECK(v["uid-web-5d8f7c9b4-x2x7q"].owner_kind() == "ReplicaSet");
    CHECK(v["uid-web-5d8f7c9b4-x2x7q"].owner_name() == "web-5d8f7c9b4");
    CHECK(v["uid-loose"].owner_kind().empty());  // an owner that is not the controller
    CHECK(v["uid-plain"].owner_name().empty());
  }

  TEST_CASE("a --local-config directory that does not exist is an error, not created") {
    TempDir dir;
    const std::string missing = dir.path.string() + "/no/such";
    model::Store store;
    auto src = local::DirectorySource::create(missing, store);
    REQUIRE_FALSE(src.has_value());
    CHECK(src.error().describe().find("no such directory") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.path / "no"));
  }

  TEST_CASE("invalid documents are rejected with a reason") {
    struct Case {
      std::string text;
      const char* expect;
    } cases[] = {
        {"kind: Pod\nmetadata: {name: a}\n", "namespace"},
        {"kind: Pod\nmetadata:\n  name: [1]\n  namespace: x\n", "name"},
        {"kind: [Pod]\n", "kind"},
        {"kind: Pod\n", "metadata"},
        {"kind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.999}\n",
         "not an IP"},
        {"kind: Pod\nmetadata: {name: a, namespace: x, labels: [a]}\n", "labels"},
        {"kind: Pod\nmetadata: {name: a, namespace: x}\nspec: 7\n", "spec"},
        {"kind: Pod\nmetadata: {name: a, namespace: x\n", "syntax"},
        {"- 1\n- 2\n", "mapping"},
        {",I", "syntax"},  // yaml-cpp 0.7 alone would loop until out of memory
        {"[a] ,b\n", "syntax"},
        {pod("a", "10.0.0.1") + "---\n" + pod("a", "10.0.0.2"), "duplicate uid"},
        {"kind: Pod\nmetadata: {name: a, namespace: x, ownerReferences: {kind: Job}}\n",
         "ownerReferences"},
        {"kind: Pod\nmetadata: {name: a, namespace: x, ownerReferences: [{controller: true}]}\n",
         "'kind' is required"},
        // A Service's ports, as the API server checks them.
        {"kind: Service\nmetadata: {name: s, namespace: x}\nspec:\n  ports: [{name: a, port: 80}, "
         "{name: b, port: 80, targetPort: 9000}]\n",
         "port 80/TCP twice"},
        {"kind: Service\nmetadata: {name: s, namespace: x}\nspec:\n  ports: [{name: a, port: 80}, "
         "{name: a, port: 81}]\n",
         "the name 'a' twice"},
        {"kind: Service\nmetadata: {name: s, namespace: x}\nspec:\n  ports: [{name: a, port: 0}]\n",
         "port number"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.text);
      auto r = local::parseYaml(c.text);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().describe().find(c.expect) != std::string::npos);
    }
  }

  TEST_CASE(
      "directory: a malformed file keeps its last good state - deletion removes - label flip "
      "re-enrolls") {
    TempDir dir;
    dir.write("ns.yaml", kShop);
    dir.write("web.yaml", pod("web", "10.244.1.5"));
    model::Store store;
    auto src = local::DirectorySource::create(dir.path.string(), store);
    REQUIRE(src.has_value());
    CHECK(view(store)["uid-web"].enrolled());
    uint64_t v1 = store.version();

    dir.write("web.yaml", "kind: Pod\nmetadata: {name: web\n");  // YAML typo
    (*src)->rescan();
    CHECK((*src)->rejected().count("web.yaml") == 1);
    CHECK(view(store).count("uid-web") == 1);
    CHECK(store.version() == v1);

    dir.write("ns.yaml", "kind: Namespace\nmetadata: {name: shop}\n");  // label removed
    (*src)->rescan();
    CHECK_FALSE(view(store)["uid-web"].enrolled());

    dir.write("other.yaml", pod("web", "10.244.1.9"));  // same uid as web.yaml's last good content
    (*src)->rescan();
    CHECK((*src)->rejected().count("other.yaml") == 1);

    fs::remove(dir.path / "web.yaml");
    (*src)->rescan();
    CHECK(view(store).count("uid-web") == 0);
  }

  TEST_CASE("deltas since a version - and a full snapshot when history does not reach back") {
    model::Store store;
    REQUIRE(store.setSource("ns", *local::parseYaml(kShop)).has_value());
    REQUIRE(store.setSource("a", *local::parseYaml(pod("a", "10.0.0.1"))).has_value());
    uint64_t v = store.version();
    REQUIRE(store.setSource("b", *local::parseYaml(pod("b", "10.0.0.2"))).has_value());
    store.removeSource("a");
    auto d = store.waitSince(v, std::chrono::milliseconds(10));
    REQUIRE(d.has_value());
    CHECK_FALSE(d->full);
    REQUIRE(d->upserts.size() == 1);
    CHECK(d->upserts[0].uid() == "uid-b");
    CHECK(d->removed_uids == std::vector<std::string>{"uid-a"});
    CHECK_FALSE(store.waitSince(store.version(), std::chrono::milliseconds(10)).has_value());
    auto full = store.waitSince(store.version() + 100,
                                std::chrono::milliseconds(10));  // from another incarnation
    REQUIRE(full.has_value());
    CHECK(full->full);
  }
}

TEST_SUITE("local.services") {
  TEST_CASE("endpoints from the selector, ready pods only, named target ports - slices win") {
    std::string text = std::string(kShop) + R"(---
kind: Service
apiVersion: v1
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {tier: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: admin, port: 9000, targetPort: 9001}
---
kind: Pod
metadata: {name: a, namespace: shop, uid: a, labels: {tier: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}]
status: {podIP: 10.244.1.1}
---
kind: Pod
metadata: {name: b, namespace: shop, uid: b, labels: {tier: web}}
spec:
  containers: [{name: c, ports: [{name: http, containerPort: 8081}]}]
status:
  podIP: 10.244.1.2
  conditions: [{type: Ready, status: "False"}]
---
kind: Pod
metadata: {name: c, namespace: shop, uid: c, labels: {tier: db}}
status: {podIP: 10.244.1.3}
---
kind: Pod
metadata: {name: d, namespace: shop, uid: d, labels: {tier: web}, deletionTimestamp: "2026-01-01T00:00:00Z"}
status: {podIP: 10.244.1.4}
)";
    auto objs = local::parseYaml(text);
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store;
    REQUIRE(store.setSource("f", *objs).has_value());
    auto snap = store.snapshot();
    REQUIRE(snap.services.size() == 1);
    const auto& svc = snap.services[0];
    CHECK(svc.vips(0) == "10.96.0.10");
    REQUIRE(svc.endpoints_size() == 1);  // b not ready, c not selected, d terminating
    CHECK(svc.endpoints(0).ip() == "10.244.1.1");
    CHECK(svc.endpoints(0).ports().at("http") == 8080);
    CHECK(svc.endpoints(0).ports().at("admin") == 9001);

    // An EndpointSlice for the service takes precedence over the selector.
    auto slice = local::parseYaml(R"(kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 7000}]
endpoints:
- addresses: [10.244.9.9]
- addresses: [10.244.9.8]
  conditions: {ready: false}
)");
    REQUIRE_MESSAGE(slice.has_value(), (slice ? "" : slice.error().describe()));
    uint64_t v = store.version();
    REQUIRE(store.setSource("g", *slice).has_value());
    auto delta = store.waitSince(v, std::chrono::milliseconds(100));
    REQUIRE(delta.has_value());
    REQUIRE(delta->services.size() == 1);
    REQUIRE(delta->services[0].endpoints_size() == 1);
    CHECK(delta->services[0].endpoints(0).ip() == "10.244.9.9");
    CHECK(delta->services[0].endpoints(0).ports().at("http") == 7000);
    store.removeSource("f");
    auto gone = store.waitSince(store.version() - 1, std::chrono::milliseconds(100));
    REQUIRE(gone.has_value());
    CHECK(gone->removed_services == std::vector<std::string>{"shop/web"});
  }

  TEST_CASE(
      "EndpointSlices as the API serves them: IPv6 slices, an address in two slices, and the "
      "serving terminating endpoints when none is ready") {
    auto objs = local::parseYaml(R"(kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIPs: [10.96.0.20, "fd00:96::20"]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
kind: EndpointSlice
metadata: {name: web-v4a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.1.1]
  targetRef: {kind: Pod, uid: p1}
---
kind: EndpointSlice
metadata: {name: web-v4b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.1.1]
  targetRef: {kind: Pod, uid: p1}
- addresses: [10.244.1.9]
---
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["fd00:244:1::1"]
  targetRef: {kind: Pod, uid: p1}
---
kind: Service
metadata: {name: old, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 80}]
---
kind: EndpointSlice
metadata: {name: old-1, namespace: shop, labels: {kubernetes.io/service-name: old}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- addresses: [10.244.1.7]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.244.1.8]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.244.1.6]
  conditions: {ready: false}
)");
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store(model::EndpointsMode::kSlicesOnly);
    REQUIRE(store.setSource("k", *objs).has_value());
    std::map<std::string, std::vector<std::string>> eps;
    for (const auto& svc : store.snapshot().services)
      for (const auto& e : svc.endpoints()) eps[svc.name()].push_back(e.ip());
    // One endpoint per address (10.244.1.1 is in two slices), IPv6 included.
    CHECK(eps["web"] == std::vector<std::string>{"10.244.1.1", "10.244.1.9", "fd00:244:1::1"});
    // No ready endpoint: the serving terminating one, as kube-proxy.
    CHECK(eps["old"] == std::vector<std::string>{"10.244.1.7"});
    // A ready one appears: it alone.
    auto more = local::parseYaml(R"(kind: EndpointSlice
metadata: {name: old-2, namespace: shop, labels: {kubernetes.io/service-name: old}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- addresses: [10.244.1.5]
)");
    REQUIRE(more.has_value());
    REQUIRE(store.setSource("k2", *more).has_value());
    for (const auto& svc : store.snapshot().services)
      if (svc.name() == "old") {
        REQUIRE(svc.endpoints_size() == 1);
        CHECK(svc.endpoints(0).ip() == "10.244.1.5");
      }
    // An address of the other family is refused with the field.
    auto bad = local::parseYaml(R"(kind: EndpointSlice
metadata: {name: w, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints:
- addresses: [10.244.1.1]
)");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().describe().find("is not of addressType IPv6") != std::string::npos);
  }

  TEST_CASE("a headless Service has no VIP, is marked headless and names its endpoints") {
    auto objs = local::parseYaml(std::string(kShop) + R"(---
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: 5433}]
---
kind: Service
metadata: {name: peers, namespace: shop}
spec: {clusterIP: None, selector: {app: db}}
---
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: db}, ports: [{port: 80}]}
---
)" + pod("db", "10.244.1.7"));
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store;
    REQUIRE(store.setSource("f", *objs).has_value());
    std::map<std::string, model::ServiceView> by_name;
    for (const auto& s : store.snapshot().services) by_name[s.name()] = s;
    REQUIRE(by_name.size() == 3);
    const auto& db = by_name["db"];
    CHECK(db.headless());
    CHECK(db.vips_size() == 0);
    REQUIRE(db.endpoints_size() == 1);
    CHECK(db.endpoints(0).ip() == "10.244.1.7");
    CHECK(db.endpoints(0).ports().at("pg") == 5433);
    // Without ports (DNS only), the endpoint is still named, by IP.
    CHECK(by_name["peers"].headless());
    REQUIRE(by_name["peers"].endpoints_size() == 1);
    CHECK(by_name["peers"].endpoints(0).ports().empty());
    CHECK_FALSE(by_name["web"].headless());
  }

  TEST_CASE("dual-stack pods are endpoints in the families of each Service") {
    auto objs = local::parseYaml(std::string(kShop) + R"(---
kind: Service
metadata: {name: v4, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: db}, ports: [{port: 80}]}
---
kind: Service
metadata: {name: v6, namespace: shop}
spec: {clusterIP: "fd00:96::a", selector: {app: db}, ports: [{port: 80}]}
---
kind: Service
metadata: {name: both, namespace: shop}
spec: {clusterIP: 10.96.0.11, clusterIPs: [10.96.0.11, "fd00:96::b"], selector: {app: db},
       ports: [{port: 80}]}
---
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 80}]}
---
kind: Pod
metadata: {name: db, namespace: shop, uid: db, labels: {app: db}}
status: {podIP: 10.244.1.7, podIPs: [{ip: 10.244.1.7}, {ip: "fd00:244:1::7"}]}
)");
    REQUIRE_MESSAGE(objs.has_value(), (objs ? "" : objs.error().describe()));
    model::Store store;
    REQUIRE(store.setSource("f", *objs).has_value());
    std::map<std::string, std::vector<std::string>> eps;
    for (const auto& s : store.snapshot().services)
      for (const auto& e : s.endpoints()) eps[s.name()].push_back(e.ip());
    CHECK(eps["v4"] == std::vector<std::string>{"10.244.1.7"});
    CHECK(eps["v6"] == std::vector<std::string>{"fd00:244:1::7"});
    CHECK(eps["both"] == std::vector<std::string>{"10.244.1.7", "fd00:244:1::7"});
    CHECK(eps["headless"] == std::vector<std::string>{"10.244.1.7"});  // the primary family
    // The workload itself carries both addresses, primary first.
    auto w = view(store).at("db");
    CHECK(std::vector<std::string>(w.ips().begin(), w.ips().end()) ==
          std::vector<std::string>{"10.244.1.7", "fd00:244:1::7"});
  }

  TEST_CASE("invalid services are rejected with a reason") {
    struct Case {
      std::string text;
      const char* expect;
    } cases[] = {
        {"kind: Service\nmetadata: {name: s, namespace: x}\n", "spec"},
        {"kind: Service\nmetadata: {name: s, namespace: x}\nspec: {ports: [{port: 99999}]}\n",
         "port number"},
        {"kind: Service\nmetadata: {name: s, namespace: x}\nspec: {clusterIP: nope}\n",
         "not an IP"},
        {"kind: Service\nmetadata: {name: s, namespace: x}\nspec: {ports: [{port: 1}, {port: "
         "2}]}\n",
         "needs a name"},
        {"kind: EndpointSlice\nmetadata: {name: s, namespace: x}\nendpoints: [{addresses: "
         "[300.1.1.1]}]\n",
         "not an IP"},
        {"kind: EndpointSlice\nmetadata: {name: s, namespace: x}\nendpoints: [{}]\n", "addresses"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.text);
      auto r = local::parseYaml(c.text);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().describe().find(c.expect) != std::string::npos);
    }
  }
}
