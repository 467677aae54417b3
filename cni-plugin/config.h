// Parsing of what a container runtime hands a CNI plugin: the network config
// on stdin (with prevResult when chained) and the CNI_* environment.
#pragma once

#include <array>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::cni {

// CNI error codes (spec section "Error"), the ones this plugin uses.
enum ErrorCode : int {
  kIncompatibleVersion = 1,
  kUnknownContainer = 3,    // CHECK of a container the agent does not know
  kInvalidEnvironment = 4,  // a CNI_* variable missing or malformed (the message names it)
  kDecodingFailure = 6,
  kInvalidConfig = 7,
  kTryAgainLater = 11,
  kInternal = 999,  // plugin-specific codes are 100+; 999 = agent refused
};

// The fields of the chained entry that are sluice-cni's own (besides "type").
inline constexpr std::array<const char*, 4> kPluginFields = {"agentSocket", "failOpen", "timeoutMs",
                                                             "logFile"};

// 0.3.x results have the same shape as 0.4.0 ones; CHECK does not exist before 0.4.0.
inline const std::vector<std::string> kSupportedVersions = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};
// Whether sluice-cni speaks `version` (one of kSupportedVersions).
bool supportedVersion(const std::string& version);
// timeoutMs: its bounds (the configuration's; DEL's lenient reading keeps
// the default outside them).
inline constexpr long kMinTimeoutMs = 100, kMaxTimeoutMs = 60000;
inline bool versionHasCheck(const std::string& v) { return v != "0.3.0" && v != "0.3.1"; }

struct PluginError {
  int code = kInternal;
  std::string msg;
  std::string details;
};

struct PluginConfig {
  std::string cni_version;
  std::string name;
  std::string agent_socket = "/var/run/sluice/cni.sock";
  bool fail_open = false;
  int timeout_ms = 5000;
  std::string log_file;
  bool has_prev_result = false;
  nlohmann::json prev_result;    // exactly as received
  std::vector<std::string> ips;  // the pod's addresses from prevResult (resultIps)
};

struct Environment {
  std::string command;                      // CNI_COMMAND
  std::string container_id;                 // CNI_CONTAINERID
  std::string netns;                        // CNI_NETNS
  std::string ifname;                       // CNI_IFNAME
  std::map<std::string, std::string> args;  // CNI_ARGS, split on ';' and '='
  // DEL only: what was wrong with CNI_ARGS (its unusable entries are
  // skipped; a DEL must still reach the agent). Any other command fails.
  std::string args_error;
};

// ifname (CNI_IFNAME) picks the pod's addresses from prevResult (resultIps).
tl::expected<PluginConfig, PluginError> parseConfig(const std::string& stdin_text,
                                                    const std::string& ifname = "");
// For DEL, which must reach the agent whatever the configuration: every field
// that is usable, the default for every other one (a cniVersion sluice-cni
// does not speak becomes "1.0.0"). Never fails.
PluginConfig lenientConfig(const std::string& stdin_text);
tl::expected<Environment, PluginError> parseEnvironment(
    const std::map<std::string, std::string>& env);
// The pod's addresses in a 0.3.x/0.4.0/1.0.0 result's "ips", both families
// (prefix length stripped, IPv6 canonical). An address whose "interface"
// names an entry of "interfaces" is the pod's only when that interface is in
// the sandbox (has "sandbox") and, with a non-empty ifname, is named ifname:
// a primary plugin also lists its host-side interfaces (a bridge's gateway
// address). An address without "interface", or a result that marks no
// interface as in the sandbox at all, counts as the pod's.
tl::expected<std::vector<std::string>, PluginError> resultIps(const nlohmann::json& result,
                                                              const std::string& ifname = "");
std::string errorJson(const std::string& cni_version, const PluginError& e);

}  // namespace sluice::cni
