// Where this node's own connections to a pod come from: the source address
// the node's routing picks towards the pod's IP (with the bridge CNI, the
// pod network's gateway on the node). Kubelet probes carry it, so it is what
// the probe allowance compares with. Found without sending anything: a UDP
// socket connect()ed to the pod, then getsockname(). Cached by pod IP;
// discovery thread only (not thread-safe).
#pragma once

#include <cstdint>
#include <unordered_map>

namespace sluice::agent::authz {

class ProbeSources {
 public:
  // Network order in and out; 0 when the node has no route to the pod.
  uint32_t forPod(uint32_t pod_ip4);

 private:
  std::unordered_map<uint32_t, uint32_t> cache_;
};

}  // namespace sluice::agent::authz
