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
        {pod("a", "10.0.0.1") + "---\n" + pod("a", "10.0.0.2"), "duplicate uid"},
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
