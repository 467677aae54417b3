// How much of the time a thread waited for a CPU: the run-queue delay the
// kernel keeps per thread (/proc/thread-self/schedstat, second field:
// nanoseconds spent runnable but not running). The workers' busy poll runs
// only while this stays low: polling keeps a CPU that other runnable tasks
// (the apps) would otherwise get, which only pays when CPUs are idle.
#pragma once

#include <chrono>
#include <cstdint>

#include "sluice/common/unique_fd.h"

namespace sluice::ztunnel::proxy {

class CpuWait {
 public:
  using Clock = std::chrono::steady_clock;
  // Watches the calling thread (opened on it).
  CpuWait();
  bool available() const { return fd_.get() >= 0; }
  // The share (0..1) of the time since the previous call (or construction)
  // the thread spent waiting to run; -1 when the kernel does not say.
  double sample(Clock::time_point now = Clock::now());

 private:
  bool read(uint64_t& wait_ns) const;
  UniqueFd fd_;
  uint64_t last_wait_ns_ = 0;
  Clock::time_point last_;
};

}  // namespace sluice::ztunnel::proxy
