#include "agent/authz/probe_source.h"

#include <sys/socket.h>

#include "sluice/common/unique_fd.h"

namespace sluice::agent::authz {

IpAddr ProbeSources::forPod(const IpAddr& pod_ip) {
  if (pod_ip.empty()) return {};
  if (auto it = cache_.find(pod_ip); it != cache_.end()) return it->second;
  IpAddr found;
  UniqueFd fd(::socket(pod_ip.isV6() ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  SockAddr to(pod_ip, 9);  // any port: a UDP connect only picks the route
  sockaddr_storage local{};
  socklen_t len = sizeof(local);
  if (fd && ::connect(fd.get(), to.sa(), to.len()) == 0 &&
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &len) == 0)
    found = SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&local), len).ip();
  // A failure is not cached: the route may appear with the pod's network.
  if (!found.empty()) cache_[pod_ip] = found;
  return found;
}

}  // namespace sluice::agent::authz
