#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <yaml-cpp/yaml.h>

#include <string>

#include "common/policy/parse.h"
#include "common/policy/wire.h"

using namespace sluice;
using namespace sluice::policy;

namespace {

const char* kPolicies = R"(
apiVersion: security.sluice.dev/v1
kind: AuthorizationPolicy
metadata: {name: api-allow, namespace: prod, creationTimestamp: "2026-01-02T03:04:05Z"}
spec:
  selector: {matchLabels: {app: api, tier: back}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/front/sa/web"], notNamespaces: [evil],
               ipBlocks: [10.0.0.0/8], notIpBlocks: [10.9.0.0/16]}
    - source: {namespaces: ["ops*"], requestPrincipals: ["*"]}
    to:
    - operation: {ports: ["8080"], notPorts: ["9090"], methods: [GET]}
    when:
    - {key: destination.port, values: ["8080"]}
    - {key: "request.headers[x-id]", notValues: [a]}
---
apiVersion: security.sluice.dev/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: prod}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
  portLevelMtls: {"8081": {mode: PERMISSIVE}, "7000": {mode: DISABLE}}
)";

}  // namespace

TEST_SUITE("policy wire") {
  TEST_CASE("model -> proto -> model keeps every field, and the set builds") {
    std::vector<AuthorizationPolicy> authz;
    std::vector<PeerAuthentication> peer;
    for (const auto& doc : YAML::LoadAll(kPolicies)) {
      if (isAuthorizationPolicy(doc)) {
        auto p = parseAuthorizationPolicy(doc);
        REQUIRE(p.has_value());
        authz.push_back(*p);
      } else {
        auto p = parsePeerAuthentication(doc);
        REQUIRE(p.has_value());
        peer.push_back(*p);
      }
    }
    auto wire = toProto(authz, peer);
    REQUIRE(wire.authorization_size() == 1);
    REQUIRE(wire.peer_size() == 1);
    CHECK(wire.authorization(0).action() == "ALLOW");
    CHECK(wire.peer(0).port_level_size() == 2);

    auto back = fromProto(wire.authorization(0));
    REQUIRE(back.has_value());
    const auto& a = authz[0];
    CHECK(back->ns == a.ns);
    CHECK(back->name == a.name);
    CHECK(back->created == a.created);
    CHECK(back->selector == a.selector);
    CHECK(back->warnings == a.warnings);
    REQUIRE(back->rules.size() == 1);
    CHECK(back->rules[0].from.size() == 2);
    CHECK(back->rules[0].from[0].principals == a.rules[0].from[0].principals);
    CHECK(back->rules[0].from[0].not_ip_blocks == a.rules[0].from[0].not_ip_blocks);
    CHECK(back->rules[0].from[1].l7_fields == a.rules[0].from[1].l7_fields);
    CHECK(back->rules[0].to[0].not_ports == a.rules[0].to[0].not_ports);
    CHECK(back->rules[0].l7Fields() == a.rules[0].l7Fields());
    CHECK(back->rules[0].when.size() == 2);
    // Once more to the wire: byte-identical (maps serialize in any order:
    // the selector was compared above).
    api::v1::AuthorizationPolicy again, first = wire.authorization(0);
    toProto(*back, &again);
    again.clear_selector();
    first.clear_selector();
    CHECK(again.SerializeAsString() == first.SerializeAsString());

    auto pb = fromProto(wire.peer(0));
    REQUIRE(pb.has_value());
    CHECK(pb->port_level == peer[0].port_level);
    CHECK(toString(pb->mode) == std::string("STRICT"));

    auto set = buildFromProto(wire, PolicySet::Options{});
    REQUIRE(set.has_value());
    CHECK((*set)->authorizationPolicies().size() == 1);
    CHECK((*set)->peerAuthentications().size() == 1);
  }

  TEST_CASE("an action or mode this agent does not know is refused, naming the object") {
    api::v1::PolicySet wire;
    auto* a = wire.add_authorization();
    a->set_namespace_("prod");
    a->set_name("x");
    a->set_action("CUSTOM");
    auto r = buildFromProto(wire, PolicySet::Options{});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("prod/x") != std::string::npos);
    CHECK(r.error().message.find("CUSTOM") != std::string::npos);

    api::v1::PeerAuthentication p;
    p.set_namespace_("prod");
    p.set_name("y");
    p.set_mode("MAYBE");
    auto pr = fromProto(p);
    REQUIRE_FALSE(pr.has_value());
    CHECK(pr.error().message.find("prod/y") != std::string::npos);
  }
}
