#include "sluice/common/cni_protocol.h"

#include <nlohmann/json.hpp>

#include "sluice/common/json_text.h"
#include "sluice/common/k8s_names.h"

namespace sluice::cni {

using nlohmann::json;

std::string encode(const CniRequest& r) {
  return jsonText(json{{"command", r.command},
                       {"container_id", r.container_id},
                       {"netns", r.netns},
                       {"ifname", r.ifname},
                       {"pod_namespace", r.pod_namespace},
                       {"pod_name", r.pod_name},
                       {"pod_uid", r.pod_uid},
                       {"ips", r.ips}}) +
         "\n";
}

std::string encode(const CniReply& r) {
  json j{{"ok", r.ok}, {"enrolled", r.enrolled}, {"error", r.error}, {"details", r.details}};
  if (r.code != 0) j["code"] = r.code;
  return jsonText(j) + "\n";
}

namespace {
Result<json> parseObject(const std::string& line) {
  if (line.size() > kMaxMessageBytes) return fail("message larger than 64 KiB");
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return fail("message is not valid JSON");
  if (!j.is_object()) return fail("message is not a JSON object");
  return j;
}

Result<std::string> str(const json& j, const char* key, bool required) {
  if (!j.contains(key)) {
    if (required) return fail(fmt::format("field '{}' is missing", key));
    return std::string();
  }
  if (!j[key].is_string()) return fail(fmt::format("field '{}' must be a string", key));
  return j[key].get<std::string>();
}
}  // namespace

Result<CniRequest> decodeRequest(const std::string& line) {
  auto j = parseObject(line);
  if (!j) return tl::unexpected(j.error());
  CniRequest r;
  struct Field {
    const char* key;
    std::string* out;
    bool required;
  } fields[] = {{"command", &r.command, true},
                {"container_id", &r.container_id, true},
                {"netns", &r.netns, false},
                {"ifname", &r.ifname, false},
                {"pod_namespace", &r.pod_namespace, false},
                {"pod_name", &r.pod_name, false},
                {"pod_uid", &r.pod_uid, false}};
  for (auto& f : fields) {
    auto v = str(*j, f.key, f.required);
    if (!v) return tl::unexpected(v.error());
    *f.out = *v;
  }
  if (r.command != "ADD" && r.command != "DEL" && r.command != "CHECK")
    return fail(fmt::format("unknown command '{}'", r.command));
  if (r.container_id.empty()) return fail("container_id is empty");
  if (r.command == "ADD" && r.netns.empty()) return fail("ADD without a netns");
  // The names a pod is known by (logs, records, policies): as the API server
  // would accept them.
  if (r.command == "ADD" && !r.pod_namespace.empty() && !isDnsName(r.pod_namespace, 63, false))
    return fail(fmt::format("pod_namespace '{}' is not a Kubernetes namespace name",
                            r.pod_namespace.substr(0, 80)));
  if (r.command == "ADD" && !r.pod_name.empty() && !isDnsName(r.pod_name, 253, true))
    return fail(
        fmt::format("pod_name '{}' is not a Kubernetes pod name", r.pod_name.substr(0, 80)));
  if (j->contains("ips")) {
    if (!(*j)["ips"].is_array()) return fail("field 'ips' must be an array of strings");
    for (const auto& ip : (*j)["ips"]) {
      if (!ip.is_string()) return fail("field 'ips' must be an array of strings");
      r.ips.push_back(ip.get<std::string>());
    }
  }
  return r;
}

Result<CniReply> decodeReply(const std::string& line) {
  auto j = parseObject(line);
  if (!j) return tl::unexpected(j.error());
  if (!j->contains("ok") || !(*j)["ok"].is_boolean()) return fail("reply without a boolean 'ok'");
  CniReply r;
  r.ok = (*j)["ok"].get<bool>();
  if (j->contains("enrolled") && (*j)["enrolled"].is_boolean())
    r.enrolled = (*j)["enrolled"].get<bool>();
  if (auto e = str(*j, "error", false)) r.error = *e;
  if (auto d = str(*j, "details", false)) r.details = *d;
  if (j->contains("code") && (*j)["code"].is_number_integer()) r.code = (*j)["code"].get<int>();
  return r;
}

}  // namespace sluice::cni
