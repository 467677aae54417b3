#include "common/policy/model.h"

#include <algorithm>

namespace sluice::policy {

const char* toString(Action a) {
  switch (a) {
    case Action::kAllow:
      return "ALLOW";
    case Action::kDeny:
      return "DENY";
    case Action::kAudit:
      return "AUDIT";
  }
  return "?";
}

const char* toString(MtlsMode m) {
  switch (m) {
    case MtlsMode::kUnset:
      return "UNSET";
    case MtlsMode::kPermissive:
      return "PERMISSIVE";
    case MtlsMode::kStrict:
      return "STRICT";
    case MtlsMode::kDisable:
      return "DISABLE";
  }
  return "?";
}

// istiod's l4WhenAttributes (ambient/authorization.go).
bool isL4ConditionKey(const std::string& key) {
  return key == "source.ip" || key == "source.namespace" || key == "source.principal" ||
         key == "destination.ip" || key == "destination.port";
}

bool Rule::hasL7() const {
  for (const auto& s : from)
    if (!s.l7_fields.empty()) return true;
  for (const auto& o : to)
    if (!o.l7_fields.empty()) return true;
  for (const auto& c : when)
    if (!isL4ConditionKey(c.key)) return true;
  return false;
}

std::vector<std::string> Rule::l7Fields() const {
  std::vector<std::string> out;
  for (const auto& s : from) out.insert(out.end(), s.l7_fields.begin(), s.l7_fields.end());
  for (const auto& o : to) out.insert(out.end(), o.l7_fields.begin(), o.l7_fields.end());
  for (const auto& c : when)
    if (!isL4ConditionKey(c.key)) out.push_back(c.key);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace sluice::policy
