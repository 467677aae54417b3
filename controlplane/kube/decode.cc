#include "controlplane/kube/decode.h"

#include <nlohmann/json.hpp>

#include "controlplane/model/objects.h"

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

}  // namespace

Result<ListPage> decodeListPage(std::string_view body, const std::string& kind) {
  auto j = json::parse(body, nullptr, false);
  if (!j.is_object() || !j.contains("items") || !j["items"].is_array())
    return fail("the response is not a list");
  ListPage page;
  for (auto& item : j["items"]) {
    if (!item.is_object()) continue;
    item["kind"] = kind;  // list items carry no kind
    model::Objects one;
    auto added = model::addObject(item, one, kind);
    if (!added) {
      page.skipped.push_back(added.error().describe());
      continue;
    }
    page.objects[model::objectKey(item)] = std::move(one);
  }
  page.resource_version = metadataField(j, "resourceVersion");
  page.continue_token = metadataField(j, "continue");
  return page;
}

Result<WatchEvent> decodeWatchEvent(std::string_view line, const std::string& kind) {
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
    out.error = object.dump().substr(0, 200);
    return out;
  }
  out.resource_version = metadataField(object, "resourceVersion");
  if (type != "ADDED" && type != "MODIFIED" && type != "DELETED") return out;
  if (!object.contains("kind")) object["kind"] = kind;
  out.key = model::objectKey(object);
  if (type != "DELETED") {
    auto added = model::addObject(object, out.objects, kind + " watch");
    if (!added) out.invalid = added.error().describe();
  }
  return out;
}

}  // namespace sluice::controlplane::kube
