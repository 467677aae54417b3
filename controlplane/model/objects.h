// Kubernetes objects (Namespace, Pod, Service, EndpointSlice, and the
// policies through model/policies.h) from their JSON
// form into the model. One parser for both sources: the Kubernetes API
// (JSON) and local mode's YAML files (converted to JSON first). Errors name
// the object and the field.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "controlplane/model/store.h"
#include "sluice/common/result.h"

namespace sluice::controlplane::model {

// The kinds the model uses; other kinds are ignored by addObject.
bool knownKind(const std::string& kind);

// Parses one object and appends it to `into`. `ctx` prefixes error messages
// (e.g. "document 3"). Objects of unknown kinds are skipped (returns ok).
Result<void> addObject(const nlohmann::json& obj, Objects& into, const std::string& ctx);

// The key a source uses to replace / delete an object: "Kind ns/name"
// (Namespace: "Namespace name"; Pod: "Pod <uid>").
std::string objectKey(const nlohmann::json& obj);

}  // namespace sluice::controlplane::model
