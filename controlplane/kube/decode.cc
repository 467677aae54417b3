#include "controlplane/kube/decode.h"

#include <nlohmann/json.hpp>

#include "controlplane/model/objects.h"
#include "controlplane/model/policies.h"
#include "sluice/common/json_text.h"

namespace sluice::controlplane::kube {

using json = nlohmann::json;

namespace {

// metadata.<field> of an object or list when it is a string, else "" (a
// malformed response never throws).
std::string metadataField(const json& obj, const char* field) {
  auto meta = obj.find("metadata");
  if (meta == obj.end() || !meta->is_object()) return "";
  auto v = meta->find(field);
  return v != meta->end() && v->is_string() ? v->get<std::string>() : "";
}

// The object's Accepted condition, for the policy kinds.
std::optional<StatusWrite> policyStatus(const std::string& kind, const json& object,
                                        const Result<void>& added, const model::Objects& one) {
  if (!model::isPolicyKind(kind)) return std::nullopt;
  std::vector<std::string> warnings;
  for (const auto& p : one.authorization_policies) warnings = p.warnings;
  for (const auto& p : one.peer_authentications) warnings = p.warnings;
  return acceptedStatus(object, added ? "" : added.error().describe(), warnings);
}

}  // namespace

Result<ListPage> decodeListPage(std::string_view body, const std::string& kind,
                                const std::string& api_version) {
  auto j = json::parse(body, nullptr, false);
  if (!j.is_object() || !j.contains("items") || !j["items"].is_array())
    return fail("the response is not a list");
  ListPage page;
  for (auto& item : j["items"]) {
    if (!item.is_object()) continue;
    item["kind"] = kind;  // items of built-in kinds carry no kind
    if (!api_version.empty() && !item.contains("apiVersion")) item["apiVersion"] = api_version;
    model::Objects one;
    auto added = model::addObject(item, one, kind);
    if (auto w = policyStatus(kind, item, added, one)) page.status_writes.push_back(std::move(*w));
    if (!added) {
      page.skipped.push_back(added.error().describe());
      page.invalid_keys.push_back(model::objectKey(item));
      model::addStandIn(item, added.error().describe(), page.stand_ins[model::objectKey(item)]);
      continue;
    }
    page.objects[model::objectKey(item)] = std::move(one);
  }
  page.resource_version = metadataField(j, "resourceVersion");
  page.continue_token = metadataField(j, "continue");
  return page;
}

Result<WatchEvent> decodeWatchEvent(std::string_view line, const std::string& kind,
                                    const std::string& api_version) {
  auto ev = json::parse(line, nullptr, false);
  // Not json::value(): it throws when the field has another type, and a
  // throw here would end the control plane from inside the HTTP client.
  auto type_it = ev.is_object() ? ev.find("type") : ev.end();
  std::string type = type_it != ev.end() && type_it->is_string() ? type_it->get<std::string>() : "";
  if (type.empty() || !ev.contains("object") || !ev["object"].is_object())
    return fail("not a watch event");
  WatchEvent out;
  out.type = type;
  json& object = ev["object"];
  if (type == "ERROR") {
    auto code = object.find("code");
    out.error_code = code != object.end() && code->is_number_integer() ? code->get<int>() : 0;
    out.error = jsonText(object).substr(0, 200);
    return out;
  }
  out.resource_version = metadataField(object, "resourceVersion");
  if (type != "ADDED" && type != "MODIFIED" && type != "DELETED") return out;
  if (!object.contains("kind")) object["kind"] = kind;
  if (!api_version.empty() && !object.contains("apiVersion")) object["apiVersion"] = api_version;
  out.key = model::objectKey(object);
  if (type != "DELETED") {
    auto added = model::addObject(object, out.objects, kind + " watch");
    if (!added) {
      out.invalid = added.error().describe();
      model::addStandIn(object, out.invalid, out.stand_in);
    }
    out.status_write = policyStatus(kind, object, added, out.objects);
  }
  return out;
}

}  // namespace sluice::controlplane::kube
