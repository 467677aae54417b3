// The sluice-cni <-> sluice-agent protocol: one JSON request per connection
// on the agent's unix socket, newline-terminated, answered by one JSON reply.
#pragma once

#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::cni {

inline constexpr size_t kMaxMessageBytes = 64 * 1024;

struct CniRequest {
  std::string command;           // ADD | DEL | CHECK
  std::string container_id;      // CNI_CONTAINERID
  std::string netns;             // CNI_NETNS (may be empty on DEL)
  std::string ifname;            // CNI_IFNAME
  std::string pod_namespace;     // K8S_POD_NAMESPACE
  std::string pod_name;          // K8S_POD_NAME
  std::string pod_uid;           // K8S_POD_UID
  std::vector<std::string> ips;  // the pod's addresses from prevResult, both families (text)
};

// The CNI error codes an agent names in a refusal (spec 1.0.0, "Error").
inline constexpr int kReplyUnknownContainer = 3;  // CHECK of a container it does not know
inline constexpr int kReplyTryAgainLater = 11;    // busy (too many requests): retry

struct CniReply {
  bool ok = false;
  bool enrolled = false;
  std::string error;
  std::string details;
  // When !ok: the CNI error code the plugin answers with; 0 lets it choose
  // (an agent from before this field never sends it, and a plugin from
  // before it ignores it).
  int code = 0;
};

std::string encode(const CniRequest& r);
std::string encode(const CniReply& r);
// Strict: wrong types, unknown commands, missing required fields are errors.
Result<CniRequest> decodeRequest(const std::string& line);
Result<CniReply> decodeReply(const std::string& line);

}  // namespace sluice::cni
