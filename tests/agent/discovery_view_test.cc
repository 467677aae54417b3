#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <unistd.h>

#include <string>
#include <utility>
#include <vector>

#include "agent/discovery/client.h"
#include "agent/discovery/mesh_directory.h"
#include "common/policy/wire.h"

using namespace sluice;
using sluice::agent::discovery::View;

namespace {

api::v1::PolicySet policySet(const char* name, const char* ip_block = "10.0.0.0/8") {
  policy::AuthorizationPolicy p;
  p.ns = "prod";
  p.name = name;
  p.action = policy::Action::kDeny;
  policy::Rule r;
  policy::Source s;
  s.ip_blocks = {ip_block};
  r.from.push_back(s);
  p.rules.push_back(r);
  std::vector<policy::AuthorizationPolicy> a{p};
  return policy::toProto(a, {});
}

api::v1::WatchResponse message(bool full, const api::v1::PolicySet* policies) {
  api::v1::WatchResponse m;
  m.set_full(full);
  m.set_version(1);
  m.set_epoch(7);
  if (policies) *m.mutable_policies() = *policies;
  return m;
}

}  // namespace

TEST_SUITE("discovery view policies") {
  TEST_CASE("a message's policy set replaces the previous one, a delta without one keeps it") {
    View v;
    CHECK(v.policies->authorizationPolicies().empty());
    auto first = policySet("first");
    CHECK(v.apply(message(true, &first)));
    REQUIRE(v.policies->authorizationPolicies().size() == 1);
    CHECK(v.policies->authorizationPolicies()[0].name == "first");
    CHECK_FALSE(v.apply(message(false, nullptr)));
    CHECK(v.policies->authorizationPolicies()[0].name == "first");
    CHECK_FALSE(v.apply(message(false, &first)));  // the same set: no change
    api::v1::PolicySet none;
    CHECK(v.apply(message(false, &none)));
    CHECK(v.policies->authorizationPolicies().empty());
  }

  TEST_CASE("a set that does not compile is rejected, naming the object, and the last stays") {
    View v;
    auto good = policySet("good");
    REQUIRE(v.apply(message(true, &good)));
    auto bad = policySet("bad-cidr", "10.0.0.0/99");
    CHECK_FALSE(v.apply(message(false, &bad)));
    CHECK(v.policy_sets_rejected == 1);
    CHECK(v.policy_error.find("prod/bad-cidr") != std::string::npos);
    REQUIRE(v.policies->authorizationPolicies().size() == 1);
    CHECK(v.policies->authorizationPolicies()[0].name == "good");
    auto fixed = policySet("fixed");
    CHECK(v.apply(message(false, &fixed)));
    CHECK(v.policy_error.empty());
  }

  TEST_CASE("the persisted view keeps the last good set") {
    View v;
    auto good = policySet("kept");
    REQUIRE(v.apply(message(true, &good)));
    auto bad = policySet("bad", "nope");
    v.apply(message(false, &bad));
    char dir[] = "/tmp/sluice-view-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    std::string path = std::string(dir) + "/view.pb";
    REQUIRE(
        agent::discovery::saveView(path, agent::discovery::snapshotOf(v, 3, 7).SerializeAsString())
            .has_value());
    auto loaded = agent::discovery::loadView(path);
    ::unlink(path.c_str());
    ::rmdir(dir);
    REQUIRE(loaded.has_value());
    REQUIRE(loaded->view.policies->authorizationPolicies().size() == 1);
    CHECK(loaded->view.policies->authorizationPolicies()[0].name == "kept");
  }
}

TEST_SUITE("mesh directory") {
  TEST_CASE("headless Services are found by endpoint IP and target port, not balanced") {
    auto service = [](const char* ns, const char* name, bool headless,
                      std::vector<std::pair<std::string, uint32_t>> ports,
                      std::vector<std::pair<std::string, uint32_t>> endpoints) {
      api::v1::Service s;
      s.set_namespace_(ns);
      s.set_name(name);
      s.set_headless(headless);
      if (!headless) s.add_vips("10.96.0.10");
      for (const auto& [pname, port] : ports) {
        auto* p = s.add_ports();
        p->set_name(pname);
        p->set_port(port);
        p->set_protocol("TCP");
      }
      for (const auto& [ip, target] : endpoints) {
        auto* e = s.add_endpoints();
        e->set_ip(ip);
        for (const auto& [pname, port] : ports) (*e->mutable_ports())[pname] = target;
      }
      return s;
    };
    View v;
    v.services["shop/db"] =
        service("shop", "db", true, {{"pg", 5432}}, {{"10.244.1.7", 5433}, {"10.244.2.8", 5433}});
    v.services["shop/peers"] = service("shop", "peers", true, {}, {{"10.244.3.9", 0}});
    v.services["shop/web"] = service("shop", "web", false, {{"", 80}}, {{"10.244.1.7", 8080}});
    agent::discovery::MeshDirectory dir("cluster.local");
    dir.update(v);
    auto ip = [](const char* text) { return *IpAddr::parse(text); };
    CHECK(dir.headlessService(ip("10.244.1.7"), htons(5433)) == "shop/db");
    CHECK(dir.headlessService(ip("10.244.2.8"), htons(5433)) == "shop/db");
    // The Service port is not the endpoint's: only the target port is.
    CHECK_FALSE(dir.headlessService(ip("10.244.1.7"), htons(5432)).has_value());
    // A ClusterIP Service's endpoint is not headless; its VIP balances.
    CHECK_FALSE(dir.headlessService(ip("10.244.1.7"), htons(8080)).has_value());
    CHECK(dir.service(ip("10.96.0.10"), htons(80)) != nullptr);
    // A headless Service has no VIP to balance.
    CHECK(dir.serviceCount() == 1);
    // Without ports, any port of the endpoint.
    CHECK(dir.headlessService(ip("10.244.3.9"), htons(9000)) == "shop/peers");
    // An inbound connection's Service, headless or not, by endpoint and
    // target port; the first by name when two share them.
    CHECK(dir.endpointService(ip("10.244.1.7"), htons(8080)) == "shop/web");
    CHECK(dir.endpointService(ip("10.244.1.7"), htons(5433)) == "shop/db");
    // A Service without ports forwards nothing to guess by (ztunnel's guess).
    CHECK_FALSE(dir.endpointService(ip("10.244.3.9"), htons(1)).has_value());
    CHECK_FALSE(dir.endpointService(ip("10.244.1.7"), htons(80)).has_value());
    v.services["shop/another"] =
        service("shop", "another", false, {{"", 81}}, {{"10.244.1.7", 8080}});
    dir.update(v);
    CHECK(dir.endpointService(ip("10.244.1.7"), htons(8080)) == "shop/another");
    // Gone from the view: gone from the directory.
    v.services.erase("shop/db");
    dir.update(v);
    CHECK_FALSE(dir.headlessService(ip("10.244.1.7"), htons(5433)).has_value());
    CHECK_FALSE(dir.endpointService(ip("10.244.1.7"), htons(5433)).has_value());
  }

  TEST_CASE("a dual-stack Service balances each VIP over the endpoints of its family") {
    api::v1::Service s;
    s.set_namespace_("shop");
    s.set_name("web");
    s.add_vips("10.96.0.10");
    s.add_vips("fd00:96::a");
    auto* port = s.add_ports();
    port->set_name("http");
    port->set_port(80);
    port->set_protocol("TCP");
    for (const char* ip : {"10.244.1.7", "fd00:244:1::7", "fd00:244:2::8"}) {
      auto* e = s.add_endpoints();
      e->set_ip(ip);
      (*e->mutable_ports())["http"] = 8080;
    }
    api::v1::Workload w;
    w.set_namespace_("shop");
    w.set_name("api");
    w.set_service_account("api");
    w.set_node("node2");
    w.set_enrolled(true);
    w.add_ips("10.244.2.8");
    w.add_ips("fd00:244:2::8");
    View v;
    v.services["shop/web"] = s;
    v.workloads["uid-api"] = w;
    agent::discovery::MeshDirectory dir("cluster.local");
    dir.update(v);
    auto ip = [](const char* text) { return *IpAddr::parse(text); };
    auto endpoints = [](const std::shared_ptr<const ztunnel::ServiceTarget>& t) {
      std::vector<std::string> out;
      for (const auto& e : t->endpoints) out.push_back(e.str());
      return out;
    };
    auto v4 = dir.service(ip("10.96.0.10"), htons(80));
    auto v6 = dir.service(ip("fd00:96::a"), htons(80));
    REQUIRE(v4 != nullptr);
    REQUIRE(v6 != nullptr);
    CHECK(v6->name == "shop/web");
    CHECK(endpoints(v4) == std::vector<std::string>{"10.244.1.7:8080"});
    CHECK(endpoints(v6) ==
          std::vector<std::string>{"[fd00:244:1::7]:8080", "[fd00:244:2::8]:8080"});
    CHECK(dir.service(ip("fd00:96::a"), htons(81)) == nullptr);
    CHECK(dir.service(ip("fd00:96::b"), htons(80)) == nullptr);
    // A meshed workload by either of its addresses; an IPv4-mapped one is the IPv4 one.
    auto by6 = dir.meshed(ip("fd00:244:2::8"));
    REQUIRE(by6.has_value());
    CHECK(by6->identity == "spiffe://cluster.local/ns/shop/sa/api");
    CHECK(dir.meshed(ip("10.244.2.8")).has_value());
    CHECK(dir.meshed(ip("::ffff:10.244.2.8")).has_value());
    CHECK_FALSE(dir.meshed(ip("fd00:244:2::9")).has_value());
    // No ready endpoint of a VIP's family: still the Service (a connection
    // to it is refused as having no endpoint, not passed through).
    v.services["shop/web"].mutable_endpoints()->DeleteSubrange(0, 1);  // 10.244.1.7
    dir.update(v);
    v4 = dir.service(ip("10.96.0.10"), htons(80));
    REQUIRE(v4 != nullptr);
    CHECK(v4->name == "shop/web");
    CHECK(v4->endpoints.empty());
    CHECK(endpoints(dir.service(ip("fd00:96::a"), htons(80))).size() == 2);
  }
}
