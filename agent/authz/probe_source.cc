#include "agent/authz/probe_source.h"

#include <ifaddrs.h>
#include <sys/socket.h>

#include <cstring>
#include <memory>

#include "sluice/common/unique_fd.h"

namespace sluice::agent::authz {

namespace {

// The node's global IPv6 address whose prefix holds pod_ip: its address on
// the pod's link. Read from the interface list, so an address still in
// duplicate address detection counts (the routing would pick another source
// until DAD ends, and kubelet probes come from this one afterwards).
IpAddr onLinkIp6(const IpAddr& pod_ip) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return {};
  std::unique_ptr<ifaddrs, decltype(&::freeifaddrs)> owner(list, ::freeifaddrs);
  const in6_addr pod = pod_ip.v6addr();
  for (const ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || !i->ifa_netmask || i->ifa_addr->sa_family != AF_INET6) continue;
    const auto& a = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr;
    const auto& m = reinterpret_cast<const sockaddr_in6*>(i->ifa_netmask)->sin6_addr;
    if (IN6_IS_ADDR_LINKLOCAL(&a) || IN6_IS_ADDR_LOOPBACK(&a)) continue;
    if (std::memcmp(&a, &pod, sizeof(a)) == 0) continue;  // the pod's own (a shared netns)
    bool same = true;
    for (int b = 0; b < 16; ++b)
      if ((a.s6_addr[b] & m.s6_addr[b]) != (pod.s6_addr[b] & m.s6_addr[b])) same = false;
    if (same) return IpAddr::v6(a);
  }
  return {};
}

}  // namespace

IpAddr ProbeSources::forPod(const IpAddr& pod_ip) {
  if (pod_ip.empty()) return {};
  if (auto it = cache_.find(pod_ip); it != cache_.end()) return it->second;
  IpAddr found;
  if (pod_ip.isV6()) found = onLinkIp6(pod_ip);
  if (!found.empty()) return cache_[pod_ip] = found;
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
