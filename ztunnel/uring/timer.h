// A one-shot timer on a ring: an operation that completes itself by calling
// its owner back. The owner outlives it (a worker member), so nothing needs
// cancelling before it is freed: the ring is torn down first.
#pragma once

#include <linux/time_types.h>

#include <chrono>
#include <functional>

#include "ztunnel/uring/ring.h"

namespace sluice::ztunnel::uring {

class Timer final : public Operation {
 public:
  explicit Timer(std::function<void()> fire) : fire_(std::move(fire)) {}

  // Fires once after `after`, unless already armed (then the earlier
  // deadline stands).
  void arm(Ring& ring, std::chrono::milliseconds after) {
    if (armed_) return;
    ts_.tv_sec = after.count() / 1000;
    ts_.tv_nsec = (after.count() % 1000) * 1000000;
    io_uring_prep_timeout(ring.sqe(this), &ts_, 0, 0);
    armed_ = true;
  }
  bool armed() const { return armed_; }

  void complete(const io_uring_cqe&) override {
    armed_ = false;
    fire_();
  }

 private:
  std::function<void()> fire_;
  __kernel_timespec ts_{};  // read by the kernel until completion
  bool armed_ = false;
};

}  // namespace sluice::ztunnel::uring
