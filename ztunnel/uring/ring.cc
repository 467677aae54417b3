#include "ztunnel/uring/ring.h"

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "ztunnel/uring/ops.h"

namespace sluice::ztunnel::uring {

namespace {
constexpr int kSubmitTries = 8;
constexpr int kDeferRounds = 4;    // of deferred work per run()
constexpr linger kNoLinger{0, 0};  // an orderly close's; read by the kernel when submitted

// Kernel 6.15 UAPI, newer than Debian 12's headers: a wait that does not mark
// the thread as waiting for I/O, and the feature bit that announces it.
constexpr unsigned kEnterNoIowait = 1U << 7;  // IORING_ENTER_NO_IOWAIT
constexpr unsigned kFeatNoIowait = 1U << 17;  // IORING_FEAT_NO_IOWAIT

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
}  // namespace

Result<std::unique_ptr<Ring>> Ring::create(unsigned entries, unsigned cq_entries) {
  std::unique_ptr<Ring> r(new Ring());
  io_uring_params p{};
  // SINGLE_ISSUER: only this worker thread submits, which lets the kernel skip
  //   submission locking. DEFER_TASKRUN: completion work runs when we enter
  //   the kernel to wait, not as interrupting task work, so a burst of
  //   completions cannot preempt the loop mid-batch (requires SINGLE_ISSUER).
  // SUBMIT_ALL: keep submitting the rest of a batch when one SQE fails early.
  // CQSIZE: a CQ larger than the SQ, so multishot accept/recv bursts do not
  //   overflow.
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
            IORING_SETUP_CQSIZE;
  // TASKRUN_FLAG: the kernel flags queued task work in the SQ ring, which
  //   the busy poll reads.
  p.flags |= IORING_SETUP_TASKRUN_FLAG;
  p.cq_entries = cq_entries ? cq_entries : entries * 2;
  int rc = io_uring_queue_init_params(entries, &r->ring_, &p);
  if (rc < 0) {
    errno = -rc;
    return failErrno(
        "io_uring_queue_init_params failed (is io_uring disabled by sysctl "
        "kernel.io_uring_disabled?)");
  }
  r->initialised_ = true;
  r->no_iowait_ = (p.features & kFeatNoIowait) != 0 && (p.features & IORING_FEAT_EXT_ARG) != 0;
  return r;
}

Ring::~Ring() {
  if (!initialised_) return;
  // Closes queued and not taken by the kernel yet: done here. Nothing else
  // queued is submitted (its owner may be gone).
  for (unsigned i = io_uring_smp_load_acquire(ring_.sq.khead); i != ring_.sq.sqe_tail; ++i) {
    const io_uring_sqe& s = ring_.sq.sqes[i & ring_.sq.ring_mask];
    // An orderly close's linger-off entry (hard-linked ahead of it: only
    // close() queues those) is done here too, so the close stays a FIN.
    if (s.opcode == IORING_OP_URING_CMD && (s.flags & IOSQE_IO_HARDLINK))
      ::setsockopt(s.fd, SOL_SOCKET, SO_LINGER, &kNoLinger, sizeof(kNoLinger));
    if (s.opcode == IORING_OP_CLOSE) ::close(s.fd);
  }
  io_uring_queue_exit(&ring_);
}

void Ring::stash() {
  io_uring_cqe* cqe = nullptr;
  unsigned head;
  unsigned n = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    backlog_.push_back(*cqe);
    ++n;
  }
  io_uring_cq_advance(&ring_, n);
}

bool Ring::makeRoom(unsigned n) {
  for (int i = 0; i < kSubmitTries && io_uring_sq_space_left(&ring_) < n; ++i) {
    int rc = io_uring_submit(&ring_);
    // -EBUSY/-EAGAIN: the completion queue is full (or overflowed) and the
    // kernel holds submissions back until it is reaped. Take the completions
    // out (they are dispatched by the next run(), not from inside the caller)
    // and try again.
    if (rc == -EBUSY || rc == -EAGAIN) {
      io_uring_get_events(&ring_);
      stash();
    } else if (rc < 0 && rc != -EINTR) {
      break;
    }
  }
  return io_uring_sq_space_left(&ring_) >= n;
}

io_uring_sqe* Ring::sqe(Operation* op) {
  io_uring_sqe* s = nullptr;
  sqes(&s, &op, 1);
  return s;
}

void Ring::sqes(io_uring_sqe** out, Operation* const* ops, unsigned n) {
  if (makeRoom(n)) {
    for (unsigned i = 0; i < n; ++i) {
      out[i] = io_uring_get_sqe(&ring_);
      io_uring_sqe_set_data(out[i], ops[i]);
    }
    return;
  }
  // The kernel takes nothing: each op completes with -EAGAIN instead, and
  // the caller prepares a scratch entry that is never submitted.
  errors_.fetch_add(n, std::memory_order_relaxed);
  for (unsigned i = 0; i < n; ++i) {
    out[i] = &scratch_[i % 2];
    std::memset(out[i], 0, sizeof(io_uring_sqe));
    if (!ops[i]) continue;
    io_uring_cqe failed{};
    failed.user_data = reinterpret_cast<uint64_t>(ops[i]);
    failed.res = -EAGAIN;
    backlog_.push_back(failed);
  }
}

void Ring::cancelFd(int fd) {
  if (fd < 0) return;
  io_uring_prep_cancel_fd(sqe(nullptr), fd, IORING_ASYNC_CANCEL_ALL);
}

void Ring::cancel(Operation* op) {
  io_uring_sqe* s = sqe(nullptr);
  io_uring_prep_cancel64(s, reinterpret_cast<uint64_t>(op), 0);
  s->flags |= IOSQE_CQE_SKIP_SUCCESS;  // nobody waits for it: a burst of them takes no CQ room
}

void Ring::close(UniqueFd fd, bool orderly) {
  if (!fd) return;
  // Linger off in the same submission as the close, or else by a system call.
  const bool linked = orderly && socketSetupSupported() && makeRoom(2);
  if (orderly && !linked)
    ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &kNoLinger, sizeof(kNoLinger));
  if (!linked && !makeRoom(1)) return;  // fd's destructor closes it now
  if (linked) {
    io_uring_sqe* l = io_uring_get_sqe(&ring_);
    prepSetsockopt(l, fd.get(), SOL_SOCKET, SO_LINGER, &kNoLinger, sizeof(kNoLinger));
    io_uring_sqe_set_data(l, nullptr);
    // Hard link: the close follows even if the option failed (not a socket).
    l->flags |= IOSQE_IO_HARDLINK | IOSQE_CQE_SKIP_SUCCESS;
  }
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  io_uring_prep_close(s, fd.release());
  io_uring_sqe_set_data(s, nullptr);
  s->flags |= IOSQE_CQE_SKIP_SUCCESS;  // a failure (never expected) is a null completion
}

void Ring::closeNow(UniqueFd& owned) {
  int fd = owned.get();
  if (fd < 0) return;
  // Queued entries on fd must reach the kernel first: once the number is
  // closed it may be reused, and a late submission would act on another file.
  for (int i = 0; i < kSubmitTries; ++i) {
    int rc = io_uring_submit(&ring_);
    if (rc >= 0) break;
    if (rc == -EBUSY || rc == -EAGAIN) {
      io_uring_get_events(&ring_);
      stash();
    } else if (rc != -EINTR) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  io_uring_sync_cancel_reg reg{};
  reg.fd = fd;
  reg.flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
  reg.timeout.tv_sec = -1;
  reg.timeout.tv_nsec = -1;
  int rc = io_uring_register_sync_cancel(&ring_, &reg);
  if (rc < 0 && rc != -ENOENT && rc != -EALREADY) {
    // Could not cancel: fall back to the asynchronous way and keep the fd.
    errors_.fetch_add(1, std::memory_order_relaxed);
    cancelFd(fd);
    return;
  }
  owned.reset();
}

// Work the next wait would find at once: completions, or (DEFER_TASKRUN)
// task work the kernel queued for this thread, which TASKRUN_FLAG announces
// in the SQ ring's flags: read from shared memory, no system call.
bool Ring::ready() const {
  return io_uring_cq_ready(&ring_) > 0 ||
         (IO_URING_READ_ONCE(*ring_.sq.kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
}

void Ring::busyPoll() {
  if (skip_polls_ > 0) {
    --skip_polls_;
    return;
  }
  // What is queued goes in now: the peer's answer to it is what we wait for.
  if (io_uring_sq_ready(&ring_) > 0) (void)io_uring_submit(&ring_);
  // Work already there (a send completed during the submit) is no poll: it
  // neither counts nor resets the backoff.
  if (ready()) return;
  const auto deadline = std::chrono::steady_clock::now() + busy_poll_;
  for (unsigned n = 1; !ready(); ++n) {
    cpuRelax();
    if (n % 64 == 0 && std::chrono::steady_clock::now() >= deadline) {
      poll_misses_.fetch_add(1, std::memory_order_relaxed);
      // Waits longer than the poll (an idle worker, a slow peer): skip the
      // next 1, 2, 4 ... 64 polls, so polling costs little where it does
      // not pay.
      skip_polls_ = 1u << misses_in_row_;
      misses_in_row_ = std::min(misses_in_row_ + 1, 6u);
      return;
    }
  }
  poll_hits_.fetch_add(1, std::memory_order_relaxed);
  misses_in_row_ /= 2;  // a peer answering sometimes in time, sometimes not, keeps some backoff
}

// io_uring_submit_and_wait_timeout(ring, 1, ts), with IORING_ENTER_NO_IOWAIT
// where the kernel has it. By default a thread that waits in io_uring_enter
// while requests are in flight is marked as waiting for I/O: a worker
// waiting for network traffic would show as iowait on its CPU and as a full
// I/O stall in its cgroup's io.pressure (PSI) all the time it is idle, which
// is not what it does (liburing 2.3 cannot pass the flag: the enter is ours).
int Ring::submitAndWait(__kernel_timespec* ts) {
  if (!no_iowait_) {
    io_uring_cqe* cqe = nullptr;
    return io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, ts, nullptr);
  }
  // The SQ tail published, as liburing's flush does (no SQPOLL here).
  io_uring_sq& sq = ring_.sq;
  if (sq.sqe_head != sq.sqe_tail) {
    sq.sqe_head = sq.sqe_tail;
    io_uring_smp_store_release(sq.ktail, sq.sqe_tail);
  }
  const unsigned submit = sq.sqe_tail - io_uring_smp_load_acquire(sq.khead);
  // A completion at hand: no wait, and no system call unless to submit (as
  // liburing; task work the kernel queued runs with the next enter).
  const unsigned wait_nr = io_uring_cq_ready(&ring_) > 0 ? 0 : 1;
  if (submit == 0 && wait_nr == 0) return 0;
  io_uring_getevents_arg arg{};
  arg.sigmask_sz = _NSIG / 8;
  arg.ts = reinterpret_cast<uint64_t>(ts);
  long rc =
      ::syscall(__NR_io_uring_enter, ring_.ring_fd, submit, wait_nr,
                IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG | kEnterNoIowait, &arg, sizeof(arg));
  return rc < 0 ? -errno : static_cast<int>(rc);
}

Result<unsigned> Ring::run(unsigned wait_ms) {
  __kernel_timespec ts{};
  ts.tv_sec = wait_ms / 1000;
  ts.tv_nsec = static_cast<long long>(wait_ms % 1000) * 1000000;
  // Completions already taken out, or deferred work, must not wait.
  if (!backlog_.empty() || !deferred_.empty())
    ts = {};
  else if (busy_poll_.count() > 0 && wait_ms > 0)
    busyPoll();
  int rc = submitAndWait(&ts);
  Result<unsigned> outcome = 0u;
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
    errors_.fetch_add(1, std::memory_order_relaxed);
    errno = -rc;
    outcome = failErrno("io_uring_submit_and_wait_timeout");
  }
  // Completing may queue new submissions (and so stash more completions) but
  // never dispatches any: take everything out first, then dispatch.
  stash();
  batch_.clear();
  batch_.swap(backlog_);  // both keep their capacity: no allocation per run
  for (const io_uring_cqe& c : batch_)
    if (auto* op = reinterpret_cast<Operation*>(c.user_data)) op->complete(c);
  auto done = static_cast<unsigned>(batch_.size());
  // Deferred work may defer more; a few rounds here, the rest on the next
  // run() (which then does not wait): a cycle cannot hold the thread.
  for (int round = 0; round < kDeferRounds && !deferred_.empty(); ++round) {
    due_.clear();
    due_.swap(deferred_);
    for (Operation* op : due_) {
      io_uring_cqe c{};
      c.user_data = reinterpret_cast<uint64_t>(op);
      op->complete(c);
    }
    done += static_cast<unsigned>(due_.size());
  }
  if (!outcome) return outcome;
  return done;
}

}  // namespace sluice::ztunnel::uring
