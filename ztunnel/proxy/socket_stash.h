// Unconnected TCP sockets made in a pod's netns ahead of need. Entering a
// netns costs two setns(2) calls (the thread leaves it again), each building
// a new nsproxy in the kernel: per inbound connection that was 2 of its
// system calls. Under a burst of connections to one pod, one entry makes
// several sockets: the batch doubles (1, 2, 4, 8) while the stash runs dry
// within kBurst of its last refill, and falls back to 1 otherwise, so a pod
// that is connected to now and then keeps nothing. Sockets older than kStale
// are closed rather than handed out. Any thread (one mutex per pod).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <mutex>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::ztunnel::proxy {

class SocketStash {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kBurst{50};
  static constexpr std::chrono::seconds kStale{1};
  static constexpr size_t kMaxBatch = 8;
  // Appends up to `n` new sockets of `family` to `out` (at least one), or
  // fails and appends none.
  using Make = std::function<Result<void>(int family, size_t n, std::vector<UniqueFd>& out)>;

  // A socket of `family` (AF_INET, AF_INET6), from the stash or made now.
  Result<UniqueFd> take(int family, Clock::time_point now, const Make& make);
  // Closes what is stashed (the pod is gone: its netns must not be held).
  void clear();
  size_t stashed() const;

 private:
  struct Family {
    std::vector<UniqueFd> fds;
    Clock::time_point refilled{};
    size_t batch = 1;
  };
  mutable std::mutex mu_;
  Family v4_, v6_;
};

}  // namespace sluice::ztunnel::proxy
