// AuthorizationPolicy and PeerAuthentication objects into the model, through
// the shared parser (common/policy/parse.h). Used by both sources: local
// mode's YAML documents and the Kubernetes API's JSON objects.
#pragma once

#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>
#include <string>

#include "controlplane/model/store.h"
#include "sluice/common/result.h"

namespace sluice::controlplane::model {

// An AuthorizationPolicy or PeerAuthentication of an accepted apiVersion.
bool isPolicy(const YAML::Node& doc);
bool isPolicyKind(const std::string& kind);

// "AuthorizationPolicy ns/name" from the document's metadata (the same key
// objectKey gives its JSON form); "" when kind or name is not a string.
std::string policyKey(const YAML::Node& doc);

// Parses one policy and appends it to `into`. The error names the object and
// the field (parse.h's message).
Result<void> addPolicy(const YAML::Node& doc, Objects& into);
// The same for the JSON form (the Kubernetes API, and local mode's documents
// that isPolicy did not take): JSON is YAML, and its quoted strings stay
// strings, so the parser's type checks hold. A kind of the same name in
// another API group is ignored, as other kinds are.
Result<void> addPolicy(const nlohmann::json& doc, Objects& into);

// A refused policy with no good version to keep: its fail-closed stand-in
// (common/policy/stand_in.h), appended to `into`; none for a document that
// has none (AUDIT, dry-run, targetRef, no readable name and namespace).
void addStandIn(const YAML::Node& doc, const std::string& why, Objects& into);
void addStandIn(const nlohmann::json& doc, const std::string& why, Objects& into);

}  // namespace sluice::controlplane::model
