// Network-namespace helpers. The proxy lives in the node netns but owns
// sockets inside pod netns: a socket's netns is fixed when it is created, so
// the thread enters the pod netns only around socket().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice {

// Opens a netns file (e.g. /var/run/netns/x or /proc/PID/ns/net) O_RDONLY|O_CLOEXEC.
Result<UniqueFd> openNetns(const std::string& path);

// The kernel's netns cookie (SO_NETNS_COOKIE of a socket created inside it);
// the same value bpf_get_netns_cookie() returns to BPF programs there.
Result<uint64_t> netnsCookie(int netns_fd);

// The calling thread's netns (/proc/thread-self/ns/net).
Result<UniqueFd> threadNetns();

// Creates a socket inside the given netns on the calling thread and returns to
// the thread's original netns before returning (also on failure).
Result<UniqueFd> socketInNetns(int netns_fd, int domain, int type, int protocol);
// The same for a thread known to be in `home` (a threadNetns() kept open):
// two syscalls fewer (setns, socket, setns instead of opening and closing
// the thread's netns around them), for sockets made per connection.
Result<UniqueFd> socketInNetns(int netns_fd, const UniqueFd& home, int domain, int type,
                               int protocol);
// Up to `n` of them with one entry into the netns, appended to `out`: fewer
// when socket() fails after the first (no descriptors left), an error when
// none could be made.
Result<void> socketsInNetns(int netns_fd, const UniqueFd& home, int domain, int type, int protocol,
                            size_t n, std::vector<UniqueFd>& out);

// Runs fn() with the calling thread inside netns_fd; restores the original.
// fn must not block for long: the thread is in the pod's netns meanwhile.
template <typename Fn>
Result<void> runInNetns(int netns_fd, Fn&& fn);

// --- implementation details ---
Result<UniqueFd> enterNetns(int netns_fd);  // returns an fd of the original netns
void leaveNetns(const UniqueFd& original);  // aborts if restoring fails: a thread
                                            // stuck in a pod netns is a security bug

template <typename Fn>
Result<void> runInNetns(int netns_fd, Fn&& fn) {
  auto original = enterNetns(netns_fd);
  if (!original) return tl::unexpected(original.error());
  // Back to the original netns however fn() ends (an exception included):
  // a thread left in a pod's netns would open the next socket there.
  struct Restore {
    const UniqueFd& fd;
    ~Restore() { leaveNetns(fd); }
  } restore{*original};
  fn();
  return {};
}

}  // namespace sluice
