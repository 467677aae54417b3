#include "ztunnel/proxy/cpu_wait.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace sluice::ztunnel::proxy {

CpuWait::CpuWait() : fd_(::open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC)) {
  if (!read(last_wait_ns_)) fd_.reset();
  last_ = Clock::now();
}

bool CpuWait::read(uint64_t& wait_ns) const {
  if (fd_.get() < 0) return false;
  char buf[96];
  ssize_t n = ::pread(fd_.get(), buf, sizeof(buf) - 1, 0);
  if (n <= 0) return false;
  buf[n] = '\0';
  // "<run ns> <wait ns> <timeslices>"
  char* end = nullptr;
  (void)std::strtoull(buf, &end, 10);
  if (end == buf || *end != ' ') return false;
  char* start = end + 1;
  wait_ns = std::strtoull(start, &end, 10);
  return end != start;
}

double CpuWait::sample(Clock::time_point now) {
  uint64_t wait_ns = 0;
  if (!read(wait_ns)) return -1;
  auto elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_).count();
  double share = elapsed > 0 && wait_ns >= last_wait_ns_
                     ? static_cast<double>(wait_ns - last_wait_ns_) / static_cast<double>(elapsed)
                     : 0.0;
  last_wait_ns_ = wait_ns;
  last_ = now;
  return std::clamp(share, 0.0, 1.0);
}

}  // namespace sluice::ztunnel::proxy
