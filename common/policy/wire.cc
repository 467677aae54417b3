#include "common/policy/wire.h"

#include <algorithm>

#include "sluice/common/fmt.h"

namespace sluice::policy {
namespace {

template <typename Repeated>
std::vector<std::string> strings(const Repeated& r) {
  return {r.begin(), r.end()};
}

template <typename Repeated>
void put(const std::vector<std::string>& in, Repeated* out) {
  for (const auto& s : in) out->Add(std::string(s));
}

template <typename Map>
LabelMap labels(const Map& m) {
  LabelMap out(m.begin(), m.end());
  std::sort(out.begin(), out.end());
  return out;
}

Result<MtlsMode> mode(const std::string& text, const std::string& object) {
  for (auto m : {MtlsMode::kUnset, MtlsMode::kPermissive, MtlsMode::kStrict, MtlsMode::kDisable})
    if (text == toString(m)) return m;
  if (text.empty()) return MtlsMode::kUnset;
  return fail(
      fmt::format("PeerAuthentication {}: unknown mTLS mode \"{}\" (this agent knows UNSET, "
                  "PERMISSIVE, STRICT, DISABLE; upgrade the agent)",
                  object, text));
}

}  // namespace

void toProto(const AuthorizationPolicy& in, api::v1::AuthorizationPolicy* out) {
  out->set_namespace_(in.ns);
  out->set_name(in.name);
  out->set_created(in.created);
  for (const auto& [k, v] : in.selector) (*out->mutable_selector())[k] = v;
  out->set_action(toString(in.action));
  for (const auto& rule : in.rules) {
    auto* r = out->add_rules();
    for (const auto& s : rule.from) {
      auto* f = r->add_from();
      put(s.principals, f->mutable_principals());
      put(s.not_principals, f->mutable_not_principals());
      put(s.namespaces, f->mutable_namespaces());
      put(s.not_namespaces, f->mutable_not_namespaces());
      put(s.service_accounts, f->mutable_service_accounts());
      put(s.not_service_accounts, f->mutable_not_service_accounts());
      put(s.ip_blocks, f->mutable_ip_blocks());
      put(s.not_ip_blocks, f->mutable_not_ip_blocks());
      put(s.l7_fields, f->mutable_l7_fields());
    }
    for (const auto& o : rule.to) {
      auto* t = r->add_to();
      put(o.ports, t->mutable_ports());
      put(o.not_ports, t->mutable_not_ports());
      put(o.l7_fields, t->mutable_l7_fields());
    }
    for (const auto& c : rule.when) {
      auto* w = r->add_when();
      w->set_key(c.key);
      put(c.values, w->mutable_values());
      put(c.not_values, w->mutable_not_values());
    }
  }
  out->set_dry_run(in.dry_run);
  put(in.warnings, out->mutable_warnings());
}

void toProto(const PeerAuthentication& in, api::v1::PeerAuthentication* out) {
  out->set_namespace_(in.ns);
  out->set_name(in.name);
  out->set_created(in.created);
  for (const auto& [k, v] : in.selector) (*out->mutable_selector())[k] = v;
  out->set_mode(toString(in.mode));
  for (const auto& [port, m] : in.port_level) {
    auto* p = out->add_port_level();
    p->set_port(port);
    p->set_mode(toString(m));
  }
  put(in.warnings, out->mutable_warnings());
}

api::v1::PolicySet toProto(std::span<const AuthorizationPolicy> authorization,
                           std::span<const PeerAuthentication> peer) {
  api::v1::PolicySet out;
  for (const auto& a : authorization) toProto(a, out.add_authorization());
  for (const auto& p : peer) toProto(p, out.add_peer());
  return out;
}

Result<AuthorizationPolicy> fromProto(const api::v1::AuthorizationPolicy& in) {
  AuthorizationPolicy out;
  out.ns = in.namespace_();
  out.name = in.name();
  out.created = in.created();
  out.selector = labels(in.selector());
  if (in.action() == "ALLOW") {
    out.action = Action::kAllow;
  } else if (in.action() == "DENY") {
    out.action = Action::kDeny;
  } else if (in.action() == "AUDIT") {
    out.action = Action::kAudit;
  } else {
    return fail(
        fmt::format("AuthorizationPolicy {}/{}: unknown action \"{}\" (this agent knows "
                    "ALLOW, DENY, AUDIT; upgrade the agent)",
                    out.ns, out.name, in.action()));
  }
  for (const auto& r : in.rules()) {
    Rule rule;
    for (const auto& f : r.from()) {
      Source s;
      s.principals = strings(f.principals());
      s.not_principals = strings(f.not_principals());
      s.namespaces = strings(f.namespaces());
      s.not_namespaces = strings(f.not_namespaces());
      s.service_accounts = strings(f.service_accounts());
      s.not_service_accounts = strings(f.not_service_accounts());
      s.ip_blocks = strings(f.ip_blocks());
      s.not_ip_blocks = strings(f.not_ip_blocks());
      s.l7_fields = strings(f.l7_fields());
      rule.from.push_back(std::move(s));
    }
    for (const auto& t : r.to()) {
      Operation o;
      o.ports = strings(t.ports());
      o.not_ports = strings(t.not_ports());
      o.l7_fields = strings(t.l7_fields());
      rule.to.push_back(std::move(o));
    }
    for (const auto& w : r.when())
      rule.when.push_back(Condition{w.key(), strings(w.values()), strings(w.not_values())});
    out.rules.push_back(std::move(rule));
  }
  out.dry_run = in.dry_run();
  out.warnings = strings(in.warnings());
  return out;
}

Result<PeerAuthentication> fromProto(const api::v1::PeerAuthentication& in) {
  PeerAuthentication out;
  out.ns = in.namespace_();
  out.name = in.name();
  out.created = in.created();
  out.selector = labels(in.selector());
  const auto object = fmt::format("{}/{}", out.ns, out.name);
  auto m = mode(in.mode(), object);
  if (!m) return tl::unexpected(m.error());
  out.mode = *m;
  for (const auto& p : in.port_level()) {
    if (p.port() == 0 || p.port() > 65535)
      return fail(fmt::format("PeerAuthentication {}: portLevelMtls port {} is out of range",
                              object, p.port()));
    auto pm = mode(p.mode(), object);
    if (!pm) return tl::unexpected(pm.error());
    out.port_level.emplace_back(static_cast<uint16_t>(p.port()), *pm);
  }
  std::sort(out.port_level.begin(), out.port_level.end());
  out.warnings = strings(in.warnings());
  return out;
}

Result<std::shared_ptr<const PolicySet>> buildFromProto(const api::v1::PolicySet& in,
                                                        PolicySet::Options options) {
  std::vector<AuthorizationPolicy> authorization;
  std::vector<PeerAuthentication> peer;
  authorization.reserve(static_cast<size_t>(in.authorization_size()));
  for (const auto& a : in.authorization()) {
    auto p = fromProto(a);
    if (!p) return tl::unexpected(p.error());
    authorization.push_back(std::move(*p));
  }
  for (const auto& x : in.peer()) {
    auto p = fromProto(x);
    if (!p) return tl::unexpected(p.error());
    peer.push_back(std::move(*p));
  }
  return PolicySet::build(std::move(authorization), std::move(peer), std::move(options));
}

}  // namespace sluice::policy
