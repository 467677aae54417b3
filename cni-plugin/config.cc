#include "cni-plugin/config.h"

#include <algorithm>
#include <set>

#include "sluice/common/addr.h"
#include "sluice/common/ip6.h"
#include "sluice/common/json_text.h"
#include "sluice/common/suggest.h"

namespace sluice::cni {

using nlohmann::json;

namespace {
tl::unexpected<PluginError> err(int code, std::string msg, std::string details = "") {
  return tl::unexpected<PluginError>(PluginError{code, std::move(msg), std::move(details)});
}
constexpr size_t kMaxConfigBytes = 1 << 20;
}  // namespace

bool supportedVersion(const std::string& version) {
  return std::find(kSupportedVersions.begin(), kSupportedVersions.end(), version) !=
         kSupportedVersions.end();
}

tl::expected<std::vector<std::string>, PluginError> resultIps(const json& result,
                                                              const std::string& ifname) {
  std::vector<std::string> ips;
  if (!result.is_object()) return err(kDecodingFailure, "prevResult is not an object");
  if (!result.contains("ips")) return ips;
  if (!result["ips"].is_array()) return err(kDecodingFailure, "prevResult.ips is not an array");
  // Per entry of "interfaces": whether it is the pod's interface.
  std::vector<bool> pod_interface;
  bool any_sandbox = false;
  if (result.contains("interfaces") && result["interfaces"].is_array()) {
    for (const auto& i : result["interfaces"]) {
      bool in_sandbox = i.is_object() && i.contains("sandbox") && i["sandbox"].is_string() &&
                        !i["sandbox"].get<std::string>().empty();
      any_sandbox = any_sandbox || in_sandbox;
      bool named =
          ifname.empty() || (i.is_object() && i.contains("name") && i["name"].is_string() &&
                             i["name"].get<std::string>() == ifname);
      pod_interface.push_back(in_sandbox && named);
    }
  }
  for (const auto& ip : result["ips"]) {
    if (!ip.is_object() || !ip.contains("address") || !ip["address"].is_string())
      return err(kDecodingFailure, "prevResult.ips[] entry without a string 'address'");
    if (ip.contains("interface")) {
      // An index into "interfaces": one that points nowhere is a broken
      // result, not the pod's address.
      const json& i = ip["interface"];
      if (!i.is_number_unsigned() ||
          (result.contains("interfaces") && i.get<size_t>() >= pod_interface.size()))
        return err(kDecodingFailure,
                   "prevResult.ips[] 'interface' is not an index into prevResult.interfaces",
                   i.dump());
      if (any_sandbox && !pod_interface[i.get<size_t>()])
        continue;  // a host-side interface's, or another sandbox interface's
    }
    std::string addr = ip["address"].get<std::string>();
    std::string bare = addr.substr(0, addr.find('/'));
    // Both families go to the agent, which meshes both (IPv6 in canonical
    // text, so that it compares with the control plane's).
    if (bare.find(':') != std::string::npos) {
      auto a6 = parseIp6(bare);
      if (!a6) return err(kDecodingFailure, "prevResult.ips[] has an invalid address", addr);
      ips.push_back(formatIp6(*a6));
    } else if (parseIp4(bare)) {
      ips.push_back(bare);
    } else {
      return err(kDecodingFailure, "prevResult.ips[] has an invalid address", addr);
    }
  }
  return ips;
}

tl::expected<PluginConfig, PluginError> parseConfig(const std::string& text,
                                                    const std::string& ifname) {
  if (text.size() > kMaxConfigBytes)
    return err(kDecodingFailure, "network configuration larger than 1 MiB");
  // A key given twice at the top level ("failOpen":true,"failOpen":false)
  // is refused, not read as its last value.
  std::string twice;
  std::set<std::string> top;
  json j = json::parse(
      text,
      [&](int depth, json::parse_event_t event, json& parsed) {
        if (event == json::parse_event_t::key && depth == 1 && twice.empty() &&
            !top.insert(parsed.get<std::string>()).second)
          twice = parsed.get<std::string>();
        return true;
      },
      /*allow_exceptions=*/false);
  if (j.is_discarded())
    return err(kDecodingFailure, "network configuration on stdin is not valid JSON");
  if (!j.is_object())
    return err(kDecodingFailure, "network configuration on stdin is not a JSON object");
  if (!twice.empty())
    return err(kInvalidConfig, fmt::format("field '{}' appears twice: keep one", twice));
  // Keys the runtime or other plugins add are left alone; a near miss of
  // one of ours ("failopen") is a typo that would silently change what
  // happens when the agent is away.
  for (const auto& [key, value] : j.items())
    if (const char* ours = closestWord(key, kPluginFields); ours && key != ours)
      return err(kInvalidConfig, fmt::format("unknown field '{}' (did you mean '{}'?)", key, ours));
  PluginConfig c;
  auto str = [&](const char* key, std::string& out, bool required) -> std::optional<PluginError> {
    if (!j.contains(key)) {
      if (required)
        return PluginError{kInvalidConfig, fmt::format("network configuration has no '{}'", key),
                           ""};
      return std::nullopt;
    }
    if (!j[key].is_string())
      return PluginError{kInvalidConfig, fmt::format("'{}' must be a string", key), ""};
    out = j[key].get<std::string>();
    return std::nullopt;
  };
  if (auto e = str("cniVersion", c.cni_version, true)) return tl::unexpected(*e);
  if (auto e = str("name", c.name, false)) return tl::unexpected(*e);
  if (auto e = str("agentSocket", c.agent_socket, false)) return tl::unexpected(*e);
  if (auto e = str("logFile", c.log_file, false)) return tl::unexpected(*e);
  if (!supportedVersion(c.cni_version))
    return err(kIncompatibleVersion, fmt::format("unsupported cniVersion '{}'", c.cni_version),
               fmt::format("sluice-cni supports {}", fmt::join(kSupportedVersions, ", ")));
  if (j.contains("failOpen")) {
    if (!j["failOpen"].is_boolean()) return err(kInvalidConfig, "'failOpen' must be a boolean");
    c.fail_open = j["failOpen"].get<bool>();
  }
  if (j.contains("timeoutMs")) {
    if (!j["timeoutMs"].is_number_integer())
      return err(kInvalidConfig, "'timeoutMs' must be an integer");
    long t = j["timeoutMs"].get<long>();
    if (t < kMinTimeoutMs || t > kMaxTimeoutMs)
      return err(kInvalidConfig, fmt::format("'timeoutMs' must be between {} and {}", kMinTimeoutMs,
                                             kMaxTimeoutMs));
    c.timeout_ms = static_cast<int>(t);
  }
  if (c.agent_socket.empty()) return err(kInvalidConfig, "'agentSocket' is empty");
  if (j.contains("prevResult")) {
    c.has_prev_result = true;
    c.prev_result = j["prevResult"];
    auto ips = resultIps(c.prev_result, ifname);
    if (!ips) return tl::unexpected(ips.error());
    c.ips = *ips;
  }
  return c;
}

PluginConfig lenientConfig(const std::string& text) {
  PluginConfig c;
  c.cni_version = "1.0.0";
  json j = text.size() > kMaxConfigBytes ? json()
                                         : json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return c;
  auto str = [&](const char* key) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
  };
  if (std::string v = str("cniVersion"); supportedVersion(v)) c.cni_version = v;
  c.name = str("name");
  if (std::string v = str("agentSocket"); !v.empty()) c.agent_socket = v;
  c.log_file = str("logFile");
  if (j.contains("timeoutMs") && j["timeoutMs"].is_number_integer()) {
    long t = j["timeoutMs"].get<long>();
    if (t >= kMinTimeoutMs && t <= kMaxTimeoutMs) c.timeout_ms = static_cast<int>(t);
  }
  return c;
}

tl::expected<Environment, PluginError> parseEnvironment(
    const std::map<std::string, std::string>& env) {
  Environment e;
  auto get = [&](const char* k) {
    auto it = env.find(k);
    return it == env.end() ? std::string() : it->second;
  };
  e.command = get("CNI_COMMAND");
  e.container_id = get("CNI_CONTAINERID");
  e.netns = get("CNI_NETNS");
  e.ifname = get("CNI_IFNAME");
  if (e.command.empty()) return err(kInvalidEnvironment, "CNI_COMMAND is not set");
  if (e.command != "ADD" && e.command != "DEL" && e.command != "CHECK" && e.command != "VERSION")
    return err(kInvalidEnvironment, fmt::format("unknown CNI_COMMAND '{}'", e.command));
  if (e.command != "VERSION") {
    if (e.container_id.empty()) return err(kInvalidEnvironment, "CNI_CONTAINERID is not set");
    if (e.ifname.empty()) return err(kInvalidEnvironment, "CNI_IFNAME is not set");
    if (e.command != "DEL" && e.netns.empty())
      return err(kInvalidEnvironment, "CNI_NETNS is not set");
  }
  std::string args = get("CNI_ARGS");
  size_t start = 0;
  while (start < args.size()) {
    size_t semi = args.find(';', start);
    std::string kv =
        args.substr(start, semi == std::string::npos ? std::string::npos : semi - start);
    if (!kv.empty()) {
      auto eq = kv.find('=');
      if (eq == std::string::npos) {
        if (e.command != "DEL") return err(kInvalidEnvironment, "CNI_ARGS entry without '='", kv);
        e.args_error += (e.args_error.empty() ? "CNI_ARGS entries without '=' skipped: " : ", ") +
                        std::string("'") + kv + "'";
      } else {
        e.args[kv.substr(0, eq)] = kv.substr(eq + 1);
      }
    }
    if (semi == std::string::npos) break;
    start = semi + 1;
  }
  return e;
}

std::string errorJson(const std::string& cni_version, const PluginError& e) {
  json j{{"cniVersion", cni_version.empty() ? "1.0.0" : cni_version},
         {"code", e.code},
         {"msg", e.msg}};
  if (!e.details.empty()) j["details"] = e.details;
  return jsonText(j) + "\n";
}

}  // namespace sluice::cni
