// The Kubernetes source's policy resources against the fake API server:
// conversion into the Store, the Accepted condition written on each object
// (PATCH bodies asserted), a bad object rejected with its last good version
// kept, an absent CRD, and Istio's group with --watch-istio-policies.
#include <doctest/doctest.h>

#include "controlplane/fake_apiserver.h"
#include "controlplane/kube/decode.h"
#include "controlplane/kube/policy_status.h"
#include "controlplane/kube/source.h"
#include "controlplane/model/store.h"

using namespace sluice;
using namespace sluice::controlplane;
using namespace sluice::testing;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

json authz(const std::string& name, const json& ip_blocks, const std::string& api) {
  return {{"apiVersion", api},
          {"kind", "AuthorizationPolicy"},
          {"metadata", {{"name", name}, {"namespace", "shop"}}},
          {"spec",
           {{"selector", {{"matchLabels", {{"app", "web"}}}}},
            {"action", "ALLOW"},
            {"rules", {{{"from", {{{"source", {{"ipBlocks", ip_blocks}}}}}}}}}}}};
}

json peer(const std::string& name, const std::string& mode, const std::string& api) {
  return {{"apiVersion", api},
          {"kind", "PeerAuthentication"},
          {"metadata", {{"name", name}, {"namespace", "shop"}}},
          {"spec", {{"mtls", {{"mode", mode}}}}}};
}

const char* kSluice = "security.sluice.dev/v1";
const char* kIstio = "security.istio.io/v1";

struct Watching : WatchingSource {
  Watching(const FakeApiServer& api, bool istio) : WatchingSource(api, options(istio)) {}
  static kube::SourceOptions options(bool istio) {
    kube::SourceOptions o;
    o.initial_backoff = 50ms;
    o.max_backoff = 200ms;
    o.flush_delay = 20ms;
    o.watch_istio_policies = istio;
    return o;
  }
};

// The last condition written for shop/NAME of a plural, or null.
json lastCondition(const FakeApiServer& api, const std::string& plural, const std::string& name) {
  json out;
  for (const auto& p : api.patches())
    if (p["path"] ==
        "/apis/security.sluice.dev/v1/namespaces/shop/" + plural + "/" + name + "/status")
      out = p["body"]["status"]["conditions"][0];
  return out;
}

std::string firstBlock(const model::Store& store, const std::string& name) {
  const auto all = store.policies();
  for (const auto& p : all.authorization())
    if (p.name() == name && p.rules_size() && p.rules(0).from_size() &&
        p.rules(0).from(0).ip_blocks_size())
      return p.rules(0).from(0).ip_blocks(0);
  return "";
}

}  // namespace

TEST_SUITE("controlplane/kubernetes/policies") {
  TEST_CASE("policies are converted - Accepted written - a bad update keeps the last good one") {
    FakeApiServer api;
    api.call("upsert", {{"resource", "authorizationpolicies"},
                        {"object", authz("allow", json::array({"10.0.0.0/8"}), kSluice)}});
    // An HTTP field in a DENY rule: accepted with a warning.
    json warned = authz("deny-get", json::array({"10.1.0.0/16"}), kSluice);
    warned["spec"]["action"] = "DENY";
    warned["spec"]["rules"][0]["to"] = {{{"operation", {{"methods", {"GET"}}}}}};
    api.call("upsert", {{"resource", "authorizationpolicies"}, {"object", warned}});
    api.call("upsert",
             {{"resource", "peerauthentications"}, {"object", peer("strict", "STRICT", kSluice)}});
    Watching w(api, false);
    REQUIRE(eventually([&] { return w.store.policies().authorization_size() == 2; }));
    CHECK(firstBlock(w.store, "allow") == "10.0.0.0/8");
    REQUIRE(eventually([&] { return w.store.policies().peer_size() == 1; }));
    CHECK(w.store.policies().peer(0).mode() == "STRICT");

    REQUIRE(eventually(
        [&] { return !lastCondition(api, "authorizationpolicies", "allow").is_null(); }));
    json c = lastCondition(api, "authorizationpolicies", "allow");
    CHECK(c["type"] == "Accepted");
    CHECK(c["status"] == "True");
    CHECK(c["reason"] == "Accepted");
    CHECK(c["observedGeneration"] == 1);
    CHECK_FALSE(c["lastTransitionTime"].get<std::string>().empty());
    REQUIRE(eventually(
        [&] { return !lastCondition(api, "authorizationpolicies", "deny-get").is_null(); }));
    c = lastCondition(api, "authorizationpolicies", "deny-get");
    CHECK(c["status"] == "True");
    CHECK(c["reason"] == "AcceptedWithWarnings");
    CHECK(c["message"].get<std::string>().find("methods") != std::string::npos);
    REQUIRE(
        eventually([&] { return !lastCondition(api, "peerauthentications", "strict").is_null(); }));

    // A bad CIDR: rejected on the object, the last good version stays in the Store.
    api.call("upsert", {{"resource", "authorizationpolicies"},
                        {"object", authz("allow", json::array({"10.0.0.0/33"}), kSluice)}});
    REQUIRE(eventually(
        [&] { return lastCondition(api, "authorizationpolicies", "allow")["status"] == "False"; }));
    c = lastCondition(api, "authorizationpolicies", "allow");
    CHECK(c["reason"] == "Invalid");
    CHECK(c["observedGeneration"] == 2);
    std::string msg = c["message"];
    CHECK(msg.find("AuthorizationPolicy shop/allow") != std::string::npos);
    CHECK(msg.find("ipBlocks") != std::string::npos);
    CHECK(msg.find("10.0.0.0/33") != std::string::npos);
    CHECK(firstBlock(w.store, "allow") == "10.0.0.0/8");

    // A status write is itself a MODIFIED event: it must not cause another one.
    size_t writes = api.patches().size();
    api.call("upsert", {{"resource", "peerauthentications"},
                        {"object", peer("other", "PERMISSIVE", kSluice)}});
    REQUIRE(eventually([&] { return w.store.policies().peer_size() == 2; }));
    REQUIRE(eventually([&] { return api.patches().size() == writes + 1; }));
    CHECK(api.patches().size() == writes + 1);

    // A relist (410 Gone) keeps the last good version of the bad object too.
    // The watch must resume from a version the compaction removed: cut it
    // while the client is kept away (a bookmark would otherwise move it to
    // the newest version, which survives a compaction), then move on.
    api.call("token", {{"token", "other"}});
    api.call("cut");
    api.call("upsert",
             {{"resource", "namespaces"}, {"object", {{"metadata", {{"name", "later"}}}}}});
    api.call("compact");
    api.call("token", {{"token", "good-token"}});
    REQUIRE(eventually([&] { return w.source->status("AuthorizationPolicy").lists >= 2; }));
    CHECK(firstBlock(w.store, "allow") == "10.0.0.0/8");

    // Fixed: accepted again, the new version enforced; deleted: gone.
    api.call("upsert", {{"resource", "authorizationpolicies"},
                        {"object", authz("allow", json::array({"10.2.0.0/16"}), kSluice)}});
    REQUIRE(eventually([&] { return firstBlock(w.store, "allow") == "10.2.0.0/16"; }));
    REQUIRE(eventually(
        [&] { return lastCondition(api, "authorizationpolicies", "allow")["status"] == "True"; }));
    api.call("delete",
             {{"resource", "authorizationpolicies"}, {"namespace", "shop"}, {"name", "allow"}});
    REQUIRE(eventually([&] { return w.store.policies().authorization_size() == 1; }));
  }

  TEST_CASE("a policy invalid when the control plane starts, or born invalid, fails closed") {
    // An ALLOW edited into a bad CIDR before the control plane (re)started:
    // no last good version is known, so it allows nothing (not everything).
    FakeApiServer api;
    api.call("upsert", {{"resource", "authorizationpolicies"},
                        {"object", authz("allow", json::array({"10.0.0.0/33"}), kSluice)}});
    Watching w(api, false);
    REQUIRE(eventually([&] { return w.store.policies().authorization_size() == 1; }));
    auto p = w.store.policies().authorization(0);
    CHECK(p.name() == "allow");
    CHECK(p.action() == "ALLOW");
    CHECK(p.rules_size() == 0);
    CHECK(p.selector().at("app") == "web");
    // One born invalid on the watch: STRICT for its namespace.
    api.call("upsert",
             {{"resource", "peerauthentications"}, {"object", peer("strict", "STRIKT", kSluice)}});
    REQUIRE(eventually([&] { return w.store.policies().peer_size() == 1; }));
    CHECK(w.store.policies().peer(0).mode() == "STRICT");
    // Edited, still invalid, onto other workloads: the stand-in follows the
    // selector that reads now (a stand-in is no good version to keep).
    auto moved = authz("allow", json::array({"10.0.0.0/33"}), kSluice);
    moved["spec"]["selector"]["matchLabels"]["app"] = "api";
    api.call("upsert", {{"resource", "authorizationpolicies"}, {"object", moved}});
    REQUIRE(eventually(
        [&] { return w.store.policies().authorization(0).selector().at("app") == "api"; }));
    CHECK(w.store.policies().authorization(0).rules_size() == 0);
    // Fixed: the policy as written.
    api.call("upsert", {{"resource", "authorizationpolicies"},
                        {"object", authz("allow", json::array({"10.0.0.0/8"}), kSluice)}});
    REQUIRE(eventually([&] { return firstBlock(w.store, "allow") == "10.0.0.0/8"; }));
  }

  TEST_CASE("a CRD that is not installed counts as no policies - the rest of the cluster syncs") {
    FakeApiServer api;
    api.call("unserve", {{"resource", "peerauthentications"}});
    api.call("upsert",
             {{"resource", "namespaces"}, {"object", {{"metadata", {{"name", "shop"}}}}}});
    api.call("upsert", {{"resource", "authorizationpolicies"},
                        {"object", authz("allow", json::array({"10.0.0.0/8"}), kSluice)}});
    Watching w(api, false);
    REQUIRE(eventually([&] { return w.source->synced(); }));
    REQUIRE(eventually([&] { return w.store.policies().authorization_size() == 1; }));
    CHECK(w.store.policies().peer_size() == 0);
    // Installed later: picked up after a backoff.
    api.call("serve", {{"resource", "peerauthentications"}});
    api.call("upsert",
             {{"resource", "peerauthentications"}, {"object", peer("strict", "STRICT", kSluice)}});
    CHECK(eventually([&] { return w.store.policies().peer_size() == 1; }));
  }

  TEST_CASE(
      "a CRD removed at runtime: its objects go, the source relists - back when reinstalled") {
    FakeApiServer api;
    api.call("upsert",
             {{"resource", "namespaces"}, {"object", {{"metadata", {{"name", "shop"}}}}}});
    api.call("upsert",
             {{"resource", "peerauthentications"}, {"object", peer("strict", "STRICT", kSluice)}});
    Watching w(api, false);
    REQUIRE(eventually([&] { return w.store.policies().peer_size() == 1; }));
    REQUIRE(eventually([&] { return w.source->status("PeerAuthentication").watches > 0; }));
    // Removed: the API server deletes the objects, ends the watch, answers 404.
    api.call("unserve", {{"resource", "peerauthentications"}});
    REQUIRE(eventually([&] { return w.store.policies().peer_size() == 0; }));
    const auto lists = w.source->status("PeerAuthentication").lists;
    api.call("clear-requests", json::object());
    std::this_thread::sleep_for(600ms);  // several backoffs (at most 200 ms here)
    // It looks for the resource with lists, not with watches that 404 forever.
    int watches = 0, gets = 0;
    for (const auto& r : api.requests())
      if (r.find("/peerauthentications") != std::string::npos) {
        gets++;
        if (r.find("watch=1") != std::string::npos) watches++;
      }
    CHECK(gets >= 2);
    CHECK(watches == 0);
    CHECK(w.source->status("PeerAuthentication").lists == lists);  // no list succeeded
    CHECK(w.source->status("PeerAuthentication").expired == 0);    // a 404 is no 410
    // Installed again with an object: read within a backoff.
    api.call("serve", {{"resource", "peerauthentications"}});
    api.call("upsert", {{"resource", "peerauthentications"},
                        {"object", peer("permissive", "PERMISSIVE", kSluice)}});
    REQUIRE(eventually([&] { return w.store.policies().peer_size() == 1; }));
    CHECK(w.store.policies().peer(0).mode() == "PERMISSIVE");
    CHECK(w.source->status("PeerAuthentication").last_error.empty());
  }

  TEST_CASE("Istio's group only with --watch-istio-policies - read, status never written") {
    FakeApiServer api;
    api.call("upsert", {{"resource", "istio-authorizationpolicies"},
                        {"object", authz("from-istio", json::array({"10.3.0.0/16"}), kIstio)}});
    api.call("upsert", {{"resource", "istio-peerauthentications"},
                        {"object", peer("mesh", "STRICT", kIstio)}});
    {
      Watching w(api, false);
      REQUIRE(eventually([&] { return w.source->synced(); }));
      CHECK(w.store.policies().authorization_size() == 0);
      for (const auto& r : api.requests()) CHECK(r.find("security.istio.io") == std::string::npos);
    }
    Watching w(api, true);
    REQUIRE(eventually([&] { return w.store.policies().authorization_size() == 1; }));
    CHECK(firstBlock(w.store, "from-istio") == "10.3.0.0/16");
    REQUIRE(eventually([&] { return w.store.policies().peer_size() == 1; }));
    CHECK(api.patches().empty());
  }

  TEST_CASE("the Accepted condition: unchanged means no write - other conditions are kept") {
    json obj = {{"metadata", {{"name", "p"}, {"namespace", "shop"}, {"generation", 3}}}};
    auto w = kube::acceptedStatus(obj, "", {});
    REQUIRE(w.has_value());
    json patch = json::parse(w->patch);
    json cond = patch["status"]["conditions"][0];
    CHECK(cond["reason"] == "Accepted");
    CHECK(cond["observedGeneration"] == 3);
    obj["status"]["conditions"] = {{{"type", "Ready"}, {"status", "True"}}, cond};
    CHECK_FALSE(kube::acceptedStatus(obj, "", {}).has_value());
    auto warned = kube::acceptedStatus(obj, "", {"one", "two"});
    REQUIRE(warned.has_value());
    patch = json::parse(warned->patch);
    REQUIRE(patch["status"]["conditions"].size() == 2);
    CHECK(patch["status"]["conditions"][0]["type"] == "Ready");
    CHECK(patch["status"]["conditions"][1]["message"] == "one; two");
    // Same status: the transition time stays.
    CHECK(patch["status"]["conditions"][1]["lastTransitionTime"] == cond["lastTransitionTime"]);
    CHECK_FALSE(kube::acceptedStatus(json{{"metadata", {{"name", "p"}}}}, "", {}).has_value());
  }
}
