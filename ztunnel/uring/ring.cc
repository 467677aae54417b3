#include "ztunnel/uring/ring.h"

#include <cerrno>

namespace sluice::ztunnel::uring {

Result<std::unique_ptr<Ring>> Ring::create(unsigned entries) {
  std::unique_ptr<Ring> r(new Ring());
  io_uring_params p{};
  // SINGLE_ISSUER: only this worker thread submits, which lets the kernel skip
  //   submission locking. DEFER_TASKRUN: completion work runs when we enter
  //   the kernel to wait, not as interrupting task work, so a burst of
  //   completions cannot preempt the loop mid-batch (requires SINGLE_ISSUER).
  // SUBMIT_ALL: keep submitting the rest of a batch when one SQE fails early.
  // CQSIZE: twice the SQ so multishot accept/recv bursts do not overflow.
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
            IORING_SETUP_CQSIZE;
  p.cq_entries = entries * 2;
  int rc = io_uring_queue_init_params(entries, &r->ring_, &p);
  if (rc < 0) {
    errno = -rc;
    return failErrno(
        "io_uring_queue_init_params failed (is io_uring disabled by sysctl "
        "kernel.io_uring_disabled?)");
  }
  r->initialised_ = true;
  return r;
}

Ring::~Ring() {
  if (initialised_) io_uring_queue_exit(&ring_);
}

io_uring_sqe* Ring::sqe(Operation* op) {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  while (!s) {
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(s, op);
  return s;
}

unsigned Ring::run(unsigned wait_ms) {
  __kernel_timespec ts{};
  ts.tv_sec = wait_ms / 1000;
  ts.tv_nsec = static_cast<long long>(wait_ms % 1000) * 1000000;
  io_uring_cqe* cqe = nullptr;
  int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  if (rc < 0 && rc != -ETIME && rc != -EINTR) return 0;
  unsigned n = 0;
  unsigned head;
  // Completing may queue new SQEs but never reaps CQEs, so iterating is safe.
  io_uring_for_each_cqe(&ring_, head, cqe) {
    auto* op = static_cast<Operation*>(io_uring_cqe_get_data(cqe));
    io_uring_cqe c = *cqe;
    ++n;
    if (op) op->complete(c);
  }
  io_uring_cq_advance(&ring_, n);
  return n;
}

}  // namespace sluice::ztunnel::uring
