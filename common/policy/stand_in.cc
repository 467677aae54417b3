#include "common/policy/stand_in.h"

#include <algorithm>

#include "common/policy/parse.h"
#include "sluice/common/fmt.h"
#include "sluice/common/k8s_names.h"

namespace sluice::policy {

namespace {

bool scalar(const YAML::Node& n) { return n.IsDefined() && n.IsScalar(); }

// Name, namespace and selector, as far as they read; false without a usable
// name and namespace.
template <typename Policy>
bool readScope(const YAML::Node& object, Policy& p, bool& whole_namespace) {
  if (!object.IsDefined() || !object.IsMap()) return false;
  const YAML::Node meta = object["metadata"];
  if (!meta.IsDefined() || !meta.IsMap() || !scalar(meta["name"]) || !scalar(meta["namespace"]))
    return false;
  p.name = meta["name"].Scalar();
  p.ns = meta["namespace"].Scalar();
  if (p.name.empty() || !isDnsName(p.ns, 63, false)) return false;
  p.ns = scopeNamespace(object, p.ns);
  if (scalar(meta["creationTimestamp"])) p.created = meta["creationTimestamp"].Scalar();
  whole_namespace = false;
  const YAML::Node spec = object["spec"];
  const YAML::Node selector = spec.IsDefined() && spec.IsMap() ? spec["selector"] : YAML::Node();
  if (!selector.IsDefined() || selector.IsNull()) return true;
  const YAML::Node labels = selector.IsMap() ? selector["matchLabels"] : YAML::Node();
  bool readable = labels.IsDefined() && labels.IsMap();
  if (readable)
    for (const auto& kv : labels) readable = readable && scalar(kv.first) && scalar(kv.second);
  if (!readable) {
    whole_namespace = true;
    return true;
  }
  for (const auto& kv : labels) p.selector.emplace_back(kv.first.Scalar(), kv.second.Scalar());
  std::sort(p.selector.begin(), p.selector.end());
  return true;
}

std::string scopeText(const std::string& ns, bool whole_namespace, bool has_selector) {
  if (whole_namespace)
    return "every workload of namespace " + ns + " (its selector cannot be read)";
  return has_selector ? "the workloads it selects" : "every workload of namespace " + ns;
}

}  // namespace

std::optional<AuthorizationPolicy> standInAuthorizationPolicy(const YAML::Node& object,
                                                              const std::string& why) {
  AuthorizationPolicy p;
  bool whole_namespace = false;
  if (!readScope(object, p, whole_namespace)) return std::nullopt;
  if (dryRunRequested(object["metadata"])) return std::nullopt;
  const YAML::Node spec = object["spec"];
  if (spec.IsDefined() && spec.IsMap() &&
      (spec["targetRef"].IsDefined() || spec["targetRefs"].IsDefined()))
    return std::nullopt;
  const YAML::Node action =
      spec.IsDefined() && spec.IsMap() ? spec["action"] : YAML::Node(YAML::NodeType::Undefined);
  std::string a = scalar(action) ? action.Scalar() : action.IsDefined() ? "?" : "ALLOW";
  if (a == "AUDIT") return std::nullopt;
  std::string what;
  if (a == "ALLOW") {
    p.action = Action::kAllow;  // no rules: matches nothing
    what = "an ALLOW that allows nothing";
  } else {
    p.action = Action::kDeny;
    p.rules.emplace_back();  // an empty rule matches everything
    what = "a DENY of everything";
  }
  p.warnings.push_back(fmt::format(
      "refused ({}) and no good version of it is known: enforced as {} for {} until it is fixed",
      why, what, scopeText(p.ns, whole_namespace, !p.selector.empty())));
  return p;
}

std::optional<PeerAuthentication> standInPeerAuthentication(const YAML::Node& object,
                                                            const std::string& why) {
  PeerAuthentication p;
  bool whole_namespace = false;
  if (!readScope(object, p, whole_namespace)) return std::nullopt;
  p.mode = MtlsMode::kStrict;
  p.warnings.push_back(fmt::format(
      "refused ({}) and no good version of it is known: enforced as STRICT for {} until it is "
      "fixed",
      why, scopeText(p.ns, whole_namespace, !p.selector.empty())));
  return p;
}

}  // namespace sluice::policy
