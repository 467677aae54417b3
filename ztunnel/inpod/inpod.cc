#include "ztunnel/inpod/inpod.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/fib_rules.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "sluice/common/bpf_abi.h"
#include "sluice/common/netns.h"

namespace sluice::ztunnel::inpod {

namespace {

void addAttr(nlmsghdr* n, size_t cap, uint16_t type, const void* data, size_t len) {
  size_t alen = RTA_LENGTH(len);
  size_t at = NLMSG_ALIGN(n->nlmsg_len);
  if (at + RTA_ALIGN(alen) > cap) return;
  auto* rta = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(n) + at);
  rta->rta_type = type;
  rta->rta_len = static_cast<uint16_t>(alen);
  std::memcpy(RTA_DATA(rta), data, len);
  n->nlmsg_len = static_cast<uint32_t>(at + RTA_ALIGN(alen));
}

// Sends one request and reads its ack; EEXIST counts as success.
Result<void> talk(int fd, nlmsghdr* n, const char* what) {
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd, n, n->nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel)) < 0)
    return failErrno(fmt::format("netlink {} send failed", what));
  char buf[4096];
  ssize_t len = ::recv(fd, buf, sizeof(buf), 0);
  if (len < 0) return failErrno(fmt::format("netlink {} ack failed", what));
  auto* h = reinterpret_cast<nlmsghdr*>(buf);
  if (NLMSG_OK(h, static_cast<unsigned>(len)) && h->nlmsg_type == NLMSG_ERROR) {
    auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(h));
    if (err->error != 0 && err->error != -EEXIST) {
      errno = -err->error;
      return failErrno(fmt::format("netlink {} refused", what));
    }
  }
  return {};
}

Result<void> addRule(int fd, uint8_t family) {
  struct {
    nlmsghdr n;
    fib_rule_hdr r;
    char attrs[128];
  } req{};
  req.n.nlmsg_len = NLMSG_LENGTH(sizeof(fib_rule_hdr));
  req.n.nlmsg_type = RTM_NEWRULE;
  req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
  req.r.family = family;
  req.r.action = FR_ACT_TO_TBL;
  req.r.table = SLUICE_INBOUND_ROUTE_TABLE;
  uint32_t mark = SLUICE_MARK_INBOUND_APP;
  uint32_t mask = 0xffffffff;
  uint32_t table = SLUICE_INBOUND_ROUTE_TABLE;
  uint32_t priority = 100;
  addAttr(&req.n, sizeof(req), FRA_FWMARK, &mark, sizeof(mark));
  addAttr(&req.n, sizeof(req), FRA_FWMASK, &mask, sizeof(mask));
  addAttr(&req.n, sizeof(req), FRA_TABLE, &table, sizeof(table));
  addAttr(&req.n, sizeof(req), FRA_PRIORITY, &priority, sizeof(priority));
  return talk(fd, &req.n, "RTM_NEWRULE");
}

Result<void> addLocalRoute(int fd, uint8_t family) {
  struct {
    nlmsghdr n;
    rtmsg r;
    char attrs[128];
  } req{};
  req.n.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
  req.n.nlmsg_type = RTM_NEWROUTE;
  req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
  req.r.rtm_family = family;
  req.r.rtm_dst_len = 0;
  req.r.rtm_table = SLUICE_INBOUND_ROUTE_TABLE;
  req.r.rtm_protocol = RTPROT_BOOT;
  req.r.rtm_scope = RT_SCOPE_HOST;
  req.r.rtm_type = RTN_LOCAL;
  uint32_t table = SLUICE_INBOUND_ROUTE_TABLE;
  uint32_t lo = if_nametoindex("lo");
  addAttr(&req.n, sizeof(req), RTA_TABLE, &table, sizeof(table));
  addAttr(&req.n, sizeof(req), RTA_OIF, &lo, sizeof(lo));
  return talk(fd, &req.n, "RTM_NEWROUTE");
}

// The pod's loopback may still be down when its CNI ADD arrives (containerd
// brings up lo and the pod network concurrently): 127.0.0.1:15001 cannot be
// bound and the local route cannot be added until it is up.
Result<void> bringLoopbackUp() {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return failErrno("cannot open a socket in the pod netns");
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0)
    return failErrno("cannot read the flags of lo in the pod netns");
  if (ifr.ifr_flags & IFF_UP) return {};
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0)
    return failErrno("cannot bring lo up in the pod netns");
  return {};
}

// Writes "1" to /proc/sys/net/<path> (of the calling thread's netns).
Result<void> setSysctl(const std::string& path) {
  std::string file = "/proc/sys/net/" + path;
  int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || ::write(fd, "1", 1) != 1) {
    auto r = failErrno(fmt::format("cannot set net.{}=1 in the pod netns", path));
    if (fd >= 0) ::close(fd);
    return r;
  }
  ::close(fd);
  return {};
}

}  // namespace

Result<void> prepareNetns(int netns_fd, bool ipv6) {
  Result<void> result;
  auto entered = runInNetns(netns_fd, [&] {
    // /proc/sys/net shows the netns of the task that opens it.
    //  tcp_fwmark_accept: the app's accepted socket inherits the mark of the
    //    proxy's SYN, so its replies take the policy route back to the proxy.
    //  fwmark_reflect: so do replies the kernel makes on its own (a RST from a
    //    closed port, ICMP); without it the RST to the proxy's transparent SYN
    //    leaves toward the real client, and the proxy waits for its connect
    //    timeout instead of seeing "connection refused".
    //  There is no net.ipv6.tcp_fwmark_accept: the IPv4 one covers IPv6
    //    (inet_request_mark), but IPv6 has its own fwmark_reflect.
    for (const char* path :
         {"ipv4/tcp_fwmark_accept", "ipv4/fwmark_reflect", "ipv6/fwmark_reflect"}) {
      if (!ipv6 && std::string_view(path).starts_with("ipv6")) continue;
      if (auto r = setSysctl(path); !r) {
        result = r;
        return;
      }
    }
    if (auto r = bringLoopbackUp(); !r) {
      result = r;
      return;
    }
    UniqueFd nl(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    if (!nl) {
      result = failErrno("cannot open a netlink socket in the pod netns");
      return;
    }
    timeval tv{2, 0};
    setsockopt(nl.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    for (uint8_t family : {uint8_t(AF_INET), uint8_t(AF_INET6)}) {
      if (family == AF_INET6 && !ipv6) break;
      if (auto r = addRule(nl.get(), family); !r) {
        result = r;
        return;
      }
      if (auto r = addLocalRoute(nl.get(), family); !r) {
        result = r;
        return;
      }
    }
  });
  if (!entered) return entered;
  return result;
}

Result<UniqueFd> listenIn(int netns_fd, const SockAddr& addr, bool transparent, int backlog) {
  const bool v6 = addr.isV6();
  auto s = socketInNetns(netns_fd, addr.family(), SOCK_STREAM, 0);
  if (!s) return s;
  int one = 1;
  uint32_t mark = SLUICE_MARK_MINE;
  setsockopt(s->get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(s->get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
    return failErrno("SO_REUSEPORT failed");
  if (setsockopt(s->get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
    return failErrno("SO_MARK failed (needs CAP_NET_ADMIN)");
  if (v6 && setsockopt(s->get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0)
    return failErrno("IPV6_V6ONLY failed");
  if (transparent && setsockopt(s->get(), v6 ? SOL_IPV6 : SOL_IP,
                                v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one, sizeof(one)) != 0)
    return failErrno(
        fmt::format("{} failed (needs CAP_NET_ADMIN)", v6 ? "IPV6_TRANSPARENT" : "IP_TRANSPARENT"));
  setsockopt(s->get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (::bind(s->get(), addr.sa(), addr.len()) != 0)
    return failErrno(fmt::format("bind to {} inside the pod netns failed", addr.str()));
  if (::listen(s->get(), backlog) != 0) return failErrno("listen failed");
  return s;
}

Result<void> prepareUpstream(const UniqueFd& s, uint32_t mark, int family, const IpAddr& bind) {
  int one = 1;
  if (setsockopt(s.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
    return failErrno("SO_MARK failed");
  setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (!bind.empty()) {
    bool v6 = family == AF_INET6;
    if (setsockopt(s.get(), v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one,
                   sizeof(one)) != 0)
      return failErrno(v6 ? "IPV6_TRANSPARENT failed" : "IP_TRANSPARENT failed");
    SockAddr sa(bind, 0);
    if (::bind(s.get(), sa.sa(), sa.len()) != 0)
      return failErrno("binding the upstream socket to the client address failed");
  }
  return {};
}

}  // namespace sluice::ztunnel::inpod
