#include "ztunnel/proxy/socket_stash.h"

#include <sys/socket.h>

#include <algorithm>

namespace sluice::ztunnel::proxy {

Result<UniqueFd> SocketStash::take(int family, Clock::time_point now, const Make& make) {
  std::lock_guard lk(mu_);
  Family& f = family == AF_INET6 ? v6_ : v4_;
  if (!f.fds.empty() && now - f.refilled > kStale) f.fds.clear();
  if (f.fds.empty()) {
    bool burst = f.refilled != Clock::time_point{} && now - f.refilled <= kBurst;
    f.batch = burst ? std::min(f.batch * 2, kMaxBatch) : 1;
    if (auto made = make(family, f.batch, f.fds); !made) return tl::unexpected(made.error());
    f.refilled = now;
    if (f.fds.empty()) return fail("no socket was made");
  }
  UniqueFd s = std::move(f.fds.back());
  f.fds.pop_back();
  return s;
}

void SocketStash::clear() {
  std::lock_guard lk(mu_);
  v4_.fds.clear();
  v6_.fds.clear();
}

size_t SocketStash::stashed() const {
  std::lock_guard lk(mu_);
  return v4_.fds.size() + v6_.fds.size();
}

}  // namespace sluice::ztunnel::proxy
