// One io_uring instance, owned by one thread. Created on the thread that will
// use it (IORING_SETUP_SINGLE_ISSUER binds the ring to its creator); never moved.
//
// Every request is an Operation: user_data points at it and the ring hands
// the completion back to it (ops.h has the concrete ones). The ring never
// fails a caller: when no submission entry can be had (the kernel refuses
// submissions even after the completion queue is drained), the request
// completes with -EAGAIN on the next run() instead, and errors() counts it.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::ztunnel::uring {

class Operation {
 public:
  virtual ~Operation() = default;
  virtual void complete(const io_uring_cqe& cqe) = 0;
};

class Ring {
 public:
  // `entries` SQEs (what one io_uring_enter submits at most: more in one
  // batch are submitted early) and `cq_entries` CQEs (0: twice `entries`).
  // Both rings are mapped whole into the process: memory it holds.
  static Result<std::unique_ptr<Ring>> create(unsigned entries, unsigned cq_entries = 0);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // A submission entry for op (null: a request nobody waits for, such as a
  // cancellation). Never null: see the header comment.
  io_uring_sqe* sqe(Operation* op);
  // `n` adjacent entries (a linked chain), all for real or all failed with
  // -EAGAIN; ops[i] gets entry i.
  void sqes(io_uring_sqe** out, Operation* const* ops, unsigned n);
  // Cancels every request on fd; their completions say -ECANCELED.
  void cancelFd(int fd);
  // Cancels op's request in flight: its completion says -ECANCELED (or
  // -EINTR), or brings its result if it completed first.
  void cancel(Operation* op);
  // Whether a completion is a request the cancel stopped before it moved a
  // byte: -ECANCELED, or -EINTR when it was already blocked in an io-wq worker.
  static bool cancelled(int res) { return res == -ECANCELED || res == -EINTR; }
  // Closes fd at once, safely although requests on it may be in flight:
  // submits what is queued, cancels every request on fd synchronously (their
  // completions still come, -ECANCELED) and closes the descriptor. For
  // forced closes under a flood, where waiting a ring round trip per
  // descriptor lets the flood outrun the bound.
  void closeNow(UniqueFd& fd);
  // Closes fd with the ring's next submission (IORING_OP_CLOSE): no
  // close(2) of its own. For a descriptor no request is in flight on; it
  // stays open (its number taken) until then. One the ring never submits
  // (it is destroyed first) is closed by the destructor. `orderly`: a
  // connection's socket that ends well, whose SO_LINGER {1, 0} (set at its
  // birth, so that a killed agent's sockets reset their peers instead of
  // ending them as if complete) is turned off first, linked ahead of the
  // close in the same submission: the close sends a FIN.
  void close(UniqueFd fd, bool orderly = false);
  // Submits and waits for at least one completion (or the timeout), then
  // completes every available one. Returns the number completed, or the
  // ring's error (anything but a timeout or a signal).
  Result<unsigned> run(unsigned wait_ms);
  // Completes op (res 0) once run() has dispatched the completions at hand:
  // work deferred out of a completion to the end of the round, with no
  // request to the kernel. Called outside run(), the next run() does not
  // wait and completes it at its end.
  void defer(Operation* op) { deferred_.push_back(op); }

  // Before sleeping for a completion, run() first polls for up to `budget`
  // (0: never): a request/response peer usually answers within tens of
  // microseconds, and a sleeping thread pays a wake-up (a context switch, on
  // a VM an idle vCPU's exit) each time. A poll that finds nothing makes
  // the next ones skip (1, 2, 4 ... 64 runs; a poll that pays halves the
  // step). Work already there after the submit is no poll; run(0) never polls.
  void setBusyPoll(std::chrono::microseconds budget) { busy_poll_ = budget; }
  // Polls that saw work arrive while polling (no sleep) and polls that ran
  // out; any thread.
  uint64_t busyPollHits() const { return poll_hits_.load(std::memory_order_relaxed); }
  uint64_t busyPollMisses() const { return poll_misses_.load(std::memory_order_relaxed); }

  // The ring waits without marking its thread as waiting for I/O (kernel
  // 6.15+, IORING_ENTER_NO_IOWAIT): an idle worker is no iowait, no I/O
  // pressure. Older kernels: it waits as liburing does, and is counted.
  bool waitsWithoutIowait() const { return no_iowait_; }

  // Submissions refused by the kernel and turned into -EAGAIN completions.
  uint64_t errors() const { return errors_.load(std::memory_order_relaxed); }

 private:
  Ring() = default;
  bool makeRoom(unsigned n);  // n free entries; false when the kernel refuses
  bool ready() const;         // the next wait would return at once
  void busyPoll();
  int submitAndWait(__kernel_timespec* ts);  // -errno, as liburing's calls
  void stash();                              // moves ready completions to backlog_ (not dispatched)
  io_uring ring_{};
  bool initialised_ = false;
  bool no_iowait_ = false;             // waitsWithoutIowait()
  std::vector<io_uring_cqe> backlog_;  // taken out of the CQ, not dispatched yet
  std::vector<io_uring_cqe> batch_;    // being dispatched by run()
  std::vector<Operation*> deferred_;   // defer(): completed at the end of run()
  std::vector<Operation*> due_;        // deferred_ being completed
  io_uring_sqe scratch_[2]{};          // prepared and dropped when the kernel refuses
  std::atomic<uint64_t> errors_{0};
  std::chrono::microseconds busy_poll_{0};
  unsigned skip_polls_ = 0, misses_in_row_ = 0;
  std::atomic<uint64_t> poll_hits_{0}, poll_misses_{0};
};

}  // namespace sluice::ztunnel::uring
