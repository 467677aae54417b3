#include "common/policy/parse.h"

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <map>
#include <set>

#include "common/policy/match.h"
#include "sluice/common/fmt.h"
#include "sluice/common/k8s_names.h"
#include "sluice/common/suggest.h"

namespace sluice::policy {

namespace {

constexpr const char* kApiVersions[] = {"security.sluice.dev/v1", "security.istio.io/v1",
                                        "security.istio.io/v1beta1"};

bool acceptedApiVersion(const std::string& v) {
  return std::find(std::begin(kApiVersions), std::end(kApiVersions), v) != std::end(kApiVersions);
}

// yaml-cpp: a missing key of a const node is an invalid node that throws on
// anything but IsDefined(); these never throw.
bool absent(const YAML::Node& n) { return !n.IsDefined() || n.IsNull(); }
bool scalar(const YAML::Node& n) { return n.IsDefined() && n.IsScalar(); }

// A plain (unquoted) scalar that YAML's core schema reads as something other
// than a string: the Kubernetes API server refuses it for a string field.
bool plainNonString(const YAML::Node& n) {
  if (n.Tag() == "!") return false;  // quoted
  const std::string& v = n.Scalar();
  static const std::set<std::string> kWords = {"true",  "True", "TRUE", "false", "False",
                                               "FALSE", "null", "Null", "NULL",  "~"};
  if (kWords.count(v)) return true;
  // Integers (decimal, 0x, 0o) and floats.
  size_t i = (!v.empty() && (v[0] == '-' || v[0] == '+')) ? 1 : 0;
  if (v.size() > i + 2 && v[i] == '0' && (v[i + 1] == 'x' || v[i + 1] == 'o')) return true;
  bool digits = false, dot = false, exp = false;
  for (; i < v.size(); ++i) {
    char c = v[i];
    if (std::isdigit(static_cast<unsigned char>(c))) {
      digits = true;
    } else if (c == '.' && !dot && !exp) {
      dot = true;
    } else if ((c == 'e' || c == 'E') && digits && !exp) {
      exp = true;
      if (i + 1 < v.size() && (v[i + 1] == '-' || v[i + 1] == '+')) ++i;
    } else {
      return false;
    }
  }
  return digits;
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

using Fields = std::initializer_list<const char*>;
// Fields written one level too high or too low, and where they belong.
const std::map<std::string, std::string>& misplaced() {
  static const std::map<std::string, std::string> m = {
      {"from", "spec.rules[].from"},
      {"to", "spec.rules[].to"},
      {"when", "spec.rules[].when"},
      {"source", "spec.rules[].from[].source"},
      {"operation", "spec.rules[].to[].operation"},
      {"principals", "spec.rules[].from[].source.principals"},
      {"namespaces", "spec.rules[].from[].source.namespaces"},
      {"ipBlocks", "spec.rules[].from[].source.ipBlocks"},
      {"serviceAccounts", "spec.rules[].from[].source.serviceAccounts"},
      {"ports", "spec.rules[].to[].operation.ports"},
      {"matchLabels", "spec.selector.matchLabels"},
      {"mode", "spec.mtls.mode"},
  };
  return m;
}

class Parser {
 public:
  explicit Parser(const char* kind) : kind_(kind) {}

  tl::unexpected<Error> err(const std::string& path, const std::string& msg) const {
    std::string who = name_.empty() ? kind_ : fmt::format("{} {}/{}", kind_, ns_, name_);
    return fail(path.empty() ? fmt::format("{}: {}", who, msg)
                             : fmt::format("{}: {}: {}", who, path, msg));
  }

  // yaml-cpp keeps both of a key written twice and reads the first;
  // kubectl refuses the object.
  Result<void> uniqueKeys(const YAML::Node& n, const std::string& path) const {
    std::set<std::string> seen;
    for (const auto& kv : n)
      if (kv.first.IsScalar() && !seen.insert(kv.first.Scalar()).second)
        return err(path, fmt::format("field \"{}\" appears twice: keep one", kv.first.Scalar()));
    return {};
  }

  // A mapping whose keys are all in `allowed`.
  Result<void> mapping(const YAML::Node& n, const std::string& path, Fields allowed) const {
    if (!n.IsMap()) return err(path, "must be a mapping");
    if (auto ok = uniqueKeys(n, path); !ok) return ok;
    for (const auto& kv : n) {
      if (!kv.first.IsScalar()) return err(path, "keys must be strings");
      const std::string& key = kv.first.Scalar();
      if (std::any_of(allowed.begin(), allowed.end(), [&](const char* f) { return key == f; }))
        continue;
      std::string msg = fmt::format("unknown field \"{}\"", key);
      if (const char* best = closestWord(key, allowed)) {
        msg += fmt::format(" (did you mean \"{}\"?)", best);
      } else if (auto it = misplaced().find(key); it != misplaced().end()) {
        msg += fmt::format(" (it belongs at {})", it->second);
      } else {
        std::vector<std::string> names;
        for (const char* f : allowed) names.push_back(f);
        msg += fmt::format("; the fields here are {}", join(names));
      }
      return err(path, msg);
    }
    return {};
  }

  Result<std::string> string(const YAML::Node& n, const std::string& path) const {
    if (!n.IsScalar()) return err(path, "must be a string");
    if (plainNonString(n))
      return err(path, fmt::format("must be a string: write \"{}\" in quotes", n.Scalar()));
    return n.Scalar();
  }

  // A list of non-empty strings; absent or null: empty.
  Result<std::vector<std::string>> strings(const YAML::Node& n, const std::string& path) const {
    std::vector<std::string> out;
    if (absent(n)) return out;
    if (!n.IsSequence()) {
      if (n.IsScalar()) return err(path, fmt::format("must be a list: write [\"{}\"]", n.Scalar()));
      return err(path, "must be a list of strings");
    }
    for (size_t i = 0; i < n.size(); ++i) {
      std::string p = fmt::format("{}[{}]", path, i);
      auto s = string(n[i], p);
      if (!s) return tl::unexpected(s.error());
      if (s->empty()) return err(p, "empty value not allowed");
      out.push_back(std::move(*s));
    }
    return out;
  }

  Result<void> metadata(const YAML::Node& obj) {
    if (!obj.IsDefined() || !obj.IsMap()) return err("", "not a mapping");
    const YAML::Node kind = obj["kind"];
    const YAML::Node meta = obj["metadata"];
    if (!absent(meta) && meta.IsMap()) {
      // Name the object as soon as possible, even if the rest is bad.
      if (scalar(meta["name"])) name_ = meta["name"].Scalar();
      if (scalar(meta["namespace"])) ns_ = meta["namespace"].Scalar();
    }
    if (!scalar(kind) || kind.Scalar() != kind_)
      return err("kind", fmt::format("expected {}", kind_));
    const YAML::Node api = obj["apiVersion"];
    if (!scalar(api) || !acceptedApiVersion(api.Scalar()))
      return err("apiVersion",
                 fmt::format("\"{}\" is not accepted; use {}", scalar(api) ? api.Scalar() : "",
                             join({kApiVersions[0], kApiVersions[1], kApiVersions[2]}, " or ")));
    if (auto ok = mapping(obj, "", {"apiVersion", "kind", "metadata", "spec", "status"}); !ok)
      return ok;
    if (absent(meta) || !meta.IsMap()) return err("metadata", "must be a mapping");
    if (auto ok = uniqueKeys(meta, "metadata"); !ok) return ok;
    auto name = absent(meta["name"]) ? Result<std::string>(std::string())
                                     : string(meta["name"], "metadata.name");
    if (!name) return tl::unexpected(name.error());
    if (name->empty()) return err("metadata.name", "is required");
    if (!isDnsName(*name, 253, true))
      return err("metadata.name",
                 fmt::format("\"{}\" is not a valid name: lower-case letters, digits, '-' and "
                             "'.', starting and ending with a letter or digit (at most 253)",
                             *name));
    auto ns = absent(meta["namespace"]) ? Result<std::string>(std::string())
                                        : string(meta["namespace"], "metadata.namespace");
    if (!ns) return tl::unexpected(ns.error());
    if (ns->empty()) return err("metadata.namespace", "is required");
    if (!isDnsName(*ns, 63, false))
      return err("metadata.namespace",
                 fmt::format("\"{}\" is not a valid namespace: lower-case letters, digits and "
                             "'-', starting and ending with a letter or digit (at most 63)",
                             *ns));
    ns_ = scopeNamespace(obj, *ns);
    written_ns_ = *ns;
    if (ns_ != *ns)
      moved_ = fmt::format(
          "read from Istio's root namespace {} as Sluice's root namespace {} (mesh-wide scope, as "
          "in Istio)",
          *ns, ns_);
    if (scalar(meta["creationTimestamp"])) created_ = meta["creationTimestamp"].Scalar();
    dry_run_ = dryRunRequested(meta);
    return {};
  }

  Result<LabelMap> selector(const YAML::Node& spec, std::vector<std::string>& warnings) const {
    LabelMap out;
    const YAML::Node sel = spec["selector"];
    if (absent(sel)) return out;
    if (sel.IsMap())
      for (const auto& kv : sel)
        if (kv.first.IsScalar() && kv.first.Scalar() != "matchLabels")
          return err("spec.selector",
                     fmt::format("unknown field \"{}\": labels go under matchLabels "
                                 "(selector: {{matchLabels: {{{}: ...}}}})",
                                 kv.first.Scalar(), kv.first.Scalar()));
    if (auto ok = mapping(sel, "spec.selector", {"matchLabels"}); !ok)
      return tl::unexpected(ok.error());
    const YAML::Node ml = sel["matchLabels"];
    if (!absent(ml)) {
      if (!ml.IsMap()) return err("spec.selector.matchLabels", "must be a mapping of label: value");
      if (auto ok = uniqueKeys(ml, "spec.selector.matchLabels"); !ok)
        return tl::unexpected(ok.error());
      for (const auto& kv : ml) {
        std::string key = kv.first.Scalar();
        std::string p = "spec.selector.matchLabels." + key;
        auto v = string(kv.second, p);
        if (!v) return tl::unexpected(v.error());
        if (key.empty()) return err("spec.selector.matchLabels", "empty label key");
        if (key.find('*') != std::string::npos || v->find('*') != std::string::npos)
          return err(p, "wildcards are not supported in a selector");
        out.emplace_back(key, std::move(*v));
      }
    }
    if (out.empty())
      warnings.push_back(
          "the selector has no labels, so the policy applies to the whole namespace; remove the "
          "selector to say so");
    std::sort(out.begin(), out.end());
    return out;
  }

  // --- AuthorizationPolicy ---

  Result<void> ipValues(const std::vector<std::string>& values, const std::string& path) const {
    for (size_t i = 0; i < values.size(); ++i) {
      auto b = parseIpBlock(values[i]);
      if (!b)
        return err(
            fmt::format("{}[{}]", path, i),
            fmt::format("\"{}\" is not an IP address or CIDR block (like 10.1.0.0/16)", values[i]));
    }
    return {};
  }

  Result<void> portValues(const std::vector<std::string>& values, const std::string& path) const {
    for (size_t i = 0; i < values.size(); ++i)
      if (!parsePort(values[i]))
        return err(fmt::format("{}[{}]", path, i),
                   fmt::format("\"{}\" is not a port number (0-65535)", values[i]));
    return {};
  }

  Result<void> accountValues(const std::vector<std::string>& values,
                             const std::string& path) const {
    for (size_t i = 0; i < values.size(); ++i) {
      const std::string& v = values[i];
      auto slash = v.find('/');
      if (v.find('*') != std::string::npos ||
          (slash != std::string::npos &&
           (slash == 0 || slash + 1 == v.size() || v.find('/', slash + 1) != std::string::npos)))
        return err(fmt::format("{}[{}]", path, i),
                   fmt::format("\"{}\" is not a service account: write NAMESPACE/NAME, or NAME "
                               "for one in the policy's namespace (no wildcards)",
                               v));
    }
    return {};
  }

  void principalWarnings(const std::vector<std::string>& values, const std::string& path,
                         std::vector<std::string>& warnings) const {
    for (const auto& v : values)
      if (v.starts_with("spiffe://"))
        warnings.push_back(
            fmt::format("{}: \"{}\" never matches: principals are written without spiffe:// "
                        "(TRUST_DOMAIN/ns/NAMESPACE/sa/NAME)",
                        path, v));
  }

  Result<Source> source(const YAML::Node& n, const std::string& path,
                        std::vector<std::string>& warnings) const {
    if (absent(n)) return err(path, "is required (who the rule is about)");
    if (auto ok = mapping(n, path,
                          {"principals", "notPrincipals", "requestPrincipals",
                           "notRequestPrincipals", "namespaces", "notNamespaces", "serviceAccounts",
                           "notServiceAccounts", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                           "notRemoteIpBlocks", "trustDomains", "notTrustDomains"});
        !ok)
      return tl::unexpected(ok.error());
    Source s;
    struct L4 {
      const char* field;
      std::vector<std::string>* into;
    } l4[] = {{"principals", &s.principals},
              {"notPrincipals", &s.not_principals},
              {"namespaces", &s.namespaces},
              {"notNamespaces", &s.not_namespaces},
              {"serviceAccounts", &s.service_accounts},
              {"notServiceAccounts", &s.not_service_accounts},
              {"ipBlocks", &s.ip_blocks},
              {"notIpBlocks", &s.not_ip_blocks}};
    bool any = false;
    for (auto& f : l4) {
      auto v = strings(n[f.field], path + "." + f.field);
      if (!v) return tl::unexpected(v.error());
      any |= !v->empty();
      *f.into = std::move(*v);
    }
    for (const char* f : {"requestPrincipals", "notRequestPrincipals", "remoteIpBlocks",
                          "notRemoteIpBlocks", "trustDomains", "notTrustDomains"}) {
      auto v = strings(n[f], path + "." + f);
      if (!v) return tl::unexpected(v.error());
      if (v->empty()) continue;
      any = true;
      s.l7_fields.push_back(f);
      if (std::string_view(f).ends_with("IpBlocks")) {
        if (auto ok = ipValues(*v, path + "." + f); !ok) return tl::unexpected(ok.error());
      }
    }
    if (!any) return err(path, "must not be empty: set principals, namespaces, ipBlocks...");
    if (!s.service_accounts.empty() || !s.not_service_accounts.empty()) {
      if (!s.principals.empty() || !s.not_principals.empty() || !s.namespaces.empty() ||
          !s.not_namespaces.empty())
        return err(path, "cannot set serviceAccounts with namespaces or principals");
    }
    if (auto ok = ipValues(s.ip_blocks, path + ".ipBlocks"); !ok) return tl::unexpected(ok.error());
    if (auto ok = ipValues(s.not_ip_blocks, path + ".notIpBlocks"); !ok)
      return tl::unexpected(ok.error());
    if (auto ok = accountValues(s.service_accounts, path + ".serviceAccounts"); !ok)
      return tl::unexpected(ok.error());
    if (auto ok = accountValues(s.not_service_accounts, path + ".notServiceAccounts"); !ok)
      return tl::unexpected(ok.error());
    // A bare name is a service account of the policy's own namespace (istiod): the one it
    // was written in, also when that is Istio's root namespace read as Sluice's.
    if (ns_ != written_ns_)
      for (auto* list : {&s.service_accounts, &s.not_service_accounts})
        for (auto& v : *list)
          if (v.find('/') == std::string::npos) v = written_ns_ + "/" + v;
    principalWarnings(s.principals, path + ".principals", warnings);
    principalWarnings(s.not_principals, path + ".notPrincipals", warnings);
    return s;
  }

  Result<Operation> operation(const YAML::Node& n, const std::string& path) const {
    if (absent(n)) return err(path, "is required (which ports the rule is about)");
    if (auto ok = mapping(n, path,
                          {"ports", "notPorts", "hosts", "notHosts", "methods", "notMethods",
                           "paths", "notPaths"});
        !ok)
      return tl::unexpected(ok.error());
    Operation o;
    for (auto [f, into] : {std::pair{"ports", &o.ports}, std::pair{"notPorts", &o.not_ports}}) {
      auto v = strings(n[f], path + "." + f);
      if (!v) return tl::unexpected(v.error());
      if (auto ok = portValues(*v, path + "." + f); !ok) return tl::unexpected(ok.error());
      *into = std::move(*v);
    }
    for (const char* f : {"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"}) {
      auto v = strings(n[f], path + "." + f);
      if (!v) return tl::unexpected(v.error());
      if (!v->empty()) o.l7_fields.push_back(f);
    }
    if (o.ports.empty() && o.not_ports.empty() && o.l7_fields.empty())
      return err(path, "must not be empty: set ports or notPorts");
    return o;
  }

  // Istio's attribute names (pkg/config/security ValidateAttribute).
  Result<void> conditionKey(const std::string& key, const Condition& c,
                            const std::string& path) const {
    auto mapKey = [&](const char* prefix) -> Result<void> {
      size_t open = key.find('[');
      if (key.starts_with(prefix) && key.ends_with("]") && open != std::string::npos &&
          open + 2 < key.size())
        return {};
      return err(path + ".key", fmt::format("bad key \"{}\": should have the form a[b]", key));
    };
    auto values = [&](auto check) -> Result<void> {
      if (auto ok = check(c.values, path + ".values"); !ok) return ok;
      return check(c.not_values, path + ".notValues");
    };
    if (key == "source.ip" || key == "destination.ip" || key == "remote.ip")
      return values([&](const auto& v, const std::string& p) { return ipValues(v, p); });
    if (key == "destination.port")
      return values([&](const auto& v, const std::string& p) { return portValues(v, p); });
    if (key == "source.serviceAccount")
      return values([&](const auto& v, const std::string& p) { return accountValues(v, p); });
    if (key == "source.namespace" || key == "source.principal" || key == "request.auth.principal" ||
        key == "request.auth.audiences" || key == "request.auth.presenter" ||
        key == "connection.sni")
      return {};
    if (key.starts_with("request.headers[")) return mapKey("request.headers[");
    if (key.starts_with("request.auth.claims[")) return mapKey("request.auth.claims[");
    if (key.starts_with("experimental.")) return mapKey("experimental.");
    if (key == "destination.namespace")
      return err(path + ".key", "destination.namespace is replaced by metadata.namespace");
    if (key.starts_with("destination.labels"))
      return err(path + ".key", fmt::format("{} is replaced by spec.selector", key));
    if (key == "destination.name" || key == "destination.user")
      return err(path + ".key", fmt::format("{} only existed in v1alpha1", key));
    return err(path + ".key",
               fmt::format("unknown attribute \"{}\"; at L4 the keys are source.ip, "
                           "source.namespace, source.principal, destination.ip, destination.port",
                           key));
  }

  Result<Condition> condition(const YAML::Node& n, const std::string& path) const {
    if (auto ok = mapping(n, path, {"key", "values", "notValues"}); !ok)
      return tl::unexpected(ok.error());
    Condition c;
    if (absent(n["key"])) return err(path + ".key", "is required");
    auto key = string(n["key"], path + ".key");
    if (!key) return tl::unexpected(key.error());
    if (key->empty()) return err(path + ".key", "must not be empty");
    c.key = std::move(*key);
    auto values = strings(n["values"], path + ".values");
    if (!values) return tl::unexpected(values.error());
    auto not_values = strings(n["notValues"], path + ".notValues");
    if (!not_values) return tl::unexpected(not_values.error());
    c.values = std::move(*values);
    c.not_values = std::move(*not_values);
    if (c.values.empty() && c.not_values.empty())
      return err(path,
                 fmt::format("at least one of values or notValues must be set for key {}", c.key));
    if (auto ok = conditionKey(c.key, c, path); !ok) return tl::unexpected(ok.error());
    return c;
  }

  // from / to: absent is fine, an empty list is not (Istio).
  template <typename T, typename Fn>
  Result<std::vector<T>> entries(const YAML::Node& n, const std::string& path, const char* inner,
                                 Fn&& parse) const {
    std::vector<T> out;
    if (absent(n)) return out;
    if (!n.IsSequence() || n.size() == 0)
      return err(path, fmt::format("must be a non-empty list of {{{}: ...}}", inner));
    for (size_t i = 0; i < n.size(); ++i) {
      std::string p = fmt::format("{}[{}]", path, i);
      if (auto ok = mapping(n[i], p, {inner}); !ok) return tl::unexpected(ok.error());
      auto v = parse(n[i][inner], p + "." + inner);
      if (!v) return tl::unexpected(v.error());
      out.push_back(std::move(*v));
    }
    return out;
  }

  Result<Rule> rule(const YAML::Node& n, const std::string& path,
                    std::vector<std::string>& warnings) const {
    if (absent(n)) return err(path, "must be a mapping (write {} for a rule that matches all)");
    if (auto ok = mapping(n, path, {"from", "to", "when"}); !ok) return tl::unexpected(ok.error());
    Rule r;
    auto from = entries<Source>(
        n["from"], path + ".from", "source",
        [&](const YAML::Node& s, const std::string& p) { return source(s, p, warnings); });
    if (!from) return tl::unexpected(from.error());
    r.from = std::move(*from);
    auto to = entries<Operation>(
        n["to"], path + ".to", "operation",
        [&](const YAML::Node& o, const std::string& p) { return operation(o, p); });
    if (!to) return tl::unexpected(to.error());
    r.to = std::move(*to);
    const YAML::Node when = n["when"];
    if (!absent(when)) {
      if (!when.IsSequence()) return err(path + ".when", "must be a list of {key, values}");
      for (size_t i = 0; i < when.size(); ++i) {
        auto c = condition(when[i], fmt::format("{}.when[{}]", path, i));
        if (!c) return tl::unexpected(c.error());
        r.when.push_back(std::move(*c));
      }
    }
    return r;
  }

  static bool hasL4(const Rule& r) {
    for (const auto& s : r.from)
      if (!s.principals.empty() || !s.not_principals.empty() || !s.namespaces.empty() ||
          !s.not_namespaces.empty() || !s.service_accounts.empty() ||
          !s.not_service_accounts.empty() || !s.ip_blocks.empty() || !s.not_ip_blocks.empty())
        return true;
    for (const auto& o : r.to)
      if (!o.ports.empty() || !o.not_ports.empty()) return true;
    for (const auto& c : r.when)
      if (isL4ConditionKey(c.key)) return true;
    return false;
  }

  Result<AuthorizationPolicy> authorizationPolicy(const YAML::Node& obj) {
    if (auto ok = metadata(obj); !ok) return tl::unexpected(ok.error());
    AuthorizationPolicy ap;
    ap.ns = ns_;
    if (!moved_.empty()) ap.warnings.push_back(moved_);
    ap.name = name_;
    ap.created = created_;
    ap.dry_run = dry_run_;
    YAML::Node spec = obj["spec"];
    if (absent(spec)) spec = YAML::Node(YAML::NodeType::Map);
    if (auto ok = mapping(spec, "spec",
                          {"selector", "action", "rules", "provider", "targetRef", "targetRefs"});
        !ok)
      return tl::unexpected(ok.error());
    if (!absent(spec["targetRef"]) || !absent(spec["targetRefs"]))
      return err("spec.targetRef",
                 "is not supported: it attaches the policy to a waypoint or "
                 "gateway, which Sluice does not have; use spec.selector");
    auto sel = selector(spec, ap.warnings);
    if (!sel) return tl::unexpected(sel.error());
    ap.selector = std::move(*sel);

    if (!absent(spec["action"])) {
      auto action = string(spec["action"], "spec.action");
      if (!action) return tl::unexpected(action.error());
      if (*action == "ALLOW") {
        ap.action = Action::kAllow;
      } else if (*action == "DENY") {
        ap.action = Action::kDeny;
      } else if (*action == "AUDIT") {
        ap.action = Action::kAudit;
      } else if (*action == "CUSTOM") {
        return err("spec.action",
                   "CUSTOM (an external authorization service) is not supported by Sluice; "
                   "use ALLOW, DENY or AUDIT");
      } else {
        return err("spec.action",
                   fmt::format("unknown action \"{}\"; use ALLOW, DENY or AUDIT", *action));
      }
    }
    if (!absent(spec["provider"]))
      return err("spec.provider", "only goes with action CUSTOM, which Sluice does not support");

    const YAML::Node rules = spec["rules"];
    if (!absent(rules)) {
      if (!rules.IsSequence()) return err("spec.rules", "must be a list of rules");
      for (size_t i = 0; i < rules.size(); ++i) {
        auto r = rule(rules[i], fmt::format("spec.rules[{}]", i), ap.warnings);
        if (!r) return tl::unexpected(r.error());
        ap.rules.push_back(std::move(*r));
      }
    }
    // Istio's validation: "DENY action without `rules` is meaningless as it
    // will never be triggered". (`rules: []` reads as no rules, as in Istio.)
    if (ap.action == Action::kDeny && ap.rules.empty())
      return err("spec.rules",
                 "a DENY policy without rules never matches; add an empty rule (rules: [{}]) to "
                 "deny every connection");

    for (size_t i = 0; i < ap.rules.size(); ++i) {
      const Rule& r = ap.rules[i];
      if (!r.hasL7()) continue;
      std::string fields = join(r.l7Fields());
      if (ap.action == Action::kDeny)
        ap.warnings.push_back(fmt::format(
            "spec.rules[{}] uses HTTP attributes ({}), which Sluice does not see (it authorizes "
            "connections): in a DENY rule they are ignored, so the rule denies {} (more "
            "restrictive than written)",
            i, fields,
            hasL4(r) ? "every connection that matches its other fields"
                     : "every connection to the workloads in scope"));
      else
        ap.warnings.push_back(fmt::format(
            "spec.rules[{}] uses HTTP attributes ({}), which Sluice does not see (it authorizes "
            "connections): in an {} policy the rule matches nothing (more restrictive than "
            "written)",
            i, fields, toString(ap.action)));
    }
    if (ap.action == Action::kAllow) {
      // ISTIO-SECURITY-2021-004: plaintext has no identity, so it matches
      // every not-form of an identity field.
      std::set<std::string> used;
      for (const auto& r : ap.rules) {
        for (const auto& s : r.from) {
          if (!s.not_principals.empty()) used.insert("notPrincipals");
          if (!s.not_namespaces.empty()) used.insert("notNamespaces");
          if (!s.not_service_accounts.empty()) used.insert("notServiceAccounts");
        }
        for (const auto& c : r.when)
          if (!c.not_values.empty() && (c.key == "source.principal" || c.key == "source.namespace"))
            used.insert(c.key + " notValues");
      }
      if (!used.empty())
        ap.warnings.push_back(fmt::format(
            "{} also match plaintext connections (they have no identity): require mutual TLS "
            "with a STRICT PeerAuthentication, or add principals: [\"*\"] to the rule",
            join({used.begin(), used.end()})));
    }
    if (ap.dry_run)
      ap.warnings.push_back(
          "istio.io/dry-run is set: the policy is listed but not enforced (Sluice has no dry-run "
          "evaluation)");
    return ap;
  }

  // --- PeerAuthentication ---

  Result<MtlsMode> mode(const YAML::Node& n, const std::string& path,
                        std::vector<std::string>& warnings) const {
    if (absent(n)) return MtlsMode::kUnset;
    if (auto ok = mapping(n, path, {"mode"}); !ok) return tl::unexpected(ok.error());
    if (absent(n["mode"])) return MtlsMode::kUnset;
    auto m = string(n["mode"], path + ".mode");
    if (!m) return tl::unexpected(m.error());
    if (*m == "UNSET") return MtlsMode::kUnset;
    if (*m == "PERMISSIVE") return MtlsMode::kPermissive;
    if (*m == "STRICT") return MtlsMode::kStrict;
    if (*m == "DISABLE") {
      warnings.push_back(fmt::format(
          "{}.mode DISABLE is enforced as PERMISSIVE: traffic between enrolled pods always uses "
          "mutual TLS (take the namespace out of the mesh to stop that)",
          path));
      return MtlsMode::kDisable;
    }
    return err(path + ".mode",
               fmt::format("unknown mode \"{}\"; use STRICT, PERMISSIVE or UNSET", *m));
  }

  Result<PeerAuthentication> peerAuthentication(const YAML::Node& obj) {
    if (auto ok = metadata(obj); !ok) return tl::unexpected(ok.error());
    PeerAuthentication pa;
    pa.ns = ns_;
    if (!moved_.empty()) pa.warnings.push_back(moved_);
    pa.name = name_;
    pa.created = created_;
    YAML::Node spec = obj["spec"];
    if (absent(spec)) spec = YAML::Node(YAML::NodeType::Map);
    if (auto ok = mapping(spec, "spec", {"selector", "mtls", "portLevelMtls"}); !ok)
      return tl::unexpected(ok.error());
    auto sel = selector(spec, pa.warnings);
    if (!sel) return tl::unexpected(sel.error());
    pa.selector = std::move(*sel);
    auto m = mode(spec["mtls"], "spec.mtls", pa.warnings);
    if (!m) return tl::unexpected(m.error());
    pa.mode = *m;
    const YAML::Node ports = spec["portLevelMtls"];
    if (ports.IsDefined()) {
      if (!ports.IsMap() || ports.size() == 0)
        return err("spec.portLevelMtls",
                   "must be a mapping of port numbers to {mode: ...} with at least one port");
      if (pa.selector.empty())
        return err("spec.portLevelMtls",
                   "a mesh-wide or namespace-wide PeerAuthentication cannot have port-level "
                   "modes; add a selector");
      for (const auto& kv : ports) {
        std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
        auto port = parsePort(key);
        std::string p = "spec.portLevelMtls." + key;
        if (!port || *port == 0) return err(p, "the key must be a port number (1-65535)");
        auto pm = mode(kv.second, p, pa.warnings);
        if (!pm) return tl::unexpected(pm.error());
        pa.port_level.emplace_back(*port, *pm);
      }
      std::sort(pa.port_level.begin(), pa.port_level.end());
      for (size_t i = 1; i < pa.port_level.size(); ++i)
        if (pa.port_level[i].first == pa.port_level[i - 1].first)
          return err("spec.portLevelMtls",
                     fmt::format("port {} is listed twice", pa.port_level[i].first));
    }
    return pa;
  }

 private:
  const char* kind_;
  std::string ns_, name_, created_;
  std::string moved_;       // why ns_ is not metadata.namespace
  std::string written_ns_;  // metadata.namespace
  bool dry_run_ = false;
};

bool isKind(const YAML::Node& obj, const char* kind) {
  if (!obj.IsDefined() || !obj.IsMap()) return false;
  const YAML::Node k = obj["kind"], a = obj["apiVersion"];
  return scalar(k) && k.Scalar() == kind && scalar(a) &&
         (a.Scalar().starts_with("security.sluice.dev/") ||
          a.Scalar().starts_with("security.istio.io/"));
}

}  // namespace

std::string scopeNamespace(const YAML::Node& object, const std::string& ns) {
  const YAML::Node api = object.IsMap() ? object["apiVersion"] : YAML::Node();
  if (ns == kIstioRootNamespace && scalar(api) && api.Scalar().starts_with("security.istio.io/"))
    return kRootNamespace;
  return ns;
}

bool dryRunRequested(const YAML::Node& meta) {
  if (!meta.IsDefined() || !meta.IsMap()) return false;
  const YAML::Node ann = meta["annotations"];
  if (absent(ann) || !ann.IsMap() || !scalar(ann["istio.io/dry-run"])) return false;
  const std::string& v = ann["istio.io/dry-run"].Scalar();
  return v == "true" || v == "True" || v == "TRUE" || v == "1" || v == "t" || v == "T";
}

bool isAuthorizationPolicy(const YAML::Node& obj) { return isKind(obj, "AuthorizationPolicy"); }
bool isPeerAuthentication(const YAML::Node& obj) { return isKind(obj, "PeerAuthentication"); }

Result<AuthorizationPolicy> parseAuthorizationPolicy(const YAML::Node& object) {
  try {
    return Parser("AuthorizationPolicy").authorizationPolicy(object);
  } catch (const YAML::Exception& e) {  // yaml-cpp throws on conversions it cannot make
    return fail(fmt::format("AuthorizationPolicy: {}", e.what()));
  }
}

Result<PeerAuthentication> parsePeerAuthentication(const YAML::Node& object) {
  try {
    return Parser("PeerAuthentication").peerAuthentication(object);
  } catch (const YAML::Exception& e) {
    return fail(fmt::format("PeerAuthentication: {}", e.what()));
  }
}

}  // namespace sluice::policy
