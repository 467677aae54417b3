#include "agent/authz/node_sockets.h"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>

#include "sluice/common/fmt.h"

namespace sluice::agent::authz {

namespace {

// An address as inet_diag_sockid holds it (network order; IPv4 in [0]).
void putAddr(const IpAddr& ip, __be32 out[4]) {
  if (ip.isV4()) {
    out[0] = ip.v4net();
    return;
  }
  in6_addr a = ip.v6addr();
  std::memcpy(out, &a, sizeof(a));
}

}  // namespace

Result<std::unique_ptr<NodeSockets>> NodeSockets::open() {
  UniqueFd fd(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!fd) return failErrno("cannot open a NETLINK_SOCK_DIAG socket");
  // The kernel answers while it handles the request; the timeout only keeps
  // a worker from waiting on an answer that never comes.
  timeval tv{0, 200 * 1000};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::unique_ptr<NodeSockets> s(new NodeSockets(std::move(fd)));
  // A connection of our own over loopback must be found (a kernel without
  // tcp_diag answers "not found" to every lookup: every probe would then be
  // taken for forwarded plaintext).
  UniqueFd server(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(at);
  sockaddr_in from{};
  socklen_t from_len = sizeof(from);
  if (!server || !client || ::bind(server.get(), reinterpret_cast<sockaddr*>(&at), len) != 0 ||
      ::listen(server.get(), 1) != 0 ||
      ::getsockname(server.get(), reinterpret_cast<sockaddr*>(&at), &len) != 0 ||
      ::connect(client.get(), reinterpret_cast<sockaddr*>(&at), len) != 0 ||
      ::getsockname(client.get(), reinterpret_cast<sockaddr*>(&from), &from_len) != 0)
    return failErrno("cannot open a loopback connection to check sock_diag");
  int r = s->query(SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&from), from_len),
                   SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&at), len));
  if (r != 1)
    return fail(fmt::format("this kernel does not find TCP sockets through sock_diag ({}): "
                            "load the tcp_diag module, or run with --node-probes policy",
                            r == 0 ? "a loopback connection was not found" : std::strerror(-r)),
                r < 0 ? -r : ENOENT);
  return s;
}

int NodeSockets::query(const SockAddr& local, const SockAddr& remote) {
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 req;
  } msg{};
  msg.nlh.nlmsg_len = sizeof(msg);
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST;  // one socket by its id, not a dump
  msg.req.sdiag_family = local.ip().isV4() ? AF_INET : AF_INET6;
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = ~0u;
  msg.req.id.idiag_sport = htons(local.port());
  msg.req.id.idiag_dport = htons(remote.port());
  putAddr(local.ip(), msg.req.id.idiag_src);
  putAddr(remote.ip(), msg.req.id.idiag_dst);
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;

  std::lock_guard lk(mu_);
  msg.nlh.nlmsg_seq = ++seq_;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd_.get(), &msg, sizeof(msg), 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof(kernel)) < 0)
    return -errno;
  alignas(nlmsghdr) char buf[8192];
  while (true) {
    ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
    if (n < 0) return errno == EAGAIN ? -ETIMEDOUT : -errno;
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(n));
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != seq_) continue;  // the answer to an earlier, timed-out request
      if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY) return 1;
      if (h->nlmsg_type == NLMSG_ERROR) {
        int err = -reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(h))->error;
        return err == ENOENT ? 0 : -err;
      }
    }
  }
}

bool NodeSockets::has(const SockAddr& local, const SockAddr& remote) {
  return query(local, remote) == 1;
}

}  // namespace sluice::agent::authz
