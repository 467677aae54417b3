#include "sluice/common/netns.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace sluice {

Result<UniqueFd> openNetns(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return failErrno(fmt::format("cannot open network namespace {}", path));
  return UniqueFd(fd);
}

Result<UniqueFd> threadNetns() {
  int self = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) return failErrno("cannot open /proc/thread-self/ns/net");
  return UniqueFd(self);
}

Result<UniqueFd> enterNetns(int netns_fd) {
  auto original = threadNetns();
  if (!original) return original;
  if (::setns(netns_fd, CLONE_NEWNET) != 0)
    return failErrno("setns into pod network namespace failed");
  return original;
}

void leaveNetns(const UniqueFd& original) {
  if (::setns(original.get(), CLONE_NEWNET) != 0) {
    std::perror("sluice: FATAL: cannot return to the original network namespace");
    std::abort();
  }
}

Result<UniqueFd> socketInNetns(int netns_fd, int domain, int type, int protocol) {
  auto original = threadNetns();
  if (!original) return original;
  return socketInNetns(netns_fd, *original, domain, type, protocol);
}

Result<UniqueFd> socketInNetns(int netns_fd, const UniqueFd& home, int domain, int type,
                               int protocol) {
  std::vector<UniqueFd> one;
  if (auto r = socketsInNetns(netns_fd, home, domain, type, protocol, 1, one); !r)
    return tl::unexpected(r.error());
  return std::move(one.front());
}

Result<void> socketsInNetns(int netns_fd, const UniqueFd& home, int domain, int type, int protocol,
                            size_t n, std::vector<UniqueFd>& out) {
  if (::setns(netns_fd, CLONE_NEWNET) != 0)
    return failErrno("setns into pod network namespace failed");
  size_t first = out.size();
  int saved = 0;
  for (size_t i = 0; i < n; ++i) {
    int fd = ::socket(domain, type | SOCK_CLOEXEC, protocol);
    if (fd < 0) {
      saved = errno;
      break;
    }
    out.emplace_back(fd);
  }
  leaveNetns(home);
  if (out.size() == first) {  // fewer than n (out of descriptors) is fine, none is not
    errno = saved;
    return failErrno("socket() inside pod network namespace failed");
  }
  return {};
}

Result<uint64_t> netnsCookie(int netns_fd) {
  auto sock = socketInNetns(netns_fd, AF_INET, SOCK_DGRAM, 0);
  if (!sock) return tl::unexpected(sock.error());
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (::getsockopt(sock->get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0)
    return failErrno("getsockopt(SO_NETNS_COOKIE) failed; kernel 5.14+ is required");
  return cookie;
}

}  // namespace sluice
