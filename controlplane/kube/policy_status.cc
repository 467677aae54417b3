#include "controlplane/kube/policy_status.h"

#include <chrono>
#include <ctime>

#include "sluice/common/fmt.h"
#include "sluice/common/json_text.h"

namespace sluice::controlplane::kube {

using json = nlohmann::json;

namespace {

const json* field(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

std::string stringField(const json& j, const char* key) {
  const json* v = field(j, key);
  return v && v->is_string() ? v->get<std::string>() : "";
}

std::string nowRfc3339() {
  std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&t, &utc);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

// metav1.Condition.message is limited to 32768 bytes.
std::string shorten(std::string s) {
  constexpr size_t kMax = 32000;
  if (s.size() > kMax) s = s.substr(0, kMax) + "...";
  return s;
}

}  // namespace

std::optional<StatusWrite> acceptedStatus(const json& object, const std::string& rejection,
                                          const std::vector<std::string>& warnings) {
  const json* meta = field(object, "metadata");
  if (!meta) return std::nullopt;
  StatusWrite w{stringField(*meta, "namespace"), stringField(*meta, "name"), "", ""};
  if (w.ns.empty() || w.name.empty()) return std::nullopt;  // cannot address it
  const json* gen = field(*meta, "generation");
  int64_t generation = gen && gen->is_number_integer() ? gen->get<int64_t>() : 0;

  std::string status = rejection.empty() ? "True" : "False";
  std::string reason = !rejection.empty() ? "Invalid"
                       : warnings.empty() ? "Accepted"
                                          : "AcceptedWithWarnings";
  std::string message;
  if (!rejection.empty()) {
    message = rejection + "; the last accepted version of this object (if any) stays in force";
  } else if (warnings.empty()) {
    message = "enforced as written";
  } else {
    for (const auto& x : warnings) message += (message.empty() ? "" : "; ") + x;
  }
  message = shorten(std::move(message));

  const json* st = field(object, "status");
  const json* conditions = st ? field(*st, "conditions") : nullptr;
  json kept = json::array();
  std::string since = nowRfc3339();
  if (conditions && conditions->is_array()) {
    for (const auto& c : *conditions) {
      if (stringField(c, "type") != "Accepted") {
        kept.push_back(c);  // someone else's condition: left as it is
        continue;
      }
      const json* og = field(c, "observedGeneration");
      int64_t observed = og && og->is_number_integer() ? og->get<int64_t>() : 0;
      if (stringField(c, "status") == status && stringField(c, "reason") == reason &&
          stringField(c, "message") == message && observed == generation)
        return std::nullopt;
      // The time the status last changed, not the message.
      if (stringField(c, "status") == status && !stringField(c, "lastTransitionTime").empty())
        since = stringField(c, "lastTransitionTime");
    }
  }
  json condition = {{"type", "Accepted"},
                    {"status", status},
                    {"reason", reason},
                    {"message", message},
                    {"lastTransitionTime", since}};
  if (generation > 0) condition["observedGeneration"] = generation;
  kept.push_back(std::move(condition));
  // A merge patch replaces a list whole: the other conditions go back in.
  w.patch = jsonText(json{{"status", {{"conditions", std::move(kept)}}}});
  w.summary = fmt::format("Accepted={} ({}): {}", status, reason, message);
  return w;
}

}  // namespace sluice::controlplane::kube
