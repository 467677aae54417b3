// The admin API's /policies and /authz documents (sluicectl policies, authz
// check): meshed and unmeshed pods, port-level mTLS, a meshed pod's address.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "agent/wiring/policy_json.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using namespace sluice;
using namespace sluice::agent;
using nlohmann::json;

namespace {

authz::LocalWorkload workload(const char* name, const char* ip, const char* app) {
  authz::LocalWorkload w;
  w.uid = std::string("uid-") + name;
  w.ns = "prod";
  w.name = name;
  w.identity = std::string("spiffe://cluster.local/ns/prod/sa/") + name;
  w.labels = {{"app", app}};
  w.ip4 = *parseIp4(ip);
  return w;
}

// prod/NAME: DENY from `source`, in a compiled set.
std::shared_ptr<const policy::PolicySet> denyFrom(const char* name, const policy::Source& source) {
  policy::AuthorizationPolicy deny;
  deny.ns = "prod";
  deny.name = name;
  deny.action = policy::Action::kDeny;
  policy::Rule rule;
  rule.from.push_back(source);
  deny.rules.push_back(rule);
  auto set = policy::PolicySet::build({deny}, {});
  REQUIRE(set.has_value());
  return *set;
}

// prod/db-0 (meshed) and prod/legacy-0 (not): a namespace ALLOW from prod/sa/web,
// the namespace STRICT, and a workload policy that opens db's 6000 to plaintext.
struct Fixture {
  authz::PolicyAuthorizer authorizer{{}};
  wiring::MeshedPods meshed = {"prod/db-0"};
  Fixture() {
    policy::AuthorizationPolicy allow;
    allow.ns = "prod";
    allow.name = "allow-web";
    allow.action = policy::Action::kAllow;
    policy::Rule rule;
    policy::Source source;
    source.principals = {"cluster.local/ns/prod/sa/web"};
    rule.from.push_back(source);
    allow.rules.push_back(rule);
    policy::PeerAuthentication strict;
    strict.ns = "prod";
    strict.name = "strict";
    strict.mode = policy::MtlsMode::kStrict;
    policy::PeerAuthentication open;
    open.ns = "prod";
    open.name = "open-6000";
    open.selector = {{"app", "db"}};
    open.port_level = {{6000, policy::MtlsMode::kPermissive}};
    auto set = policy::PolicySet::build({allow}, {strict, open});
    REQUIRE(set.has_value());
    authorizer.update(
        *set, {workload("db-0", "10.244.1.5", "db"), workload("legacy-0", "10.244.1.6", "legacy")});
  }
  json check(const std::string& from, const std::string& to,
             const wiring::SourceLookup& sources = {}) {
    auto [status, j] = wiring::authzCheckJson(authorizer, meshed, sources, "cluster.local",
                                              {{"from", from}, {"to", to}});
    REQUIRE(status == 200);
    return j;
  }
};

}  // namespace

TEST_SUITE("policy json") {
  TEST_CASE("/policies: meshed and unmeshed workloads apart - port-level modes where they decide") {
    Fixture f;
    json j = wiring::policiesJson(f.authorizer, f.meshed, "");
    REQUIRE(j["authorization_policies"].size() == 1);
    CHECK(j["authorization_policies"][0]["workloads"] == json{"prod/db-0"});
    CHECK(j["authorization_policies"][0]["unmeshed_workloads"] == json{"prod/legacy-0"});
    std::map<std::string, json> pas;
    for (const auto& p : j["peer_authentications"]) pas[p["name"]] = p;
    CHECK(pas["strict"]["workloads"] == json{"prod/db-0"});
    CHECK(pas["strict"]["unmeshed_workloads"] == json{"prod/legacy-0"});
    // It decides db's port 6000 only, and is listed with db for it.
    CHECK(pas["open-6000"]["workloads"] == json{"prod/db-0"});
  }

  TEST_CASE("/authz: the decision, the port's mTLS mode, and what an unmeshed pod is") {
    Fixture f;
    json j = f.check("prod/web", "prod/db-0:8080");
    CHECK(j["decision"] == "ALLOW");
    CHECK(j["policy"] == "prod/allow-web");
    CHECK(j["meshed"] == true);
    CHECK(j["if_meshed"].is_null());
    CHECK(j["mtls"] == json{{"mode", "STRICT"}, {"policy", "prod/strict"}});

    j = f.check("10.244.2.7", "prod/db-0:8080");  // plaintext under STRICT
    CHECK(j["decision"] == "DENY");
    CHECK(j["reason"] == "STRICT mTLS");
    j = f.check("10.244.2.7", "prod/db-0:6000");  // the port left PERMISSIVE
    CHECK(j["mtls"] == json{{"mode", "PERMISSIVE"}, {"policy", "prod/open-6000"}});
    CHECK(j["reason"] == "no ALLOW matched");

    // A meshed pod's address: judged with its identity, over mutual TLS.
    wiring::SourceLookup sources;
    sources.identity_of = [](const IpAddr& ip) -> std::optional<std::string> {
      if (ip.str() == "10.244.2.7") return "spiffe://cluster.local/ns/prod/sa/web";
      return std::nullopt;
    };
    j = f.check("10.244.2.7", "prod/db-0:8080", sources);
    CHECK(j["decision"] == "ALLOW");
    CHECK(j["source_principal"] == "spiffe://cluster.local/ns/prod/sa/web");
    CHECK(j["source_ip"] == "10.244.2.7");

    // Not meshed: nothing is enforced, and what the policies say is apart.
    j = f.check("prod/evil", "prod/legacy-0:8080");
    CHECK(j["meshed"] == false);
    CHECK(j["decision"] == "ALLOW");
    CHECK(j["reason"] == "not meshed");
    CHECK(j["if_meshed"]["decision"] == "DENY");
    CHECK(j["explanation"].get<std::string>().find("is not meshed") != std::string::npos);
  }

  TEST_CASE("/authz --from NS/SA: judged from each of its pods' addresses") {
    // DENY from outside 10.244.2.0/24, and prod/sa/web has a pod on each side.
    policy::Source source;
    source.not_ip_blocks = {"10.244.2.0/24"};
    auto set = denyFrom("deny-outside", source);
    authz::PolicyAuthorizer authorizer{{}};
    authorizer.update(set, {workload("db-0", "10.244.1.5", "db")});
    wiring::SourceLookup sources;
    std::vector<std::pair<IpAddr, std::string>> web = {
        {*IpAddr::parse("10.244.2.3"), "prod/web-2"}, {*IpAddr::parse("10.244.1.9"), "prod/web-1"}};
    sources.pods_of = [&](const std::string& id) {
      CHECK(id == "spiffe://cluster.local/ns/prod/sa/web");
      return web;
    };
    auto check = [&](const char* from) {
      auto [status, j] = wiring::authzCheckJson(authorizer, {"prod/db-0"}, sources, "cluster.local",
                                                {{"from", from}, {"to", "prod/db-0:8080"}});
      REQUIRE(status == 200);
      return j;
    };
    json j = check("prod/web");
    CHECK(j["decision"] == "DEPENDS");
    CHECK(j["reason"] == "source address");
    CHECK(j["explanation"].get<std::string>().find(
              "DENY from 10.244.1.9 (prod/web-1), ALLOW from 10.244.2.3 (prod/web-2)") !=
          std::string::npos);
    REQUIRE(j["by_source"].size() == 2);
    CHECK(j["by_source"][0]["decision"] == "DENY");
    CHECK(j["by_source"][0]["policy"] == "prod/deny-outside");
    CHECK(j["by_source"][0]["destination"] == "10.244.1.5:8080");
    CHECK(j["by_source"][1]["decision"] == "ALLOW");
    // Dual stack: a row of the pod's IPv6 address is judged against the
    // destination's IPv6 address, and names it.
    auto db = workload("db-0", "10.244.1.5", "db");
    db.ip6 = *IpAddr::parse("fd00::1:5");
    authorizer.update(set, {db});
    web.emplace_back(*IpAddr::parse("fd00::2:3"), "prod/web-2");
    j = check("prod/web");
    REQUIRE(j["by_source"].size() == 3);
    CHECK(j["destination"] == "10.244.1.5:8080");
    CHECK(j["by_source"][1]["source_ip"] == "10.244.2.3");
    CHECK(j["by_source"][1]["destination"] == "10.244.1.5:8080");
    CHECK(j["by_source"][2]["source_ip"] == "fd00::2:3");
    CHECK(j["by_source"][2]["destination"] == "[fd00::1:5]:8080");
    CHECK(j["by_source"][2]["decision"] == "DENY");  // outside 10.244.2.0/24
    web.pop_back();
    // The same answer from every pod: that answer.
    web.pop_back();
    j = check("prod/web");
    CHECK(j["decision"] == "ALLOW");
    CHECK(j["by_source"].size() == 1);
    // No pod of it known: judged from no address (notIpBlocks then matches).
    web.clear();
    j = check("prod/web");
    CHECK(j["decision"] == "DENY");
    CHECK(j["by_source"].is_null());
    CHECK(j["note"].get<std::string>().find("no meshed pod of prod/web") != std::string::npos);
  }

  TEST_CASE("/authz --from NS/SA: its pods that are not meshed are judged as plaintext") {
    // DENY from namespace legacy: only an mTLS peer has a namespace, so the
    // unmeshed pods of legacy/default get through.
    policy::Source source;
    source.namespaces = {"legacy"};
    authz::PolicyAuthorizer authorizer{{}};
    authorizer.update(denyFrom("deny-legacy", source), {workload("db-0", "10.244.1.5", "db")});
    std::vector<std::pair<IpAddr, std::string>> meshed,
        plain = {{*IpAddr::parse("10.244.2.9"), "legacy/plain-1"}};
    wiring::SourceLookup sources;
    sources.pods_of = [&](const std::string&) { return meshed; };
    sources.unmeshed_of = [&](const std::string& ns, const std::string& sa) {
      CHECK(ns == "legacy");
      CHECK(sa == "default");
      return plain;
    };
    auto check = [&] {
      auto [status, j] =
          wiring::authzCheckJson(authorizer, {"prod/db-0"}, sources, "cluster.local",
                                 {{"from", "legacy/default"}, {"to", "prod/db-0:8080"}});
      REQUIRE(status == 200);
      return j;
    };
    json j = check();
    CHECK(j["decision"] == "ALLOW");
    REQUIRE(j["by_source"].size() == 1);
    CHECK(j["by_source"][0]["meshed"] == false);
    CHECK(j["note"].get<std::string>().find("no pod of legacy/default is meshed") !=
          std::string::npos);
    // One pod of it meshed as well: that one is denied, so it depends.
    meshed.emplace_back(*IpAddr::parse("10.244.2.3"), "legacy/mesh-1");
    j = check();
    CHECK(j["decision"] == "DEPENDS");
    REQUIRE(j["by_source"].size() == 2);
    CHECK(j["by_source"][0]["pod"] == "legacy/mesh-1");
    CHECK(j["by_source"][0]["decision"] == "DENY");
    CHECK(j["by_source"][1]["decision"] == "ALLOW");
    CHECK(j["note"].is_null());
  }

  TEST_CASE("/authz: malformed parameters are a 400 with the reason") {
    Fixture f;
    auto [status, j] = wiring::authzCheckJson(f.authorizer, f.meshed, {}, "cluster.local",
                                              {{"from", "a/b/c"}, {"to", "prod/db-0:80"}});
    CHECK(status == 400);
    CHECK(j["error"].get<std::string>().find("neither") != std::string::npos);
    std::tie(status, j) = wiring::authzCheckJson(f.authorizer, f.meshed, {}, "cluster.local",
                                                 {{"from", "prod/web"}, {"to", "prod/nosuch:80"}});
    CHECK(status == 400);
    CHECK(j["error"].get<std::string>().find("not a workload of this node") != std::string::npos);
  }
}
