#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <yaml-cpp/yaml.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/policy/parse.h"
#include "common/policy/policy_set.h"
#include "sluice/common/addr.h"
#include "sluice/common/ip6.h"

using namespace sluice;
using namespace sluice::policy;

namespace {

constexpr const char* kFront = "spiffe://cluster.local/ns/front/sa/frontend";
constexpr const char* kAdmin = "spiffe://cluster.local/ns/ops/sa/admin";
constexpr const char* kPlain = "";

// One object in flow style: kind, namespace, name, spec (and extra metadata).
std::string obj(const char* kind, const std::string& ns, const std::string& name,
                const std::string& spec, const std::string& meta = "") {
  return "---\napiVersion: security.sluice.dev/v1\nkind: " + std::string(kind) +
         "\nmetadata: {name: " + name + ", namespace: " + ns + meta + "}\nspec: " + spec + "\n";
}
std::string ap(const std::string& ns, const std::string& name, const std::string& spec,
               const std::string& meta = "") {
  return obj("AuthorizationPolicy", ns, name, spec, meta);
}
std::string pa(const std::string& ns, const std::string& name, const std::string& spec,
               const std::string& meta = "") {
  return obj("PeerAuthentication", ns, name, spec, meta);
}
// An ALLOW (or other) policy in prod with one rule.
std::string rule(const std::string& name, const std::string& rule_yaml,
                 const char* action = "ALLOW") {
  return ap("prod", name, "{action: " + std::string(action) + ", rules: [" + rule_yaml + "]}");
}
std::string from(const std::string& source) { return "{from: [{source: " + source + "}]}"; }

struct Loaded {
  std::vector<AuthorizationPolicy> authz;
  std::vector<PeerAuthentication> peer;
};

Result<Loaded> load(const std::string& yaml) {
  Loaded out;
  for (const auto& doc : YAML::LoadAll(yaml)) {
    if (!doc || doc.IsNull()) continue;
    if (isAuthorizationPolicy(doc)) {
      auto p = parseAuthorizationPolicy(doc);
      if (!p) return tl::unexpected(p.error());
      out.authz.push_back(std::move(*p));
    } else if (isPeerAuthentication(doc)) {
      auto p = parsePeerAuthentication(doc);
      if (!p) return tl::unexpected(p.error());
      out.peer.push_back(std::move(*p));
    } else {
      return fail("not a policy document");
    }
  }
  return out;
}

std::shared_ptr<const PolicySet> build(const std::string& yaml, bool node_probes = true) {
  auto loaded = load(yaml);
  REQUIRE_MESSAGE(loaded.has_value(), (loaded ? "" : loaded.error().message));
  PolicySet::Options options;
  options.allow_node_probes = node_probes;
  auto set = PolicySet::build(std::move(loaded->authz), std::move(loaded->peer), options);
  REQUIRE_MESSAGE(set.has_value(), (set ? "" : set.error().message));
  return *set;
}

uint32_t ip(const char* text) {
  if (!*text) return 0;
  auto v = parseIp4(text);
  REQUIRE(v.has_value());
  return *v;
}

// The connection of a case: defaults are frontend -> prod/web-0:8080 over mTLS.
struct Conn {
  const char* principal = kFront;
  const char* source = "10.0.1.5";
  uint16_t port = 8080;
  const char* ns = "prod";
  std::vector<std::pair<std::string, std::string>> labels = {{"app", "web"}, {"version", "v1"}};
  const char* destination = "10.0.2.7";
  const char* node = "10.0.0.1";
};

struct Evaluated {
  Decision decision;
  std::shared_ptr<const PolicySet> set;  // keeps the decision's views alive
};

Evaluated evaluate(std::shared_ptr<const PolicySet> set, const Conn& c) {
  std::vector<Label> labels;
  for (const auto& [k, v] : c.labels) labels.push_back({k, v});
  Request r;
  r.destination = {c.ns, "web-0", labels, "spiffe://cluster.local/ns/prod/sa/web"};
  r.destination_ip = ip(c.destination);
  r.destination_port = c.port;
  if (std::strchr(c.source, ':')) {  // an IPv6 source
    auto a6 = parseIp6(c.source);
    REQUIRE(a6.has_value());
    r.source_ip6.emplace();
    std::memcpy(r.source_ip6->data(), a6->s6_addr, 16);
  } else {
    r.source_ip = ip(c.source);
  }
  r.source_principal = c.principal;
  r.mutual_tls = *c.principal != 0;
  r.node_ip = ip(c.node);
  return {set->evaluate(r), set};
}

struct Case {
  std::string name;
  std::string yaml;
  Conn conn;
  bool allow;
  Reason reason;
  std::string policy = "";  // ns/name that decided
  std::vector<std::string> audits = {};
  bool node_probes = true;
};

void run(const std::vector<Case>& cases) {
  for (const auto& c : cases) {
    INFO("case: ", c.name);
    auto e = evaluate(build(c.yaml, c.node_probes), c.conn);
    const Decision& d = e.decision;
    INFO("decision: ", d.describe());
    CHECK(d.allow == c.allow);
    CHECK(std::string(toString(d.reason)) == toString(c.reason));
    std::string decided =
        d.policy.empty() ? "" : std::string(d.policy.ns) + "/" + std::string(d.policy.name);
    CHECK(decided == c.policy);
    std::vector<std::string> audits;
    for (size_t i = 0; i < d.audit_count; ++i)
      audits.push_back(std::string(d.audits[i].ns) + "/" + std::string(d.audits[i].name));
    CHECK(audits == c.audits);
  }
}

Conn plain(Conn c = {}) {
  c.principal = kPlain;
  return c;
}
Conn admin(Conn c = {}) {
  c.principal = kAdmin;
  c.source = "10.0.3.9";
  return c;
}
Conn port(uint16_t p, Conn c = {}) {
  c.port = p;
  return c;
}
Conn from_ip(const char* s, Conn c = {}) {
  c.source = s;
  return c;
}

constexpr Reason kNoPolicy = Reason::kNoPolicy;
constexpr Reason kAllowed = Reason::kAllowMatched;
constexpr Reason kDenied = Reason::kDenyMatched;
constexpr Reason kNoAllow = Reason::kNoAllowMatched;
constexpr Reason kStrict = Reason::kStrictMtls;
constexpr Reason kProbe = Reason::kNodeProbe;

}  // namespace

TEST_SUITE("policy") {
  TEST_CASE("source fields, their not-forms, and value matching") {
    const std::string front_sa = R"("cluster.local/ns/front/sa/frontend")";
    run({
        {"principals: exact match allows",
         rule("p", from("{principals: [" + front_sa + "]}")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"principals: another peer is not allowed",
         rule("p", from("{principals: [" + front_sa + "]}")), admin(), false, kNoAllow},
        {"principals: prefix x*",
         rule("p", from(R"({principals: ["cluster.local/ns/front/*"]})")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"principals: suffix *x",
         rule("p", from(R"({principals: ["*/sa/frontend"]})")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"principals: suffix *x, no match", rule("p", from(R"({principals: ["*/sa/frontend"]})")),
         admin(), false, kNoAllow},
        {"principals: * is any authenticated peer", rule("p", from(R"({principals: ["*"]})")),
         admin(), true, kAllowed, "prod/p"},
        {"principals: * never matches plaintext", rule("p", from(R"({principals: ["*"]})")),
         plain(), false, kNoAllow},
        {"principals: values OR'd",
         rule("p", from(R"({principals: ["cluster.local/ns/ops/sa/admin", )" + front_sa + "]}")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"notPrincipals: a listed peer does not match",
         rule("p", from(R"({notPrincipals: ["cluster.local/ns/ops/sa/admin"]})")), admin(), false,
         kNoAllow},
        {"notPrincipals: another peer matches",
         rule("p", from(R"({notPrincipals: ["cluster.local/ns/ops/sa/admin"]})")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"notPrincipals: plaintext matches (ISTIO-SECURITY-2021-004)",
         rule("p", from(R"({notPrincipals: ["cluster.local/ns/ops/sa/admin"]})")), plain(), true,
         kAllowed, "prod/p"},
        {"namespaces: the peer's namespace from its SPIFFE ID",
         rule("p", from("{namespaces: [front]}")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"namespaces: plaintext never matches, even from that namespace's pod IP",
         rule("p", from("{namespaces: [front]}")), plain(), false, kNoAllow},
        {"namespaces: prefix",
         rule("p", from(R"({namespaces: ["fr*"]})")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"namespaces: * needs an authenticated peer", rule("p", from(R"({namespaces: ["*"]})")),
         plain(), false, kNoAllow},
        {"notNamespaces: the listed namespace does not match",
         rule("p", from("{notNamespaces: [front]}")),
         {},
         false,
         kNoAllow},
        {"notNamespaces: plaintext matches (compared with an empty namespace)",
         rule("p", from("{notNamespaces: [front]}")), plain(), true, kAllowed, "prod/p"},
        {"serviceAccounts: ns/sa",
         rule("p", from(R"({serviceAccounts: ["front/frontend"]})")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"serviceAccounts: a bare name is in the policy's namespace",
         rule("p", from(R"({serviceAccounts: ["frontend"]})")),
         {},
         false,
         kNoAllow},
        {"notServiceAccounts", rule("p", from(R"({notServiceAccounts: ["front/frontend"]})")),
         admin(), true, kAllowed, "prod/p"},
        {"ipBlocks: CIDR", rule("p", from(R"({ipBlocks: ["10.0.1.0/24"]})")), plain(), true,
         kAllowed, "prod/p"},
        {"ipBlocks: outside the block", rule("p", from(R"({ipBlocks: ["10.0.1.0/24"]})")),
         from_ip("10.0.9.1"), false, kNoAllow},
        {"ipBlocks: a single address",
         rule("p", from(R"({ipBlocks: ["10.0.1.5"]})")),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"notIpBlocks", rule("p", from(R"({notIpBlocks: ["10.0.1.0/24"]})")), {}, false, kNoAllow},
        {"ipBlocks: IPv6 CIDR, IPv6 source", rule("p", from(R"({ipBlocks: ["fd00:244::/32"]})")),
         from_ip("fd00:244:1::5", plain()), true, kAllowed, "prod/p"},
        {"ipBlocks: IPv6 CIDR, IPv6 source outside it",
         rule("p", from(R"({ipBlocks: ["fd00:244:1::/56"]})")), from_ip("fd00:244:1:100::5"), false,
         kNoAllow},
        {"ipBlocks: an odd IPv6 prefix", rule("p", from(R"({ipBlocks: ["fd00:244:1::/57"]})")),
         from_ip("fd00:244:1:7f::5"), true, kAllowed, "prod/p"},
        {"ipBlocks: a single IPv6 address", rule("p", from(R"({ipBlocks: ["fd00::5"]})")),
         from_ip("fd00::5"), true, kAllowed, "prod/p"},
        {"ipBlocks: an IPv6 block never matches an IPv4 source",
         rule("p", from(R"({ipBlocks: ["::/0"]})")),
         {},
         false,
         kNoAllow},
        {"ipBlocks: an IPv4 block never matches an IPv6 source",
         rule("p", from(R"({ipBlocks: ["0.0.0.0/0"]})")), from_ip("fd00::5"), false, kNoAllow},
        {"ipBlocks: an IPv4-mapped source is IPv4",
         rule("p", from(R"({ipBlocks: ["10.0.1.0/24"]})")), from_ip("::ffff:10.0.1.5"), true,
         kAllowed, "prod/p"},
        {"notIpBlocks: IPv6", rule("p", from(R"({notIpBlocks: ["fd00:244::/32"]})")),
         from_ip("fd00:244:1::5"), false, kNoAllow},
        {"fields in a source are AND'd",
         rule("p", from(R"({namespaces: [front], ipBlocks: ["10.0.9.0/24"]})")),
         {},
         false,
         kNoAllow},
        {"sources are OR'd",
         rule("p",
              R"({from: [{source: {namespaces: [ops]}}, {source: {ipBlocks: ["10.0.1.0/24"]}}]})"),
         {},
         true,
         kAllowed,
         "prod/p"},
    });
  }

  TEST_CASE("operations and conditions") {
    run({
        {"ports: match",
         rule("p", R"({to: [{operation: {ports: ["8080"]}}]})"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"ports: another port", rule("p", R"({to: [{operation: {ports: ["8080"]}}]})"), port(9090),
         false, kNoAllow},
        {"notPorts: the listed port",
         rule("p", R"({to: [{operation: {notPorts: ["8080"]}}]})"),
         {},
         false,
         kNoAllow},
        {"notPorts: another port", rule("p", R"({to: [{operation: {notPorts: ["8080"]}}]})"),
         port(9090), true, kAllowed, "prod/p"},
        {"from AND to",
         rule("p",
              R"({from: [{source: {namespaces: [front]}}], to: [{operation: {ports: ["9090"]}}]})"),
         {},
         false,
         kNoAllow},
        {"when source.ip values",
         rule("p", R"({when: [{key: source.ip, values: ["10.0.1.0/24"]}]})"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"when source.ip notValues",
         rule("p", R"({when: [{key: source.ip, notValues: ["10.0.1.0/24"]}]})"),
         {},
         false,
         kNoAllow},
        {"when source.namespace",
         rule("p", R"({when: [{key: source.namespace, values: [front]}]})"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"when source.namespace: plaintext never matches",
         rule("p", R"({when: [{key: source.namespace, values: ["*"]}]})"), plain(), false,
         kNoAllow},
        {"when source.principal notValues",
         rule("p", R"({when: [{key: source.principal, notValues: ["cluster.local/ns/front/*"]}]})"),
         {},
         false,
         kNoAllow},
        {"when destination.ip",
         rule("p", R"({when: [{key: destination.ip, values: ["10.0.2.0/24"]}]})"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"when destination.ip, another address",
         rule("p", R"({when: [{key: destination.ip, values: ["10.0.3.0/24"]}]})"),
         {},
         false,
         kNoAllow},
        {"when destination.port values and notValues together",
         rule(
             "p",
             R"({when: [{key: destination.port, values: ["8080", "9090"], notValues: ["9090"]}]})"),
         port(9090), false, kNoAllow},
        {"conditions are AND'd",
         rule(
             "p",
             R"({when: [{key: destination.port, values: ["8080"]}, {key: source.namespace, values: [ops]}]})"),
         {},
         false,
         kNoAllow},
        {"rules are OR'd",
         ap("prod", "p",
            R"({rules: [{from: [{source: {namespaces: [ops]}}]}, {to: [{operation: {ports: ["8080"]}}]}]})"),
         {},
         true,
         kAllowed,
         "prod/p"},
    });
  }

  TEST_CASE("evaluation order, empty rules, AUDIT") {
    const std::string deny_front = rule("deny-front", from("{namespaces: [front]}"), "DENY");
    const std::string allow_front = rule("allow-front", from("{namespaces: [front]}"));
    run({
        {"no policy: allowed", "", {}, true, kNoPolicy},
        {"DENY wins over a matching ALLOW",
         deny_front + allow_front,
         {},
         false,
         kDenied,
         "prod/deny-front"},
        {"a DENY that does not match, no ALLOW: allowed", deny_front, admin(), true, kNoPolicy},
        {"a DENY that does not match, an ALLOW that does",
         deny_front + rule("allow-ops", from("{namespaces: [ops]}")), admin(), true, kAllowed,
         "prod/allow-ops"},
        {"ALLOW policies apply, none matches: denied", allow_front, admin(), false, kNoAllow},
        {"ALLOW without rules allows nothing",
         ap("prod", "allow-nothing", "{}"),
         {},
         false,
         kNoAllow},
        {"ALLOW with rules: [{}] allows everything, plaintext too",
         ap("prod", "allow-all", "{rules: [{}]}"), plain(), true, kAllowed, "prod/allow-all"},
        {"DENY with rules: [{}] denies everything",
         ap("prod", "deny-all", "{action: DENY, rules: [{}]}"),
         {},
         false,
         kDenied,
         "prod/deny-all"},
        {"rules: [] is no rules", ap("prod", "empty", "{rules: []}"), {}, false, kNoAllow},
        {"AUDIT never decides, and is reported",
         rule("audit-front", from("{namespaces: [front]}"), "AUDIT"),
         {},
         true,
         kNoPolicy,
         "",
         {"prod/audit-front"}},
        {"AUDIT that does not match is not reported",
         rule("audit-front", from("{namespaces: [front]}"), "AUDIT"), admin(), true, kNoPolicy},
        {"AUDIT is reported on a denied connection too",
         deny_front + rule("audit-all", "{}", "AUDIT"),
         {},
         false,
         kDenied,
         "prod/deny-front",
         {"prod/audit-all"}},
        {"AUDIT alone does not make ALLOW policies apply",
         rule("audit-ops", from("{namespaces: [ops]}"), "AUDIT"),
         {},
         true,
         kNoPolicy},
    });
  }

  TEST_CASE("HTTP fields: an ALLOW rule matches nothing, a DENY rule drops them") {
    run({
        {"ALLOW rule with methods matches nothing; the policy still applies",
         rule("p", R"({to: [{operation: {methods: [GET], ports: ["8080"]}}]})"),
         {},
         false,
         kNoAllow},
        {"ALLOW: another rule without HTTP fields still allows",
         ap("prod", "p",
            R"({rules: [{to: [{operation: {paths: ["/x"]}}]}, {from: [{source: {namespaces: [front]}}]}]})"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"ALLOW rule with a request.headers condition matches nothing",
         rule(
             "p",
             R"({from: [{source: {namespaces: [front]}}], when: [{key: "request.headers[x-a]", values: [b]}]})"),
         {},
         false,
         kNoAllow},
        {"ALLOW rule with requestPrincipals matches nothing",
         rule("p", R"({from: [{source: {requestPrincipals: ["*"], namespaces: [front]}}]})"),
         {},
         false,
         kNoAllow},
        {"DENY: methods dropped, ports kept",
         rule("d", R"({to: [{operation: {methods: [POST], ports: ["8080"]}}]})", "DENY"),
         {},
         false,
         kDenied,
         "prod/d"},
        {"DENY: methods dropped, another port passes",
         rule("d", R"({to: [{operation: {methods: [POST], ports: ["8080"]}}]})", "DENY"),
         port(9090), true, kNoPolicy},
        {"DENY: an operation with only HTTP fields denies every connection",
         rule("d", R"({to: [{operation: {methods: [POST]}}]})", "DENY"), port(9090), false, kDenied,
         "prod/d"},
        {"DENY: an HTTP condition is dropped, the rest applies",
         rule(
             "d",
             R"({from: [{source: {namespaces: [front]}}], when: [{key: request.auth.principal, values: [x]}]})",
             "DENY"),
         {},
         false,
         kDenied,
         "prod/d"},
        {"DENY: ... and does not widen past the rest",
         rule(
             "d",
             R"({from: [{source: {namespaces: [front]}}], when: [{key: request.auth.principal, values: [x]}]})",
             "DENY"),
         admin(), true, kNoPolicy},
        {"DENY: a source with only remoteIpBlocks matches every peer",
         rule("d", R"({from: [{source: {remoteIpBlocks: ["1.2.3.4"]}}]})", "DENY"), admin(), false,
         kDenied, "prod/d"},
        {"AUDIT rule with HTTP fields matches nothing",
         rule("a", R"({to: [{operation: {methods: [GET]}}]})", "AUDIT"),
         {},
         true,
         kNoPolicy},
    });
  }

  TEST_CASE("scope: selector, namespace, root namespace, dry-run") {
    const std::string deny_admin =
        R"({action: DENY, rules: [{from: [{source: {namespaces: [ops]}}]}]})";
    run({
        {"a mesh-wide policy (root namespace, no selector) applies in every namespace",
         ap("sluice-system", "mesh-deny", deny_admin), admin(), false, kDenied,
         "sluice-system/mesh-deny"},
        {"a root-namespace selector policy applies to matching workloads everywhere",
         ap("sluice-system", "mesh-web",
            R"({selector: {matchLabels: {app: web}}, action: DENY, rules: [{from: [{source: {namespaces: [ops]}}]}]})"),
         admin(), false, kDenied, "sluice-system/mesh-web"},
        {"... and not to the others",
         ap("sluice-system", "mesh-api",
            R"({selector: {matchLabels: {app: api}}, action: DENY, rules: [{}]})"),
         admin(), true, kNoPolicy},
        {"a mesh-wide ALLOW makes ALLOW policies apply in prod",
         ap("sluice-system", "mesh-allow",
            R"({rules: [{from: [{source: {namespaces: [front]}}]}]})"),
         admin(), false, kNoAllow},
        {"a mesh-wide ALLOW and a namespace ALLOW: either allows",
         ap("sluice-system", "mesh-allow",
            R"({rules: [{from: [{source: {namespaces: [front]}}]}]})") +
             rule("ns-allow", from("{namespaces: [ops]}")),
         admin(), true, kAllowed, "prod/ns-allow"},
        {"a policy of another namespace does not apply",
         ap("staging", "deny-all", "{action: DENY, rules: [{}]}"),
         {},
         true,
         kNoPolicy},
        {"a selector that selects the workload",
         ap("prod", "web",
            R"({selector: {matchLabels: {app: web, version: v1}}, action: DENY, rules: [{}]})"),
         {},
         false,
         kDenied,
         "prod/web"},
        {"a selector with a label the workload lacks",
         ap("prod", "web",
            R"({selector: {matchLabels: {app: web, tier: db}}, action: DENY, rules: [{}]})"),
         {},
         true,
         kNoPolicy},
        {"a selector with another value",
         ap("prod", "api", R"({selector: {matchLabels: {app: api}}, action: DENY, rules: [{}]})"),
         {},
         true,
         kNoPolicy},
        {"an ALLOW for another workload does not make ALLOW apply here",
         ap("prod", "api",
            R"({selector: {matchLabels: {app: api}}, rules: [{from: [{source: {namespaces: [ops]}}]}]})"),
         {},
         true,
         kNoPolicy},
        {"a dry-run policy is not enforced",
         ap("prod", "dry", "{action: DENY, rules: [{}]}",
            R"(, annotations: {"istio.io/dry-run": "true"})"),
         {},
         true,
         kNoPolicy},
    });
  }

  // Policies whose every rule needs an exact principal are found by the
  // peer's principal; selector policies are grouped by selector. Neither
  // may change an answer.
  TEST_CASE("index: principal keys and selector groups answer as a scan would") {
    const std::string front = R"("cluster.local/ns/front/sa/frontend")";
    const std::string ops = R"("cluster.local/ns/ops/sa/admin")";
    const std::string web = "selector: {matchLabels: {app: web}}, ";
    run({
        {"a principal rule OR an address rule: not keyed, plaintext from the address allowed",
         ap("prod", "p",
            "{rules: [{from: [{source: {principals: [" + ops +
                "]}}]}, {from: [{source: {ipBlocks: [\"10.0.1.0/24\"]}}]}]}"),
         plain(), true, kAllowed, "prod/p"},
        {"sources OR'd, one without principals: not keyed",
         rule("p",
              "{from: [{source: {principals: [" + ops + "]}}, {source: {namespaces: [front]}}]}"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"keyed, and the rest of the rule still has to match",
         rule("p", "{from: [{source: {principals: [" + front +
                       "]}}], to: [{operation: {ports: [\"9090\"]}}]}"),
         {},
         false,
         kNoAllow},
        {"two keyed policies under one principal: the second matches",
         rule("a", "{from: [{source: {principals: [" + front +
                       "]}}], to: [{operation: {ports: [\"9090\"]}}]}") +
             rule("b", "{from: [{source: {principals: [" + front +
                           "]}}], to: [{operation: {ports: [\"8080\"]}}]}"),
         {},
         true,
         kAllowed,
         "prod/b"},
        {"keyed by a source.principal condition",
         rule("p", "{when: [{key: source.principal, values: [" + front + "]}]}"),
         {},
         true,
         kAllowed,
         "prod/p"},
        {"a keyed ALLOW never matches plaintext", rule("p", from("{principals: [" + front + "]}")),
         plain(), false, kNoAllow},
        {"keyed DENY",
         rule("d", from("{principals: [" + front + "]}"), "DENY"),
         {},
         false,
         kDenied,
         "prod/d"},
        {"keyed DENY, another peer", rule("d", from("{principals: [" + front + "]}"), "DENY"),
         admin(), true, kNoPolicy},
        {"keyed AUDIT",
         rule("a", from("{principals: [" + front + "]}"), "AUDIT"),
         {},
         true,
         kNoPolicy,
         "",
         {"prod/a"}},
        {"an ALLOW with an HTTP-only rule applies though it has no key and no rule",
         rule("p", R"({to: [{operation: {methods: [GET]}}]})") +
             ap("prod", "q",
                "{" + web + "rules: [{from: [{source: {principals: [" + ops + "]}}]}]}"),
         {},
         false,
         kNoAllow},
        {"policies sharing a selector are grouped",
         ap("prod", "a", "{" + web + "rules: [{from: [{source: {principals: [" + ops + "]}}]}]}") +
             ap("prod", "b",
                "{" + web + "rules: [{from: [{source: {principals: [" + front + "]}}]}]}"),
         {},
         true,
         kAllowed,
         "prod/b"},
        {"same first label, a longer selector the workload does not match",
         ap("prod", "a", "{" + web + "action: DENY, rules: [{}]}") +
             ap("prod", "v2", "{selector: {matchLabels: {app: web, version: v2}}, rules: [{}]}"),
         {},
         false,
         kDenied,
         "prod/a"},
        {"... and one it does",
         ap("prod", "v1",
            "{selector: {matchLabels: {app: web, version: v1}}, action: DENY, rules: [{}]}") +
             ap("prod", "web", "{" + web + "rules: [{}]}"),
         {},
         false,
         kDenied,
         "prod/v1"},
    });
  }

  TEST_CASE("PeerAuthentication: STRICT, PERMISSIVE, precedence, port level") {
    const std::string mesh_strict = pa("sluice-system", "default", "{mtls: {mode: STRICT}}");
    const std::string web = "selector: {matchLabels: {app: web}}, ";
    run({
        {"mesh STRICT refuses plaintext", mesh_strict, plain(), false, kStrict,
         "sluice-system/default"},
        {"mesh STRICT lets mTLS through", mesh_strict, {}, true, kNoPolicy},
        {"no PeerAuthentication: PERMISSIVE", "", plain(), true, kNoPolicy},
        {"namespace PERMISSIVE overrides mesh STRICT",
         mesh_strict + pa("prod", "ns", "{mtls: {mode: PERMISSIVE}}"), plain(), true, kNoPolicy},
        {"namespace STRICT over mesh PERMISSIVE",
         pa("sluice-system", "default", "{mtls: {mode: PERMISSIVE}}") +
             pa("prod", "ns", "{mtls: {mode: STRICT}}"),
         plain(), false, kStrict, "prod/ns"},
        {"namespace UNSET inherits mesh STRICT",
         mesh_strict + pa("prod", "ns", "{mtls: {mode: UNSET}}"), plain(), false, kStrict,
         "sluice-system/default"},
        {"workload PERMISSIVE overrides namespace STRICT",
         pa("prod", "ns", "{mtls: {mode: STRICT}}") +
             pa("prod", "web", "{" + web + "mtls: {mode: PERMISSIVE}}"),
         plain(), true, kNoPolicy},
        {"workload STRICT over mesh PERMISSIVE",
         pa("prod", "web", "{" + web + "mtls: {mode: STRICT}}"), plain(), false, kStrict,
         "prod/web"},
        {"workload UNSET inherits namespace STRICT",
         pa("prod", "ns", "{mtls: {mode: STRICT}}") + pa("prod", "web", "{" + web + "mtls: {}}"),
         plain(), false, kStrict, "prod/ns"},
        {"a workload policy that selects another workload does not apply",
         pa("prod", "api", "{selector: {matchLabels: {app: api}}, mtls: {mode: STRICT}}"), plain(),
         true, kNoPolicy},
        {"portLevelMtls: STRICT workload, PERMISSIVE port",
         pa("prod", "web",
            "{" + web + "mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}"),
         plain(), true, kNoPolicy},
        {"portLevelMtls: ... other ports stay STRICT",
         pa("prod", "web",
            "{" + web + "mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}"),
         plain(port(9090)), false, kStrict, "prod/web"},
        {"portLevelMtls: STRICT port under a PERMISSIVE namespace",
         pa("prod", "web", "{" + web + "portLevelMtls: {\"9090\": {mode: STRICT}}}"),
         plain(port(9090)), false, kStrict, "prod/web"},
        {"portLevelMtls: UNSET workload mode inherits mesh STRICT on other ports",
         mesh_strict + pa("prod", "web", "{" + web + "portLevelMtls: {8080: {mode: PERMISSIVE}}}"),
         plain(port(9090)), false, kStrict, "sluice-system/default"},
        {"the oldest namespace policy wins",
         pa("prod", "b-old", "{mtls: {mode: STRICT}}",
            ", creationTimestamp: \"2026-01-01T00:00:00Z\"") +
             pa("prod", "a-new", "{mtls: {mode: PERMISSIVE}}",
                ", creationTimestamp: \"2026-02-01T00:00:00Z\""),
         plain(), false, kStrict, "prod/b-old"},
        {"DISABLE is enforced as PERMISSIVE",
         mesh_strict + pa("prod", "web", "{" + web + "mtls: {mode: DISABLE}}"), plain(), true,
         kNoPolicy},
        {"a root-namespace PeerAuthentication with a selector is ignored",
         pa("sluice-system", "web", "{" + web + "mtls: {mode: STRICT}}"), plain(), true, kNoPolicy},
        {"STRICT is decided before DENY policies",
         mesh_strict + ap("prod", "deny-all", "{action: DENY, rules: [{}]}"), plain(), false,
         kStrict, "sluice-system/default"},
        {"STRICT then ALLOW: mTLS still needs an ALLOW match",
         mesh_strict + rule("p", from("{namespaces: [ops]}")),
         {},
         false,
         kNoAllow},
    });
  }

  TEST_CASE("kubelet probes from the node's own address") {
    const std::string strict = pa("sluice-system", "default", "{mtls: {mode: STRICT}}");
    Conn probe = plain(from_ip("10.0.0.1"));
    run({
        {"a plaintext probe passes STRICT", strict, probe, true, kProbe},
        {"... and an ALLOW-nothing policy", strict + ap("prod", "nothing", "{}"), probe, true,
         kProbe},
        {"plaintext from another address is refused", strict, plain(from_ip("10.0.0.2")), false,
         kStrict, "sluice-system/default"},
        {"with allow_node_probes off, a probe is ordinary plaintext",
         strict,
         probe,
         false,
         kStrict,
         "sluice-system/default",
         {},
         false},
        {"an authenticated peer on the node address is not a probe", ap("prod", "nothing", "{}"),
         from_ip("10.0.0.1"), false, kNoAllow},
        {"unknown node address: no allowance", strict,
         [] {
           Conn c = plain(from_ip("10.0.0.1"));
           c.node = "";
           return c;
         }(),
         false, kStrict, "sluice-system/default"},
    });
  }

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
