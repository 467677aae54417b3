// The Kubernetes source against a faulty API server (fake_apiserver.py's
// /_control/fail, /slow, /hang): 429 and 500 bursts with Retry-After, a
// server that answers slowly, one that stops answering (requests and open
// watches). The view stays complete meanwhile and converges afterwards.
// (410 on a continue page and a watch cut mid-event: kube_source_test.cc.)
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "controlplane/fake_apiserver.h"

using namespace sluice;
using namespace sluice::testing;

namespace {

json minimalPod(const std::string& name, const std::string& ip) {
  return {{"metadata", {{"name", name}, {"namespace", "shop"}, {"uid", "uid-" + name}}},
          {"spec", {{"nodeName", "node1"}, {"serviceAccountName", "web"}}},
          {"status", {{"phase", "Running"}, {"podIP", ip}, {"podIPs", {{{"ip", ip}}}}}}};
}

size_t podCount(const model::Store& store) { return store.snapshot().upserts.size(); }

bool hasPod(const model::Store& store, const std::string& uid) {
  auto v = store.snapshot().upserts;
  return std::any_of(v.begin(), v.end(), [&](const auto& w) { return w.uid() == uid; });
}

size_t podLists(const FakeApiServer& api) {
  auto r = api.requests();
  return static_cast<size_t>(std::count_if(r.begin(), r.end(), [](const std::string& s) {
    return s.rfind("GET /api/v1/pods?limit=", 0) == 0;
  }));
}

kube::SourceOptions faultOptions() {
  kube::SourceOptions o;
  o.initial_backoff = 20ms;
  o.max_backoff = 200ms;
  o.flush_delay = 20ms;
  o.watch_timeout_seconds = 1;
  o.watch_grace = 1000ms;
  o.request_timeout = 1000ms;
  return o;
}

void seed(const FakeApiServer& api, int pods) {
  json shop = {
      {"metadata",
       {{"name", "shop"}, {"uid", "ns-shop"}, {"labels", {{"sluice.dev/mesh", "enabled"}}}}}};
  api.call("upsert", {{"resource", "namespaces"}, {"object", shop}});
  for (int i = 1; i <= pods; ++i) {
    auto p = minimalPod("p" + std::to_string(i), "10.244.1." + std::to_string(i));
    api.call("upsert", {{"resource", "pods"}, {"object", p}});
  }
}

}  // namespace

TEST_SUITE("kube faults") {
  TEST_CASE("kube faults: a 429 burst with Retry-After is waited out - then the view is whole") {
    FakeApiServer api;
    seed(api, 3);
    api.call("fail", {{"resource", "pods"}, {"status", 429}, {"count", 3}, {"retry_after", 1}});
    auto started = std::chrono::steady_clock::now();
    WatchingSource w(api, faultOptions());
    REQUIRE(eventually([&] { return w.source->synced(); }, 15s));
    auto took = std::chrono::steady_clock::now() - started;
    // Three answers of "come back in 1 s": without Retry-After the 20 ms
    // backoff would have listed again within a fraction of a second.
    CHECK(took >= 2900ms);
    CHECK(podLists(api) == 4);
    CHECK(podCount(w.store) == 3);
  }

  TEST_CASE("kube faults: 500 bursts on lists and watches - the view stays, then converges") {
    FakeApiServer api;
    seed(api, 3);
    WatchingSource w(api, faultOptions());
    REQUIRE(eventually([&] { return w.source->synced() && podCount(w.store) == 3; }));
    // Every request of every resource fails for a while; the watch is cut.
    api.call("fail", {{"status", 500}, {"count", 12}});
    api.call("cut");
    api.call("upsert", {{"resource", "pods"}, {"object", minimalPod("p4", "10.244.1.4")}});
    api.call("delete", {{"resource", "pods"}, {"namespace", "shop"}, {"name", "p1"}});
    CHECK(eventually(
        [&] { return w.source->status("Pod").last_error.find("HTTP 500") != std::string::npos; }));
    CHECK(eventually([&] { return hasPod(w.store, "uid-p4") && !hasPod(w.store, "uid-p1"); }, 20s));
    CHECK(podCount(w.store) == 3);
  }

  TEST_CASE("kube faults: a slow server is waited for within the request timeout") {
    FakeApiServer api;
    seed(api, 2);
    api.call("slow", {{"seconds", 0.5}});
    WatchingSource w(api, faultOptions());
    REQUIRE(eventually([&] { return w.source->synced(); }, 15s));
    CHECK(podCount(w.store) == 2);
    api.call("upsert", {{"resource", "pods"}, {"object", minimalPod("p3", "10.244.1.3")}});
    CHECK(eventually([&] { return hasPod(w.store, "uid-p3"); }, 15s));
    CHECK(w.source->status("Pod").last_error.empty());
  }

  TEST_CASE("kube faults: a server that stops answering is noticed - the view stays, converges") {
    FakeApiServer api;
    seed(api, 3);
    WatchingSource w(api, faultOptions());
    REQUIRE(eventually([&] { return w.source->synced() && podCount(w.store) == 3; }));
    api.call("hang", {{"on", true}});
    api.call("upsert", {{"resource", "pods"}, {"object", minimalPod("p4", "10.244.1.4")}});
    // The open watch sends nothing: it is dropped after timeoutSeconds plus
    // the grace, and the new requests time out too.
    CHECK(eventually(
        [&] { return w.source->status("Pod").last_error.find("timed out") != std::string::npos; },
        15s));
    CHECK(podCount(w.store) == 3);  // the last view is served whole meanwhile
    CHECK_FALSE(hasPod(w.store, "uid-p4"));
    // A slow server (answers after 2 s, past the 1 s request timeout) stays unusable.
    api.call("hang", {{"on", false}});
    api.call("slow", {{"seconds", 2}});
    api.call("upsert", {{"resource", "pods"}, {"object", minimalPod("p5", "10.244.1.5")}});
    CHECK(eventually(
        [&] { return w.source->status("Pod").last_error.find("timed out") != std::string::npos; },
        15s));
    api.call("slow", {{"seconds", 0}});
    CHECK(eventually([&] { return hasPod(w.store, "uid-p4") && hasPod(w.store, "uid-p5"); }, 15s));
    CHECK(podCount(w.store) == 5);
  }
}
