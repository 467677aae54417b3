// Where this node's own connections to a pod come from: the source address
// the node's routing picks towards the pod's IP (with the bridge CNI, the
// pod network's gateway on the node; for the pod's IPv6 address, the node's
// IPv6 address on the pod's link). Kubelet probes carry it, so it is what
// the probe allowance compares with. Found without sending anything: for
// IPv6 the node's global address whose prefix holds the pod's (read from the
// interface list: the routing picks another source while that address is
// still in duplicate address detection, right after the bridge got it);
// otherwise a UDP socket connect()ed to the pod, then getsockname(). Cached
// by pod IP; discovery thread only (not thread-safe).
#pragma once

#include <unordered_map>

#include "sluice/common/addr.h"

namespace sluice::agent::authz {

class ProbeSources {
 public:
  // Of the pod address's family; empty when the node has no route to it.
  IpAddr forPod(const IpAddr& pod_ip);

 private:
  std::unordered_map<IpAddr, IpAddr> cache_;
};

}  // namespace sluice::agent::authz
