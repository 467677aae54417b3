// The Kubernetes source against a local HTTPS server speaking the API's
// list/watch protocol (tests/controlplane/fake_apiserver.py): list, watch,
// bookmarks, resume, 410 relist, 410 on a continue page, 401, a stream cut
// mid-event, a malformed event, kubeconfig parsing and TokenReview.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "controlplane/fake_apiserver.h"
#include "controlplane/kube/client.h"
#include "controlplane/kube/decode.h"
#include "controlplane/kube/source.h"
#include "controlplane/kube/token_review.h"
#include "controlplane/model/store.h"

using namespace sluice;
using namespace sluice::controlplane;
using namespace std::chrono_literals;
using json = nlohmann::json;
using namespace sluice::testing;

namespace {

json ns(const std::string& name, bool enrolled) {
  json o = {{"metadata", {{"name", name}, {"uid", "ns-" + name}}}};
  if (enrolled) o["metadata"]["labels"] = {{"sluice.dev/mesh", "enabled"}};
  return o;
}

json pod(const std::string& name, const std::string& ip, const std::string& node = "node1") {
  return {{"metadata",
           {{"name", name},
            {"namespace", "shop"},
            {"uid", "uid-" + name},
            {"labels", {{"app", "web"}, {"pod-template-hash", "5d8f7c9b4"}}},
            {"ownerReferences",
             {{{"apiVersion", "apps/v1"},
               {"kind", "ReplicaSet"},
               {"name", "web-5d8f7c9b4"},
               {"uid", "rs-uid"},
               {"controller", true},
               {"blockOwnerDeletion", true}}}}}},
          {"spec",
           {{"nodeName", node},
            {"serviceAccountName", "web"},
            {"containers",
             {{{"name", "c"}, {"ports", {{{"name", "http"}, {"containerPort", 8080}}}}}}}}},
          {"status",
           {{"podIP", ip},
            {"phase", "Running"},
            {"conditions", {{{"type", "Ready"}, {"status", "True"}}}}}}};
}

json service() {
  return {{"metadata", {{"name", "web"}, {"namespace", "shop"}}},
          {"spec",
           {{"clusterIP", "10.96.0.10"},
            {"selector", {{"app", "web"}}},
            {"ports", {{{"name", "http"}, {"port", 80}, {"targetPort", "http"}}}}}}};
}

json slice(const std::vector<std::string>& ips) {
  json eps = json::array();
  for (const auto& ip : ips)
    eps.push_back({{"addresses", {ip}},
                   {"conditions", {{"ready", true}}},
                   {"targetRef", {{"kind", "Pod"}, {"uid", "uid-" + ip}}}});
  return {{"metadata",
           {{"name", "web-abc"},
            {"namespace", "shop"},
            {"labels", {{"kubernetes.io/service-name", "web"}}}}},
          {"addressType", "IPv4"},
          {"ports", {{{"name", "http"}, {"port", 8080}, {"protocol", "TCP"}}}},
          {"endpoints", eps}};
}

std::map<std::string, model::Workload> workloads(const model::Store& store) {
  std::map<std::string, model::Workload> out;
  for (auto& w : store.snapshot().upserts) out[w.uid()] = w;
  return out;
}

std::vector<std::string> endpointsOf(const model::Store& store) {
  std::vector<std::string> out;
  for (auto& s : store.snapshot().services)
    for (auto& e : s.endpoints()) out.push_back(e.ip());
  return out;
}

kube::SourceOptions fastOptions() {
  kube::SourceOptions o;
  o.initial_backoff = 50ms;
  o.max_backoff = 400ms;
  o.flush_delay = 20ms;
  o.page_size = 2;  // exercise paging
  return o;
}

struct Watching : WatchingSource {
  explicit Watching(const FakeApiServer& api) : WatchingSource(api, fastOptions()) {}
};

// A shop namespace and five pods: three pages at fastOptions().page_size.
void seedPagedPods(const FakeApiServer& api) {
  api.call("upsert", {{"resource", "namespaces"}, {"object", ns("shop", true)}});
  for (int i = 1; i <= 5; ++i)
    api.call("upsert",
             {{"resource", "pods"},
              {"object", pod("web" + std::to_string(i), "10.244.1." + std::to_string(i))}});
}

// The Pod lists (requests without `watch`) the fake has seen, oldest first.
std::vector<std::string> podLists(const FakeApiServer& api) {
  std::vector<std::string> out;
  for (const auto& r : api.requests())
    if (r.rfind("GET /api/v1/pods?limit=", 0) == 0) out.push_back(r.substr(4));
  return out;
}

// A first page, a continue page (answered 410 Expired), then the first page
// again: the list started over instead of keeping what it had.
bool startedOver(const std::vector<std::string>& lists) {
  return lists.size() >= 3 && lists[0] == "/api/v1/pods?limit=2" &&
         lists[1] == "/api/v1/pods?limit=2&continue=2" && lists[2] == "/api/v1/pods?limit=2";
}

}  // namespace

TEST_SUITE("controlplane/kubernetes") {
  TEST_CASE("kubeconfig: current context, inline CA, token - bad files are explained") {
    FakeApiServer api;
    auto c = kube::Config::fromKubeconfig(writeKubeconfig(api, "good-token"));
    REQUIRE_MESSAGE(c.has_value(), (c ? "" : c.error().describe()));
    CHECK(c->server == api.server());
    CHECK(c->ca_pem == api.ca());
    CHECK(c->token == "good-token");
    std::ofstream(api.dir() + "/bad") << "current-context: nope\ncontexts: []\n";
    auto bad = kube::Config::fromKubeconfig(api.dir() + "/bad");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().describe().find("current-context 'nope' not found") != std::string::npos);
    CHECK_FALSE(kube::Config::fromKubeconfig(api.dir() + "/missing").has_value());
    auto dir = kube::Config::fromKubeconfig(api.dir());  // an error, not an exception
    REQUIRE_FALSE(dir.has_value());
    CHECK(dir.error().describe().find("is a directory") != std::string::npos);
  }

  TEST_CASE("list then watch: paging, events, bookmarks, resume, endpoints from slices") {
    FakeApiServer api;
    api.call("upsert", {{"resource", "namespaces"}, {"object", ns("shop", true)}});
    for (int i = 1; i <= 3; ++i)
      api.call("upsert",
               {{"resource", "pods"},
                {"object", pod("web" + std::to_string(i), "10.244.1." + std::to_string(i))}});
    api.call("upsert", {{"resource", "services"}, {"object", service()}});
    api.call("upsert",
             {{"resource", "endpointslices"}, {"object", slice({"10.244.1.1", "10.244.1.2"})}});

    model::Store store(model::EndpointsMode::kSlicesOnly);
    auto config = kube::Config::fromKubeconfig(writeKubeconfig(api, "good-token"));
    REQUIRE(config.has_value());
    kube::Client client(*config);
    auto created = kube::Source::create(client, store, fastOptions());
    REQUIRE(created.has_value());
    auto source = std::move(*created);
    REQUIRE(eventually([&] { return source->synced(); }));
    auto v = workloads(store);
    REQUIRE(v.size() == 3);
    CHECK(v["uid-web1"].enrolled());
    CHECK(v["uid-web1"].node() == "node1");
    CHECK(v["uid-web1"].owner_kind() == "ReplicaSet");  // metadata.ownerReferences
    CHECK(v["uid-web1"].owner_name() == "web-5d8f7c9b4");
    CHECK(endpointsOf(store) == std::vector<std::string>{"10.244.1.1", "10.244.1.2"});

    // Events: add, modify, delete.
    api.call("upsert", {{"resource", "pods"}, {"object", pod("web4", "10.244.1.4")}});
    CHECK(eventually([&] { return workloads(store).count("uid-web4") == 1; }));
    api.call("upsert", {{"resource", "namespaces"}, {"object", ns("shop", false)}});
    CHECK(eventually([&] { return !workloads(store)["uid-web1"].enrolled(); }));
    api.call("delete", {{"resource", "pods"}, {"namespace", "shop"}, {"name", "web2"}});
    CHECK(eventually([&] { return workloads(store).count("uid-web2") == 0; }));
    api.call("upsert", {{"resource", "endpointslices"}, {"object", slice({"10.244.1.3"})}});
    CHECK(eventually([&] { return endpointsOf(store) == std::vector<std::string>{"10.244.1.3"}; }));

    // Bookmarks advance the resume point of quiet resources.
    auto before = source->status("Service");
    CHECK(eventually([&] { return source->status("Service").bookmarks >= before.bookmarks + 2; }));
    std::string rv = source->status("Service").resource_version;
    CHECK(std::stoll(rv) > std::stoll(before.resource_version));

    // A cut stream resumes from the last version (no relist).
    api.call("clear-requests");
    uint64_t lists = source->status("Pod").lists;
    api.call("cut");
    api.call("upsert", {{"resource", "pods"}, {"object", pod("web5", "10.244.1.5")}});
    CHECK(eventually([&] { return workloads(store).count("uid-web5") == 1; }));
    CHECK(source->status("Pod").lists == lists);
    bool resumed = false;
    for (const auto& r : api.requests())
      if (r.find("/api/v1/pods?watch=1") != std::string::npos &&
          r.find("resourceVersion=") != std::string::npos &&
          r.find("resourceVersion=&") == std::string::npos)
        resumed = true;
    CHECK(resumed);
  }

  TEST_CASE("410 Gone relists - an object deleted during the gap disappears") {
    FakeApiServer api;
    api.call("upsert", {{"resource", "namespaces"}, {"object", ns("shop", true)}});
    api.call("upsert", {{"resource", "pods"}, {"object", pod("a", "10.244.1.1")}});
    api.call("upsert", {{"resource", "pods"}, {"object", pod("b", "10.244.1.2")}});
    Watching w(api);
    auto& store = w.store;
    auto& source = w.source;
    REQUIRE(eventually([&] { return source->synced() && workloads(store).size() == 2; }));
    // Drop the watch, change things, compact the history: the resume point
    // is gone, the client must relist and converge.
    api.call("token", {{"token", "other"}});  // keep the client away meanwhile
    api.call("cut");
    api.call("delete", {{"resource", "pods"}, {"namespace", "shop"}, {"name", "a"}});
    api.call("upsert", {{"resource", "pods"}, {"object", pod("c", "10.244.1.3")}});
    api.call("compact");
    // 401 while the token is wrong: the error is reported, the state kept.
    CHECK(eventually(
        [&] { return source->status("Pod").last_error.find("401") != std::string::npos; }));
    CHECK(workloads(store).count("uid-a") == 1);
    uint64_t lists = source->status("Pod").lists;
    api.call("token", {{"token", "good-token"}});
    CHECK(eventually([&] {
      auto v = workloads(store);
      return v.count("uid-a") == 0 && v.count("uid-c") == 1 && v.count("uid-b") == 1;
    }));
    CHECK(source->status("Pod").lists > lists);
    CHECK(source->status("Pod").expired >= 1);
  }

  TEST_CASE("kube list: 410 on a continue page starts the list over - the first view is whole") {
    FakeApiServer api;
    seedPagedPods(api);
    api.call("expire-continue", {{"resource", "pods"}, {"count", 1}});
    Watching w(api);
    auto& store = w.store;
    auto& source = w.source;
    REQUIRE(eventually([&] { return source->synced(); }));
    CHECK(workloads(store).size() == 5);  // the first view applied is already complete
    auto lists = podLists(api);
    CHECK_MESSAGE(startedOver(lists), fmt::format("{}", fmt::join(lists, " | ")));
    CHECK(source->status("Pod").last_error.empty());
  }

  TEST_CASE("kube relist: 410 on a continue page - no pod leaves the view - the list converges") {
    FakeApiServer api;
    seedPagedPods(api);
    Watching w(api);
    auto& store = w.store;
    auto& source = w.source;
    REQUIRE(eventually([&] { return source->synced() && workloads(store).size() == 5; }));

    // Every change the Store publishes from here on is recorded: no pod may
    // leave the view, not even for one version.
    std::mutex mu;
    std::vector<std::string> removed;
    size_t fewest = SIZE_MAX;
    std::jthread monitor([&](std::stop_token stop) {
      uint64_t v = store.version();
      while (!stop.stop_requested()) {
        auto d = store.waitSince(v, 20ms);
        if (!d) continue;
        v = d->version;
        size_t now = workloads(store).size();
        std::lock_guard lk(mu);
        removed.insert(removed.end(), d->removed_uids.begin(), d->removed_uids.end());
        fewest = std::min(fewest, now);
      }
    });

    // The watch's resourceVersion is compacted away while the client is kept
    // out, and the relist's second page is answered 410: the client starts
    // over from the first page and converges, the pod added meanwhile
    // included.
    uint64_t lists = source->status("Pod").lists;
    api.call("token", {{"token", "other"}});
    api.call("cut");
    api.call("upsert", {{"resource", "pods"}, {"object", pod("web6", "10.244.1.6")}});
    api.call("compact");
    api.call("expire-continue", {{"resource", "pods"}, {"count", 1}});
    api.call("clear-requests");
    api.call("token", {{"token", "good-token"}});
    CHECK(eventually([&] {
      auto v = workloads(store);
      return v.size() == 6 && v.count("uid-web6") == 1;
    }));
    CHECK(source->status("Pod").lists > lists);
    auto requested = podLists(api);
    CHECK_MESSAGE(startedOver(requested), fmt::format("{}", fmt::join(requested, " | ")));

    // Continue pages that keep expiring: the list gives up for a while with
    // an explanation, the last complete list stays served, and the client
    // converges once the pages come through again.
    api.call("token", {{"token", "other"}});
    api.call("cut");
    api.call("upsert", {{"resource", "pods"}, {"object", pod("web7", "10.244.1.7")}});
    api.call("compact");
    api.call("expire-continue", {{"resource", "pods"}, {"count", 1000}});
    api.call("token", {{"token", "good-token"}});
    CHECK(eventually([&] {
      return source->status("Pod").last_error.find("expired the list's continue token") !=
             std::string::npos;
    }));
    CHECK(workloads(store).size() == 6);
    api.call("expire-continue", {{"resource", "pods"}, {"count", 0}});
    CHECK(eventually(
        [&] { return workloads(store).size() == 7 && source->status("Pod").last_error.empty(); }));

    monitor.request_stop();
    monitor.join();
    std::lock_guard lk(mu);
    CHECK_MESSAGE(removed.empty(), fmt::format("removed: {}", fmt::join(removed, " ")));
    CHECK(fewest >= 5);
  }

  TEST_CASE("a malformed event is logged and skipped - the next one applies") {
    FakeApiServer api;
    api.call("upsert", {{"resource", "namespaces"}, {"object", ns("shop", true)}});
    Watching w(api);
    auto& store = w.store;
    auto& source = w.source;
    REQUIRE(eventually([&] { return source->synced(); }));
    api.call("malformed");
    CHECK(eventually([&] { return source->status("Pod").malformed >= 1; }));
    // An object that does not validate is skipped too.
    json bad = pod("bad", "not-an-ip");
    api.call("upsert", {{"resource", "pods"}, {"object", bad}});
    api.call("upsert", {{"resource", "pods"}, {"object", pod("good", "10.244.1.9")}});
    CHECK(eventually([&] { return workloads(store).count("uid-good") == 1; }));
    CHECK(workloads(store).count("uid-bad") == 0);
    CHECK(source->status("Pod").malformed >= 2);
  }

  TEST_CASE("TokenReview: the agent's service account on a node - anything else refused") {
    FakeApiServer api;
    api.call("upsert", {{"resource", "namespaces"}, {"object", ns("sluice-system", false)}});
    json agent = pod("agent-x", "192.168.0.2", "node7");
    agent["metadata"]["namespace"] = "sluice-system";
    api.call("upsert", {{"resource", "pods"}, {"object", agent}});
    api.call("review", {{"token", "agent-token"},
                        {"username", "system:serviceaccount:sluice-system:sluice-agent"},
                        {"pod_uid", "uid-agent-x"}});
    api.call("review", {{"token", "app-token"},
                        {"username", "system:serviceaccount:shop:web"},
                        {"pod_uid", "uid-web1"}});
    Watching w(api);
    auto& source = w.source;
    REQUIRE(eventually([&] { return source->synced(); }));
    kube::TokenReviewer reviewer(w.client, *source, "sluice-system:sluice-agent");
    auto node = reviewer.nodeOf("agent-token");
    REQUIRE_MESSAGE(node.has_value(), (node ? "" : node.error().describe()));
    CHECK(*node == "node7");
    auto other = reviewer.nodeOf("app-token");
    REQUIRE_FALSE(other.has_value());
    CHECK(other.error().describe().find("not the agent's service account") != std::string::npos);
    auto unknown = reviewer.nodeOf("forged");
    REQUIRE_FALSE(unknown.has_value());
    CHECK(unknown.error().describe().find("not authenticated") != std::string::npos);
  }
}

TEST_SUITE("controlplane/kubernetes/decode") {
  TEST_CASE("watch lines of the wrong shape are malformed, never a throw") {
    for (const char* line : {"", "[]", "{\"type\":1,\"object\":{}}", "{\"type\":\"ADDED\"}",
                             "{\"type\":\"ADDED\",\"object\":[]}"}) {
      CAPTURE(line);
      CHECK_FALSE(kube::decodeWatchEvent(line, "Pod").has_value());
    }
    auto err = kube::decodeWatchEvent(R"({"type":"ERROR","object":{"code":"410"}})", "Pod");
    REQUIRE(err.has_value());
    CHECK(err->error_code == 0);  // not a number: not taken for 410
    auto gone = kube::decodeWatchEvent(R"({"type":"ERROR","object":{"code":410}})", "Pod");
    REQUIRE(gone.has_value());
    CHECK(gone->error_code == 410);
  }
  TEST_CASE("a list page: items by key, invalid ones skipped with a reason, continue token") {
    auto page = kube::decodeListPage(
        R"({"metadata":{"resourceVersion":"7","continue":"c1"},"items":[
          {"metadata":{"name":"shop"}},{"metadata":{"name":[1]}},3]})",
        "Namespace");
    REQUIRE(page.has_value());
    CHECK(page->objects.size() == 1);
    CHECK(page->objects.count("Namespace shop") == 1);
    CHECK(page->skipped.size() == 1);
    CHECK(page->resource_version == "7");
    CHECK(page->continue_token == "c1");
    CHECK_FALSE(kube::decodeListPage(R"({"items":{}})", "Pod").has_value());
  }
}
