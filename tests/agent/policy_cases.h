// Shared by the policy tests (policy_test.cc, policy_scope_test.cc,
// policy_parse_test.cc): YAML builders for policy objects, a compiled set from
// YAML, and table-driven evaluation of one connection against it.
#pragma once

#include <doctest/doctest.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/policy/parse.h"
#include "common/policy/policy_set.h"
#include "sluice/common/addr.h"
#include "sluice/common/ip6.h"

namespace sluice::policy::test_cases {

inline constexpr const char* kFront = "spiffe://cluster.local/ns/front/sa/frontend";
inline constexpr const char* kAdmin = "spiffe://cluster.local/ns/ops/sa/admin";
inline constexpr const char* kPlain = "";

// One object in flow style: kind, namespace, name, spec (and extra metadata).
inline std::string obj(const char* kind, const std::string& ns, const std::string& name,
                       const std::string& spec, const std::string& meta = "") {
  return "---\napiVersion: security.sluice.dev/v1\nkind: " + std::string(kind) +
         "\nmetadata: {name: " + name + ", namespace: " + ns + meta + "}\nspec: " + spec + "\n";
}
inline std::string ap(const std::string& ns, const std::string& name, const std::string& spec,
                      const std::string& meta = "") {
  return obj("AuthorizationPolicy", ns, name, spec, meta);
}
inline std::string pa(const std::string& ns, const std::string& name, const std::string& spec,
                      const std::string& meta = "") {
  return obj("PeerAuthentication", ns, name, spec, meta);
}
// An ALLOW (or other) policy in prod with one rule.
inline std::string rule(const std::string& name, const std::string& rule_yaml,
                        const char* action = "ALLOW") {
  return ap("prod", name, "{action: " + std::string(action) + ", rules: [" + rule_yaml + "]}");
}
inline std::string from(const std::string& source) { return "{from: [{source: " + source + "}]}"; }

struct Loaded {
  std::vector<AuthorizationPolicy> authz;
  std::vector<PeerAuthentication> peer;
};

inline Result<Loaded> load(const std::string& yaml) {
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

inline std::shared_ptr<const PolicySet> build(const std::string& yaml, bool node_probes = true) {
  auto loaded = load(yaml);
  REQUIRE_MESSAGE(loaded.has_value(), (loaded ? "" : loaded.error().message));
  PolicySet::Options options;
  options.allow_node_probes = node_probes;
  auto set = PolicySet::build(std::move(loaded->authz), std::move(loaded->peer), options);
  REQUIRE_MESSAGE(set.has_value(), (set ? "" : set.error().message));
  return *set;
}

inline uint32_t ip(const char* text) {
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
  const char* node6 = "";  // the node's IPv6 address towards the pod; "": unknown
};

// An IPv6 address of a case ("fd00::1") as the Request carries it.
inline std::array<uint8_t, 16> ip6(const char* text) {
  auto a6 = parseIp6(text);
  REQUIRE(a6.has_value());
  std::array<uint8_t, 16> out;
  std::memcpy(out.data(), a6->s6_addr, 16);
  return out;
}

struct Evaluated {
  Decision decision;
  std::shared_ptr<const PolicySet> set;  // keeps the decision's views alive
};

inline Evaluated evaluate(std::shared_ptr<const PolicySet> set, const Conn& c) {
  std::vector<Label> labels;
  for (const auto& [k, v] : c.labels) labels.push_back({k, v});
  Request r;
  r.destination = {c.ns, "web-0", labels, "spiffe://cluster.local/ns/prod/sa/web"};
  if (std::strchr(c.destination, ':'))  // an IPv6 destination
    r.destination_ip6 = ip6(c.destination);
  else
    r.destination_ip = ip(c.destination);
  r.destination_port = c.port;
  if (std::strchr(c.source, ':'))  // an IPv6 source
    r.source_ip6 = ip6(c.source);
  else
    r.source_ip = ip(c.source);
  r.source_principal = c.principal;
  r.mutual_tls = *c.principal != 0;
  r.node_ip = ip(c.node);
  if (*c.node6) r.node_ip6 = ip6(c.node6);
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

inline void run(const std::vector<Case>& cases) {
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

inline Conn plain(Conn c = {}) {
  c.principal = kPlain;
  return c;
}
inline Conn admin(Conn c = {}) {
  c.principal = kAdmin;
  c.source = "10.0.3.9";
  return c;
}
inline Conn port(uint16_t p, Conn c = {}) {
  c.port = p;
  return c;
}
inline Conn from_ip(const char* s, Conn c = {}) {
  c.source = s;
  return c;
}
inline Conn to_ip(const char* s, Conn c = {}) {
  c.destination = s;
  return c;
}

inline constexpr Reason kNoPolicy = Reason::kNoPolicy;
inline constexpr Reason kAllowed = Reason::kAllowMatched;
inline constexpr Reason kDenied = Reason::kDenyMatched;
inline constexpr Reason kNoAllow = Reason::kNoAllowMatched;
inline constexpr Reason kStrict = Reason::kStrictMtls;
inline constexpr Reason kProbe = Reason::kNodeProbe;

}  // namespace sluice::policy::test_cases
