// One io_uring instance, owned by one thread. Created on the thread that will
// use it (IORING_SETUP_SINGLE_ISSUER binds the ring to its creator); never moved.
#pragma once

#include <liburing.h>

#include <memory>

#include "sluice/common/result.h"

namespace sluice::ztunnel::uring {

// Something with an outstanding request on the ring: user_data points at it,
// and the ring hands the completion back to it.
class Operation {
 public:
  virtual ~Operation() = default;
  virtual void complete(const io_uring_cqe& cqe) = 0;
};

class Ring {
 public:
  static Result<std::unique_ptr<Ring>> create(unsigned entries);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // A free submission entry, submitting queued ones first if the SQ is full.
  io_uring_sqe* sqe(Operation* op);
  // Submits and waits for at least one completion (or the timeout), then
  // completes every available CQE. Returns the number completed.
  unsigned run(unsigned wait_ms);

 private:
  Ring() = default;
  io_uring ring_{};
  bool initialised_ = false;
};

}  // namespace sluice::ztunnel::uring
