// The compiled form of a PolicySet (policy_set.cc builds it, evaluate()
// walks it): value tests shaped like ztunnel's RbacMatch, and the index that
// finds the policies whose scope contains a workload (by namespace, then by
// a selector's first label) and, among ALLOW/DENY/AUDIT policies that name
// their callers by exact principal, those keyed by the peer's principal.
// Internal to common/policy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/policy/match.h"
#include "common/policy/model.h"
#include "common/policy/policy_set.h"

namespace sluice::policy::compiled {

// --- compiled matchers ------------------------------------------------------
//
// The shape of ztunnel's RbacMatch (src/rbac.rs): a rule is clauses AND'd,
// a clause is matches OR'd, a match is tests AND'd, a test is values OR'd,
// negated for the not-forms. Cheap tests come first in a match.

enum class Field : uint8_t {
  kDestinationPort,
  kSourceIp,
  kDestinationIp,
  kNamespace,
  kServiceAccount,
  kPrincipal,
};

struct ServiceAccountMatch {
  std::string ns;
  std::string name;
};

struct Test {
  Field field = Field::kDestinationPort;
  bool negate = false;  // the not-form: none of the values
  std::vector<uint16_t> ports;
  std::vector<IpBlock> blocks;
  std::vector<StringMatch> strings;
  std::vector<ServiceAccountMatch> accounts;
};

// The connection as the tests see it: host-order addresses, the peer's
// identity split once.
struct Conn {
  PeerIdentity peer;
  uint32_t source_ip = 0;
  bool source_v6 = false;  // the source is source_ip6, not source_ip
  Ip6 source_ip6{};
  uint32_t destination_ip = 0;
  bool destination_v6 = false;  // the destination is destination_ip6, not destination_ip
  Ip6 destination_ip6{};
  uint16_t port = 0;
};

inline bool anyValue(const Test& t, const Conn& c) {
  switch (t.field) {
    case Field::kDestinationPort:
      return std::find(t.ports.begin(), t.ports.end(), c.port) != t.ports.end();
    case Field::kSourceIp:
      for (const auto& b : t.blocks)
        if (c.source_v6 ? b.contains6(c.source_ip6) : b.contains(c.source_ip)) return true;
      return false;
    case Field::kDestinationIp:
      for (const auto& b : t.blocks)
        if (c.destination_v6 ? b.contains6(c.destination_ip6) : b.contains(c.destination_ip))
          return true;
      return false;
    // The identity fields compare with what the peer's certificate says;
    // plaintext has none, so a value never matches it and a not-form always
    // does (ISTIO-SECURITY-2021-004: "The mTLS-only field notNamespaces will
    // be compared to an empty value when mTLS is not used, resulting in a
    // match"; ztunnel rbac.rs compares with "" the same way).
    case Field::kNamespace:
      for (const auto& s : t.strings)
        if (s.matches(c.peer.ns)) return true;
      return false;
    case Field::kServiceAccount:
      for (const auto& a : t.accounts)
        if (c.peer.ns == a.ns && c.peer.service_account == a.name && !a.name.empty()) return true;
      return false;
    case Field::kPrincipal:
      if (!c.peer.authenticated) return false;
      for (const auto& s : t.strings)
        if (s.matches(c.peer.principal)) return true;
      return false;
  }
  return false;
}

struct Match {
  std::vector<Test> tests;  // empty: matches everything (only DENY rules with HTTP fields dropped)
  bool matches(const Conn& c) const {
    for (const auto& t : tests)
      if (anyValue(t, c) == t.negate) return false;
    return true;
  }
};

struct Clause {
  std::vector<Match> any;
  bool matches(const Conn& c) const {
    for (const auto& m : any)
      if (m.matches(c)) return true;
    return false;
  }
};

struct CompiledRule {
  std::vector<Clause> all;  // empty: `rules: [{}]`, matches everything
  bool matches(const Conn& c) const {
    for (const auto& cl : all)
      if (!cl.matches(c)) return false;
    return true;
  }
};

struct CompiledPolicy {
  const AuthorizationPolicy* model = nullptr;
  std::vector<CompiledRule> rules;  // empty: matches nothing
  bool matches(const Conn& c) const {
    for (const auto& r : rules)
      if (r.matches(c)) return true;
    return false;
  }
};

// --- selector pre-filter ------------------------------------------------------

inline uint64_t labelHash(std::string_view key, std::string_view value) {
  uint64_t k = std::hash<std::string_view>{}(key);
  uint64_t v = std::hash<std::string_view>{}(value);
  return (k * 0x9E3779B97F4A7C15ull) ^ v;
}

inline const std::string_view* findLabel(std::span<const Label> labels, std::string_view key) {
  for (const auto& l : labels)
    if (l.key == key) return &l.value;
  return nullptr;
}

inline bool selects(const LabelMap& selector, std::span<const Label> labels) {
  for (const auto& [k, v] : selector) {
    const std::string_view* have = findLabel(labels, k);
    if (!have || *have != v) return false;
  }
  return true;
}

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Policies of one action that share a scope. Most ALLOW policies name their
// callers by principal: a policy each of whose rules needs the peer to be one
// of a few exact principals is found by the peer's principal instead of
// being examined (the key is necessary, not sufficient: it is still matched).
struct Group {
  std::vector<uint32_t> scan;  // examined for every connection
  std::unordered_map<std::string, std::vector<uint32_t>, SvHash, std::equal_to<>> by_principal;
  uint32_t size = 0;  // policies in the group (an ALLOW applies even if it can never match)
};

// The policies that share one scope: namespace-wide, or one selector.
struct Scoped {
  Group deny, allow, audit;
  Group& of(Action a) { return a == Action::kDeny ? deny : a == Action::kAllow ? allow : audit; }
};

// The exact principals one of which a compiled policy needs, or nullopt if it
// has no such key (then it is scanned). A policy without rules never
// matches: an empty key set.
std::optional<std::vector<std::string>> principalKeys(const CompiledPolicy& p);

}  // namespace sluice::policy::compiled

namespace sluice::policy {

struct PolicySet::Index {
  using CompiledPolicy = compiled::CompiledPolicy;
  using Conn = compiled::Conn;
  using Group = compiled::Group;
  using Scoped = compiled::Scoped;
  using SvHash = compiled::SvHash;
  struct SelectorScope {
    const LabelMap* selector;  // never empty; its first label is the by_label key
    Scoped policies;
  };
  struct Bucket {
    Scoped namespace_wide;
    // Selector policies grouped by identical selector, found through the
    // selector's first label (a hash of key and value: checked on use).
    std::unordered_map<uint64_t, std::vector<SelectorScope>> by_label;
    const PeerAuthentication* namespace_pa = nullptr;
    std::vector<const PeerAuthentication*> workload_pas;  // oldest first
  };
  std::vector<CompiledPolicy> policies;
  std::unordered_map<std::string, Bucket, SvHash, std::equal_to<>> namespaces;
  const Bucket* root = nullptr;

  const Bucket* bucket(std::string_view ns) const {
    auto it = namespaces.find(ns);
    return it == namespaces.end() ? nullptr : &it->second;
  }

  // Files policies[id] under its namespace, selector and action.
  void add(uint32_t id);

  // Calls fn(const Scoped&) for every scope that contains the workload.
  template <typename Fn>
  void forEachScope(const Workload& w, Fn&& fn) const {
    const Bucket* own = bucket(w.ns);
    const Bucket* buckets[2] = {root, own == root ? nullptr : own};
    for (const Bucket* b : buckets) {
      if (!b) continue;
      fn(b->namespace_wide);
      if (b->by_label.empty()) continue;
      for (const auto& l : w.labels) {
        auto it = b->by_label.find(compiled::labelHash(l.key, l.value));
        if (it == b->by_label.end()) continue;
        for (const auto& s : it->second) {
          // Reached through its first label only (a hash collision is not it).
          const auto& first = s.selector->front();
          if (first.first == l.key && first.second == l.value &&
              compiled::selects(*s.selector, w.labels))
            fn(s.policies);
        }
      }
    }
  }

  // Calls fn(policy) for the policies of g that may match c, until it returns true.
  template <typename Fn>
  bool anyCandidate(const Group& g, const Conn& c, Fn&& fn) const {
    for (uint32_t id : g.scan)
      if (fn(policies[id])) return true;
    if (c.peer.authenticated && !g.by_principal.empty()) {
      auto it = g.by_principal.find(c.peer.principal);
      if (it != g.by_principal.end())
        for (uint32_t id : it->second)
          if (fn(policies[id])) return true;
    }
    return false;
  }
};

}  // namespace sluice::policy
