#include "common/policy/policy_set.h"

#include <arpa/inet.h>

#include <algorithm>
#include <functional>
#include <unordered_map>

#include "common/policy/compiled.h"
#include "common/policy/match.h"
#include "sluice/common/fmt.h"

namespace sluice::policy {

using namespace compiled;  // the compiled form (compiled.h)

namespace {

MtlsMode effective(MtlsMode m) { return m == MtlsMode::kDisable ? MtlsMode::kPermissive : m; }

bool olderThan(const PeerAuthentication* a, const PeerAuthentication* b) {
  // Istio: the oldest policy of a scope wins. Timestamps without one sort
  // last; ties by name (RFC 3339 in UTC, as the API server writes it,
  // compares as text).
  if (a->created.empty() != b->created.empty()) return !a->created.empty();
  if (a->created != b->created) return a->created < b->created;
  return a->name < b->name;
}

}  // namespace

// --- PolicySet ------------------------------------------------------------------

const char* toString(Reason r) {
  switch (r) {
    case Reason::kNoPolicy:
      return "no policy";
    case Reason::kAllowMatched:
      return "ALLOW matched";
    case Reason::kNodeProbe:
      return "node probe";
    case Reason::kDenyMatched:
      return "DENY matched";
    case Reason::kNoAllowMatched:
      return "no ALLOW matched";
    case Reason::kStrictMtls:
      return "STRICT mTLS";
  }
  return "?";
}

std::string Decision::describe() const {
  std::string out = allow ? "allow: " : "deny: ";
  out += toString(reason);
  if (!policy.empty()) out += fmt::format(" ({}/{})", policy.ns, policy.name);
  for (size_t i = 0; i < audit_count && i < kMaxAudits; ++i)
    out += fmt::format("{}{}/{}", i == 0 ? "; audit " : ", ", audits[i].ns, audits[i].name);
  if (audit_count > kMaxAudits) out += fmt::format(" and {} more", audit_count - kMaxAudits);
  return out;
}

PolicySet::PolicySet(std::vector<AuthorizationPolicy> a, std::vector<PeerAuthentication> p,
                     Options o)
    : authorization_(std::move(a)), peer_(std::move(p)), options_(std::move(o)) {}

PolicySet::~PolicySet() = default;

std::shared_ptr<const PolicySet> PolicySet::empty() {
  auto set = build({}, {});
  return set ? *set : nullptr;  // nothing to fail on
}

namespace {

struct Compiler {
  const AuthorizationPolicy& policy;

  std::string where() const {
    return fmt::format("AuthorizationPolicy {}/{}", policy.ns, policy.name);
  }

  Result<void> ips(Field field, bool negate, const std::vector<std::string>& values,
                   std::vector<Test>& out) {
    if (values.empty()) return {};
    Test t{field, negate, {}, {}, {}, {}};
    for (const auto& v : values) {
      auto b = parseIpBlock(v);
      if (!b) return fail(fmt::format("{}: \"{}\" is not an IP address or CIDR block", where(), v));
      t.blocks.push_back(*b);
    }
    out.push_back(std::move(t));
    return {};
  }
  Result<void> ports(bool negate, const std::vector<std::string>& values, std::vector<Test>& out) {
    if (values.empty()) return {};
    Test t{Field::kDestinationPort, negate, {}, {}, {}, {}};
    for (const auto& v : values) {
      auto p = parsePort(v);
      if (!p) return fail(fmt::format("{}: \"{}\" is not a port number", where(), v));
      t.ports.push_back(*p);
    }
    out.push_back(std::move(t));
    return {};
  }
  static void strings(Field field, bool negate, const std::vector<std::string>& values,
                      std::vector<Test>& out) {
    if (values.empty()) return;
    Test t{field, negate, {}, {}, {}, {}};
    for (const auto& v : values) t.strings.push_back(StringMatch::compile(v));
    out.push_back(std::move(t));
  }
  void accounts(bool negate, const std::vector<std::string>& values, std::vector<Test>& out) {
    if (values.empty()) return;
    Test t{Field::kServiceAccount, negate, {}, {}, {}, {}};
    for (const auto& v : values) {
      // istiod stringToServiceAccountMatch: "ns/sa", or "sa" in the policy's namespace.
      auto slash = v.find('/');
      if (slash == std::string::npos)
        t.accounts.push_back({policy.ns, v});
      else
        t.accounts.push_back({v.substr(0, slash), v.substr(slash + 1)});
    }
    out.push_back(std::move(t));
  }

  static void order(Match& m) {
    std::stable_sort(m.tests.begin(), m.tests.end(),
                     [](const Test& a, const Test& b) { return a.field < b.field; });
  }

  // What the parser refuses must not reach matching from the wire either: an
  // empty source or value would match plaintext (its namespace is "").
  Result<void> nonEmpty(const std::vector<std::string>& values) const {
    for (const auto& v : values)
      if (v.empty()) return fail(where() + ": empty value");
    return {};
  }

  Result<Match> source(const Source& s) {
    Match m;
    for (const auto* v : {&s.principals, &s.not_principals, &s.namespaces, &s.not_namespaces,
                          &s.service_accounts, &s.not_service_accounts})
      if (auto ok = nonEmpty(*v); !ok) return tl::unexpected(ok.error());
    if (s.principals.empty() && s.not_principals.empty() && s.namespaces.empty() &&
        s.not_namespaces.empty() && s.service_accounts.empty() && s.not_service_accounts.empty() &&
        s.ip_blocks.empty() && s.not_ip_blocks.empty() && s.l7_fields.empty())
      return fail(where() + ": empty source");
    strings(Field::kPrincipal, false, s.principals, m.tests);
    strings(Field::kPrincipal, true, s.not_principals, m.tests);
    strings(Field::kNamespace, false, s.namespaces, m.tests);
    strings(Field::kNamespace, true, s.not_namespaces, m.tests);
    accounts(false, s.service_accounts, m.tests);
    accounts(true, s.not_service_accounts, m.tests);
    if (auto r = ips(Field::kSourceIp, false, s.ip_blocks, m.tests); !r)
      return tl::unexpected(r.error());
    if (auto r = ips(Field::kSourceIp, true, s.not_ip_blocks, m.tests); !r)
      return tl::unexpected(r.error());
    order(m);
    return m;
  }

  Result<Match> operation(const Operation& o) {
    Match m;
    if (o.ports.empty() && o.not_ports.empty() && o.l7_fields.empty())
      return fail(where() + ": empty operation");
    if (auto r = ports(false, o.ports, m.tests); !r) return tl::unexpected(r.error());
    if (auto r = ports(true, o.not_ports, m.tests); !r) return tl::unexpected(r.error());
    return m;
  }

  Result<Match> condition(const Condition& c) {
    Match m;
    if (c.values.empty() && c.not_values.empty())
      return fail(fmt::format("{}: condition on {} without values", where(), c.key));
    if (auto ok = nonEmpty(c.values); !ok) return tl::unexpected(ok.error());
    if (auto ok = nonEmpty(c.not_values); !ok) return tl::unexpected(ok.error());
    for (bool negate : {false, true}) {
      const auto& values = negate ? c.not_values : c.values;
      Result<void> ok;
      if (c.key == "source.ip")
        ok = ips(Field::kSourceIp, negate, values, m.tests);
      else if (c.key == "destination.ip")
        ok = ips(Field::kDestinationIp, negate, values, m.tests);
      else if (c.key == "destination.port")
        ok = ports(negate, values, m.tests);
      else if (c.key == "source.namespace")
        strings(Field::kNamespace, negate, values, m.tests);
      else if (c.key == "source.principal")
        strings(Field::kPrincipal, negate, values, m.tests);
      if (!ok) return tl::unexpected(ok.error());
    }
    return m;
  }

  // Sluice enforces at L4. Rules that use HTTP fields (istiod handleRule):
  //  - ALLOW (and AUDIT): the whole rule is dropped, it matches nothing; the
  //    policy still applies, so the default deny of step 5 still does.
  //  - DENY: the HTTP fields are dropped and the rest is enforced, which
  //    denies more than written: "For a DENY rule, missing attributes are
  //    treated as matches" (authorization_policy.proto, on TCP traffic). A
  //    source or operation left with nothing matches every connection, and
  //    so does a `when` on an HTTP key. (ztunnel instead turns such an empty
  //    match into match-nothing, i.e. a DENY that silently does nothing;
  //    Sluice keeps the documented, fail-closed reading.)
  Result<std::optional<CompiledRule>> rule(const Rule& r) {
    if (policy.action != Action::kDeny && r.hasL7()) return std::optional<CompiledRule>{};
    CompiledRule out;
    if (!r.from.empty()) {
      Clause cl;
      for (const auto& s : r.from) {
        auto m = source(s);
        if (!m) return tl::unexpected(m.error());
        cl.any.push_back(std::move(*m));
      }
      out.all.push_back(std::move(cl));
    }
    if (!r.to.empty()) {
      Clause cl;
      for (const auto& o : r.to) {
        auto m = operation(o);
        if (!m) return tl::unexpected(m.error());
        cl.any.push_back(std::move(*m));
      }
      out.all.push_back(std::move(cl));
    }
    for (const auto& c : r.when) {
      if (!isL4ConditionKey(c.key)) continue;  // DENY: dropped (treated as a match)
      auto m = condition(c);
      if (!m) return tl::unexpected(m.error());
      out.all.push_back(Clause{{std::move(*m)}});
    }
    // Put clauses with a single test first: usually a port or an address.
    std::stable_sort(out.all.begin(), out.all.end(), [](const Clause& a, const Clause& b) {
      return a.any.size() == 1 && a.any[0].tests.size() == 1 &&
             !(b.any.size() == 1 && b.any[0].tests.size() == 1);
    });
    return std::optional<CompiledRule>{std::move(out)};
  }

  Result<CompiledPolicy> compile() {
    CompiledPolicy p;
    p.model = &policy;
    // "If not set, the match will never occur" (authorization_policy.proto,
    // rules): no rules = matches nothing.
    for (const auto& r : policy.rules) {
      auto c = rule(r);
      if (!c) return tl::unexpected(c.error());
      if (*c) p.rules.push_back(std::move(**c));
    }
    return p;
  }
};

template <typename T>
bool byName(const T& a, const T& b) {
  return std::tie(a.ns, a.name) < std::tie(b.ns, b.name);
}

}  // namespace

Result<std::shared_ptr<const PolicySet>> PolicySet::build(
    std::vector<AuthorizationPolicy> authorization, std::vector<PeerAuthentication> peer,
    Options options) {
  std::sort(authorization.begin(), authorization.end(), byName<AuthorizationPolicy>);
  std::sort(peer.begin(), peer.end(), byName<PeerAuthentication>);
  for (size_t i = 1; i < authorization.size(); ++i)
    if (!byName(authorization[i - 1], authorization[i]))
      return fail(fmt::format("AuthorizationPolicy {}/{} is defined twice", authorization[i].ns,
                              authorization[i].name));
  for (size_t i = 1; i < peer.size(); ++i)
    if (!byName(peer[i - 1], peer[i]))
      return fail(
          fmt::format("PeerAuthentication {}/{} is defined twice", peer[i].ns, peer[i].name));

  std::shared_ptr<PolicySet> set(
      new PolicySet(std::move(authorization), std::move(peer), std::move(options)));
  auto index = std::make_unique<Index>();
  const std::string& root_ns = set->options_.root_namespace;

  for (const auto& ap : set->authorization_) {
    for (const auto& [k, v] : ap.selector)
      if (k.empty())
        return fail(
            fmt::format("AuthorizationPolicy {}/{}: empty selector label key", ap.ns, ap.name));
    if (ap.dry_run) continue;  // displayed, not enforced
    auto c = Compiler{ap}.compile();
    if (!c) return tl::unexpected(c.error());
    index->policies.push_back(std::move(*c));
  }

  // Then the index over them (by namespace, selector, principal).
  for (uint32_t id = 0; id < index->policies.size(); ++id) index->add(id);

  // PeerAuthentication scopes (istiod convertedSelectorPeerAuthentications):
  // no selector = the namespace (the mesh in the root namespace); a selector
  // = the workloads it selects in its namespace; a selector in the root
  // namespace is ignored, as ambient Istio does.
  std::unordered_map<std::string, std::vector<const PeerAuthentication*>> workload_pas;
  for (auto& pa : set->peer_) {
    if (pa.selector.empty()) {
      auto& slot = index->namespaces[pa.ns].namespace_pa;
      if (!slot || olderThan(&pa, slot)) slot = &pa;
    } else if (pa.ns == root_ns) {
      pa.warnings.push_back(fmt::format(
          "a PeerAuthentication with a selector in the root namespace {} is ignored: "
          "remove the selector to make it mesh-wide, or move it to the workloads' namespace",
          root_ns));
    } else {
      workload_pas[pa.ns].push_back(&pa);
    }
  }
  for (auto& [ns, list] : workload_pas) {
    std::sort(list.begin(), list.end(), olderThan);
    index->namespaces[ns].workload_pas = std::move(list);
  }
  // Of two namespace-scope policies only the oldest counts: say so on the other.
  for (auto& pa : set->peer_) {
    if (!pa.selector.empty()) continue;
    const auto* winner = index->namespaces[pa.ns].namespace_pa;
    if (winner != &pa)
      pa.warnings.push_back(
          fmt::format("ignored: {} is older and also sets the {} mode; keep one policy per scope",
                      winner->name, pa.ns == root_ns ? "mesh-wide" : "namespace-wide"));
  }

  if (auto it = index->namespaces.find(root_ns); it != index->namespaces.end())
    index->root = &it->second;
  set->index_ = std::move(index);
  return std::shared_ptr<const PolicySet>(std::move(set));
}

MtlsMode PolicySet::mtlsMode(const Workload& w, uint16_t port, PolicyRef* from) const {
  MtlsMode mode = MtlsMode::kPermissive;
  const PeerAuthentication* by = nullptr;
  auto inherit = [&](const PeerAuthentication* pa, MtlsMode m) {
    if (m == MtlsMode::kUnset) return;
    mode = effective(m);
    by = pa;
  };
  if (const auto* root = index_->root; root && root->namespace_pa)
    inherit(root->namespace_pa, root->namespace_pa->mode);
  if (const auto* b = index_->bucket(w.ns)) {
    if (b != index_->root && b->namespace_pa) inherit(b->namespace_pa, b->namespace_pa->mode);
    for (const auto* pa : b->workload_pas) {
      if (!selects(pa->selector, w.labels)) continue;
      inherit(pa, pa->mode);
      auto it = std::lower_bound(pa->port_level.begin(), pa->port_level.end(), port,
                                 [](const auto& e, uint16_t p) { return e.first < p; });
      if (it != pa->port_level.end() && it->first == port) inherit(pa, it->second);
      break;  // only the oldest matching workload policy counts
    }
  }
  if (from) *from = by ? PolicyRef{by->ns, by->name} : PolicyRef{};
  return mode;
}

Decision PolicySet::evaluate(const Request& req) const {
  Decision d;
  Conn c;
  c.peer = parsePeerIdentity(req.source_principal);
  // An IPv6 address as the tests see it: an IPv4-mapped one is IPv4.
  auto family = [](const std::optional<Ip6>& a6, uint32_t ip_net, uint32_t& ip4, bool& v6,
                   Ip6& ip6) {
    static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    ip4 = ntohl(ip_net);
    if (!a6) return;
    const Ip6& a = *a6;
    if (std::equal(a.begin(), a.begin() + 12, kMapped)) {
      ip4 = (uint32_t(a[12]) << 24) | (uint32_t(a[13]) << 16) | (uint32_t(a[14]) << 8) | a[15];
    } else {
      v6 = true;
      ip6 = a;
    }
  };
  family(req.source_ip6, req.source_ip, c.source_ip, c.source_v6, c.source_ip6);
  family(req.destination_ip6, req.destination_ip, c.destination_ip, c.destination_v6,
         c.destination_ip6);
  c.port = req.destination_port;

  if (options_.allow_node_probes && !c.peer.authenticated && req.fromNode()) {
    d.allow = true;
    d.reason = Reason::kNodeProbe;
    return d;
  }

  // One pass over the scopes that contain the workload: the first matching
  // DENY, whether any ALLOW applies and the first that matches, and every
  // matching AUDIT.
  const CompiledPolicy* deny = nullptr;
  const CompiledPolicy* allowed = nullptr;
  bool allow_applies = false;
  auto ref = [](const CompiledPolicy& p) { return PolicyRef{p.model->ns, p.model->name}; };
  const Index& index = *index_;
  index.forEachScope(req.destination, [&](const Scoped& s) {
    if (s.audit.size)
      index.anyCandidate(s.audit, c, [&](const CompiledPolicy& p) {
        if (!p.matches(c)) return false;
        if (d.audit_count < Decision::kMaxAudits) d.audits[d.audit_count] = ref(p);
        if (d.audit_count < 255) ++d.audit_count;
        return false;  // all of them
      });
    if (deny) return;
    if (s.deny.size && index.anyCandidate(s.deny, c, [&](const CompiledPolicy& p) {
          if (!p.matches(c)) return false;
          deny = &p;
          return true;
        }))
      return;
    if (allowed || !s.allow.size) return;
    allow_applies = true;
    index.anyCandidate(s.allow, c, [&](const CompiledPolicy& p) {
      if (!p.matches(c)) return false;
      allowed = &p;
      return true;
    });
  });

  if (!c.peer.authenticated) {
    PolicyRef by;
    if (mtlsMode(req.destination, req.destination_port, &by) == MtlsMode::kStrict) {
      d.reason = Reason::kStrictMtls;
      d.policy = by;
      return d;
    }
  }
  if (deny) {
    d.reason = Reason::kDenyMatched;
    d.policy = ref(*deny);
  } else if (allowed) {
    d.allow = true;
    d.reason = Reason::kAllowMatched;
    d.policy = ref(*allowed);
  } else if (!allow_applies) {
    d.allow = true;
    d.reason = Reason::kNoPolicy;
  } else {
    d.reason = Reason::kNoAllowMatched;
  }
  return d;
}

std::vector<const AuthorizationPolicy*> PolicySet::applicable(const Workload& w) const {
  std::vector<const AuthorizationPolicy*> out;
  for (bool mesh : {true, false}) {
    for (const auto& ap : authorization_) {
      if (ap.dry_run) continue;
      bool in_scope = mesh ? ap.ns == options_.root_namespace
                           : ap.ns == w.ns && ap.ns != options_.root_namespace;
      if (in_scope && selects(ap.selector, w.labels)) out.push_back(&ap);
    }
  }
  return out;
}

}  // namespace sluice::policy
