#include "agent/authz/probe_source.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include "sluice/common/unique_fd.h"

namespace sluice::agent::authz {

uint32_t ProbeSources::forPod(uint32_t pod_ip4) {
  if (pod_ip4 == 0) return 0;
  if (auto it = cache_.find(pod_ip4); it != cache_.end() && it->second != 0) return it->second;
  uint32_t found = 0;
  UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = pod_ip4;
  to.sin_port = htons(9);  // any port: a UDP connect only picks the route
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  if (fd && ::connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0 &&
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &len) == 0)
    found = local.sin_addr.s_addr;
  // A failure is not cached: the route may appear with the pod's network.
  if (found) cache_[pod_ip4] = found;
  return found;
}

}  // namespace sluice::agent::authz
