#include "controlplane/model/policies.h"

#include "common/policy/parse.h"
#include "common/policy/stand_in.h"
#include "sluice/common/fmt.h"
#include "sluice/common/json_text.h"

namespace sluice::controlplane::model {

bool isPolicyKind(const std::string& kind) {
  return kind == "AuthorizationPolicy" || kind == "PeerAuthentication";
}

bool isPolicy(const YAML::Node& doc) {
  return policy::isAuthorizationPolicy(doc) || policy::isPeerAuthentication(doc);
}

std::string policyKey(const YAML::Node& doc) {
  if (!doc.IsMap()) return "";
  const YAML::Node kind = doc["kind"], meta = doc["metadata"];
  if (!kind.IsDefined() || !kind.IsScalar() || !meta.IsDefined() || !meta.IsMap()) return "";
  const YAML::Node ns = meta["namespace"], name = meta["name"];
  if (!name.IsDefined() || !name.IsScalar()) return "";
  std::string n = ns.IsDefined() && ns.IsScalar() ? ns.Scalar() : "";
  return fmt::format("{} {}/{}", kind.Scalar(), n, name.Scalar());
}

Result<void> addPolicy(const YAML::Node& doc, Objects& into) {
  if (policy::isAuthorizationPolicy(doc)) {
    auto p = policy::parseAuthorizationPolicy(doc);
    if (!p) return tl::unexpected(p.error());
    into.authorization_policies.push_back(std::move(*p));
    return {};
  }
  if (policy::isPeerAuthentication(doc)) {
    auto p = policy::parsePeerAuthentication(doc);
    if (!p) return tl::unexpected(p.error());
    into.peer_authentications.push_back(std::move(*p));
    return {};
  }
  return fail(
      "not a policy: kind must be AuthorizationPolicy or PeerAuthentication and apiVersion "
      "security.sluice.dev/v1 (or security.istio.io/v1, v1beta1)");
}

Result<void> addPolicy(const nlohmann::json& doc, Objects& into) {
  YAML::Node node;
  try {
    node = YAML::Load(jsonText(doc));
  } catch (const YAML::Exception& e) {  // cannot happen for valid JSON; never throw anyway
    return fail(fmt::format("policy object: {}", e.what()));
  }
  if (!isPolicy(node)) return {};  // same kind name, another group: not ours, ignored
  return addPolicy(node, into);
}

void addStandIn(const YAML::Node& doc, const std::string& why, Objects& into) {
  // By kind alone: a policy refused for its apiVersion (a typo in our
  // group) fails closed as one refused for a field does.
  const YAML::Node kind = doc.IsMap() ? doc["kind"] : YAML::Node();
  std::string k = kind.IsDefined() && kind.IsScalar() ? kind.Scalar() : "";
  if (k == "AuthorizationPolicy") {
    if (auto p = policy::standInAuthorizationPolicy(doc, why))
      into.authorization_policies.push_back(std::move(*p));
  } else if (k == "PeerAuthentication") {
    if (auto p = policy::standInPeerAuthentication(doc, why))
      into.peer_authentications.push_back(std::move(*p));
  }
}

void addStandIn(const nlohmann::json& doc, const std::string& why, Objects& into) {
  try {
    addStandIn(YAML::Load(jsonText(doc)), why, into);
  } catch (const YAML::Exception&) {  // cannot happen for valid JSON; never throw anyway
  }
}

}  // namespace sluice::controlplane::model
