#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "policy_cases.h"

using namespace sluice;
using namespace sluice::policy;
using namespace sluice::policy::test_cases;

// Parsing: refused objects, warnings, apiVersions, and the set as a whole.
TEST_SUITE("policy") {
  TEST_CASE("malformed objects are refused with a message naming the object and the field") {
    struct Bad {
      std::string yaml;
      std::vector<std::string> expect;  // substrings of the error
    };
    const std::vector<Bad> cases = {
        {ap("prod", "bad", "{action: ALOW}"),
         {"AuthorizationPolicy prod/bad", "spec.action", "unknown action \"ALOW\""}},
        {ap("prod", "ext", "{action: CUSTOM, provider: {name: opa}, rules: [{}]}"),
         {"AuthorizationPolicy prod/ext", "CUSTOM", "not supported"}},
        {rule("cidr", from(R"({ipBlocks: ["10.0.0.0/33"]})")),
         {"AuthorizationPolicy prod/cidr", "spec.rules[0].from[0].source.ipBlocks[0]",
          "\"10.0.0.0/33\" is not an IP address or CIDR block"}},
        {rule("ip", from(R"({notIpBlocks: ["10.0.0.300"]})")),
         {"prod/ip", "notIpBlocks[0]", "10.0.0.300"}},
        {rule("t", from(R"({principals: "cluster.local/ns/a/sa/b"})")),
         {"prod/t", "source.principals", "must be a list"}},
        {rule("t", R"({to: [{operation: {ports: [8080]}}]})"),
         {"prod/t", "operation.ports[0]", "must be a string", "\"8080\""}},
        {rule("t", R"({to: [{operation: {ports: ["http"]}}]})"),
         {"prod/t", "operation.ports[0]", "not a port number"}},
        {rule("t", from(R"({principal: ["x"]})")),
         {"prod/t", "spec.rules[0].from[0].source", "unknown field \"principal\"",
          "did you mean \"principals\""}},
        {ap("prod", "t", "{rule: [{}]}"), {"prod/t", "spec", "did you mean \"rules\""}},
        {ap("prod", "t", "{from: [{source: {namespaces: [a]}}]}"),
         {"prod/t", "unknown field \"from\"", "spec.rules[].from"}},
        {ap("prod", "t", "{action: DENY}"), {"prod/t", "spec.rules", "DENY", "rules: [{}]"}},
        {rule("t", "{from: []}"), {"prod/t", "spec.rules[0].from", "non-empty"}},
        {rule("t", "{from: [{source: {}}]}"), {"prod/t", "from[0].source", "must not be empty"}},
        {rule("t", "{from: [{}]}"), {"prod/t", "from[0].source", "is required"}},
        {rule("t", "{to: [{operation: {}}]}"), {"prod/t", "to[0].operation", "must not be empty"}},
        {rule("t", "{when: [{key: source.port, values: [\"1\"]}]}"),
         {"prod/t", "when[0].key", "unknown attribute \"source.port\""}},
        {rule("t", "{when: [{key: source.ip}]}"), {"prod/t", "when[0]", "values or notValues"}},
        {rule("t", "{when: [{key: destination.port, values: [\"99999\"]}]}"),
         {"prod/t", "when[0].values[0]", "not a port number"}},
        {rule("t", R"({from: [{source: {principals: ["a"], serviceAccounts: ["b"]}}]})"),
         {"prod/t", "serviceAccounts with namespaces or principals"}},
        {rule("t", from(R"({principals: [""]})")), {"prod/t", "principals[0]", "empty value"}},
        {ap("prod", "t", "{targetRefs: [{kind: Gateway, name: gw}]}"),
         {"prod/t", "targetRef", "not supported"}},
        {ap("prod", "t", R"({selector: {matchLabels: {app: "web*"}}})"),
         {"prod/t", "matchLabels.app", "wildcards"}},
        {ap("prod", "t", "{selector: {app: web}}"),
         {"prod/t", "spec.selector", "unknown field \"app\""}},
        {"apiVersion: security.sluice.dev/v1\nkind: AuthorizationPolicy\nmetadata: {namespace: "
         "prod}\nspec: {}\n",
         {"AuthorizationPolicy", "metadata.name", "required"}},
        {"apiVersion: security.sluice.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: "
         "x}\nspec: {}\n",
         {"AuthorizationPolicy /x", "metadata.namespace", "required"}},
        {"apiVersion: security.sluice.dev/v2\nkind: AuthorizationPolicy\nmetadata: {name: x, "
         "namespace: prod}\n",
         {"AuthorizationPolicy prod/x", "apiVersion", "security.sluice.dev/v1"}},
        {pa("prod", "m", "{mtls: {mode: strict}}"),
         {"PeerAuthentication prod/m", "spec.mtls.mode", "unknown mode \"strict\""}},
        {pa("prod", "m", "{portLevelMtls: {8080: {mode: STRICT}}}"),
         {"PeerAuthentication prod/m", "portLevelMtls", "add a selector"}},
        {pa("prod", "m",
            "{selector: {matchLabels: {app: web}}, portLevelMtls: {http: {mode: STRICT}}}"),
         {"PeerAuthentication prod/m", "portLevelMtls.http", "port number"}},
        {pa("prod", "m", "{selector: {matchLabels: {app: web}}, portLevelMtls: {}}"),
         {"PeerAuthentication prod/m", "at least one port"}},
        {pa("prod", "m", "{mtls: STRICT}"), {"PeerAuthentication prod/m", "spec.mtls", "mapping"}},
        // Duplicate keys: YAML would silently read the first.
        {ap("prod", "d", "{action: ALLOW, action: DENY, rules: [{}]}"),
         {"AuthorizationPolicy prod/d", "spec", "field \"action\" appears twice"}},
        {rule("d", from(R"({principals: ["a"], principals: ["b"]})")),
         {"prod/d", "spec.rules[0].from[0].source", "\"principals\" appears twice"}},
        {ap("prod", "d", "{selector: {matchLabels: {app: web, app: api}}}"),
         {"prod/d", "spec.selector.matchLabels", "\"app\" appears twice"}},
        {"apiVersion: security.sluice.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, "
         "namespace: prod, name: b}\nspec: {}\n",
         {"metadata", "\"name\" appears twice"}},
        // Names the API server would refuse.
        {ap("prod", "Allow_Web", "{}"),
         {"AuthorizationPolicy prod/Allow_Web", "metadata.name", "not a valid name"}},
        {ap("prod", "web-", "{}"), {"metadata.name", "not a valid name"}},
        {ap("prod", "a..b", "{}"), {"metadata.name", "not a valid name"}},
        {ap("Prod", "web", "{}"), {"metadata.namespace", "\"Prod\" is not a valid namespace"}},
        {ap("prod.x", "web", "{}"), {"metadata.namespace", "not a valid namespace"}},
        {pa(std::string(64, 'n'), "m", "{}"), {"metadata.namespace", "at most 63"}},
    };
    for (const auto& c : cases) {
      INFO("yaml: ", c.yaml);
      auto loaded = load(c.yaml);
      REQUIRE_FALSE(loaded.has_value());
      for (const auto& e : c.expect) {
        INFO("error: ", loaded.error().message);
        CHECK(loaded.error().message.find(e) != std::string::npos);
      }
    }
  }

  TEST_CASE("valid names: subdomains for objects, labels for namespaces") {
    for (const char* name : {"a", "allow-web", "allow.web.v2", "0abc", "x-1.y-2"}) {
      INFO(name);
      CHECK(load(ap("prod-1", name, "{}")).has_value());
    }
    CHECK(load(ap(std::string(63, 'n'), std::string(253, 'a'), "{}")).has_value());
    CHECK_FALSE(load(ap("prod", std::string(254, 'a'), "{}")).has_value());
  }

  TEST_CASE("warnings on accepted objects say what Sluice enforces instead") {
    struct Warned {
      std::string yaml;
      std::vector<std::string> expect;  // substrings of the joined warnings; empty: none
    };
    const std::vector<Warned> cases = {
        {rule("p", R"({to: [{operation: {methods: [GET], ports: ["80"]}}]})"),
         {"spec.rules[0]", "methods", "ALLOW policy the rule matches nothing"}},
        {rule("d", R"({to: [{operation: {methods: [POST], ports: ["80"]}}]})", "DENY"),
         {"methods", "every connection that matches its other fields"}},
        {rule("d", R"({to: [{operation: {paths: ["/admin"]}}]})", "DENY"),
         {"paths", "every connection to the workloads in scope"}},
        {rule("p", R"({when: [{key: "request.headers[x]", values: [a]}]})"),
         {"request.headers[x]", "matches nothing"}},
        {rule("p", from("{notNamespaces: [bad]}")), {"notNamespaces", "plaintext", "STRICT"}},
        {rule("p", from(R"({ipBlocks: ["fd00::/8"]})")), {}},  // IPv6 connections are meshed
        {rule("p", from(R"({principals: ["spiffe://cluster.local/ns/a/sa/b"]})")),
         {"without spiffe://"}},
        {ap("prod", "d", "{action: DENY, rules: [{}]}",
            R"(, annotations: {"istio.io/dry-run": "true"})"),
         {"dry-run", "not enforced"}},
        {pa("prod", "m", "{mtls: {mode: DISABLE}}"), {"DISABLE", "PERMISSIVE"}},
        {rule("p", from("{namespaces: [front]}")), {}},
    };
    for (const auto& c : cases) {
      INFO("yaml: ", c.yaml);
      auto loaded = load(c.yaml);
      REQUIRE(loaded.has_value());
      std::string all;
      for (const auto& p : loaded->authz)
        for (const auto& w : p.warnings) all += w + "\n";
      for (const auto& p : loaded->peer)
        for (const auto& w : p.warnings) all += w + "\n";
      INFO("warnings: ", all);
      if (c.expect.empty()) CHECK(all.empty());
      for (const auto& e : c.expect) CHECK(all.find(e) != std::string::npos);
    }
  }

  TEST_CASE("Istio apiVersions are accepted and the model keeps what was written") {
    for (const char* version : {"security.istio.io/v1", "security.istio.io/v1beta1"}) {
      std::string yaml = std::string("apiVersion: ") + version + R"(
kind: AuthorizationPolicy
metadata:
  name: allow-curl-to-httpbin
  namespace: ambient-demo
  creationTimestamp: "2026-01-02T03:04:05Z"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/ambient-demo/sa/curl
    to:
    - operation:
        ports: ["8000"]
status: {}
)";
      auto p = parseAuthorizationPolicy(YAML::Load(yaml));
      REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
      CHECK(p->ns == "ambient-demo");
      CHECK(p->name == "allow-curl-to-httpbin");
      CHECK(p->created == "2026-01-02T03:04:05Z");
      CHECK(p->selector == LabelMap{{"app", "httpbin"}});
      REQUIRE(p->rules.size() == 1);
      CHECK(p->rules[0].from[0].principals ==
            std::vector<std::string>{"cluster.local/ns/ambient-demo/sa/curl"});
      CHECK(p->rules[0].to[0].ports == std::vector<std::string>{"8000"});
      CHECK(p->warnings.empty());
    }
  }

  TEST_CASE("the set: duplicates refused, mtlsMode, applicable, describe") {
    auto a = load(rule("p", "{}") + rule("p", "{}"));
    REQUIRE(a.has_value());
    auto dup = PolicySet::build(a->authz, {});
    REQUIRE_FALSE(dup.has_value());
    CHECK(dup.error().message.find("AuthorizationPolicy prod/p is defined twice") !=
          std::string::npos);

    // Objects off the wire skip the parser: what it refuses, build refuses.
    AuthorizationPolicy empty_value;
    empty_value.ns = "prod";
    empty_value.name = "wire";
    empty_value.rules = {Rule{{Source{}}, {}, {}}};
    empty_value.rules[0].from[0].namespaces = {""};
    auto refused = PolicySet::build({empty_value}, {});
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().message == "AuthorizationPolicy prod/wire: empty value");
    empty_value.rules[0].from[0].namespaces.clear();
    refused = PolicySet::build({empty_value}, {});
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().message == "AuthorizationPolicy prod/wire: empty source");

    auto set =
        build(pa("prod", "web",
                 "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, "
                 "portLevelMtls: {8080: {mode: PERMISSIVE}}}") +
              ap("sluice-system", "mesh", "{action: AUDIT, rules: [{}]}") + ap("prod", "b", "{}") +
              ap("prod", "a", "{selector: {matchLabels: {app: web}}}") +
              ap("prod", "api", "{selector: {matchLabels: {app: api}}}") + ap("other", "x", "{}"));
    Label labels[] = {{"app", "web"}};
    Workload w{"prod", "web-0", labels, ""};
    PolicyRef by;
    CHECK(std::string(toString(set->mtlsMode(w, 8080, &by))) == "PERMISSIVE");
    CHECK(std::string(by.name) == "web");
    CHECK(std::string(toString(set->mtlsMode(w, 9090, &by))) == "STRICT");
    std::vector<std::string> names;
    for (const auto* p : set->applicable(w)) names.push_back(p->ns + "/" + p->name);
    CHECK(names == std::vector<std::string>{"sluice-system/mesh", "prod/a", "prod/b"});

    auto e = evaluate(set, Conn{});
    CHECK(e.decision.describe() == "deny: no ALLOW matched; audit sluice-system/mesh");
    CHECK(PolicySet::empty()->evaluate(Request{}).allow);
  }
}
