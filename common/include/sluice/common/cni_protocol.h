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

struct CniReply {
  bool ok = false;
  bool enrolled = false;
  std::string error;
  std::string details;
};

std::string encode(const CniRequest& r);
std::string encode(const CniReply& r);
// Strict: wrong types, unknown commands, missing required fields are errors.
Result<CniRequest> decodeRequest(const std::string& line);
Result<CniReply> decodeReply(const std::string& line);

}  // namespace sluice::cni
