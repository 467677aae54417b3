// Operations that complete themselves: each is a member of the object that
// waits for it and calls one of that object's methods back. An owner may be
// freed only when none of its operations is busy() (the kernel still holds
// a pointer to a busy one).
#pragma once

#include <linux/time_types.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <utility>

#include "sluice/common/addr.h"
#include "ztunnel/uring/ring.h"

namespace sluice::ztunnel::uring {

inline __kernel_timespec toTimespec(std::chrono::milliseconds ms) {
  __kernel_timespec ts{};
  ts.tv_sec = ms.count() / 1000;
  ts.tv_nsec = (ms.count() % 1000) * 1000000;
  return ts;
}

// One request at a time (a multishot one stays busy while the kernel says
// more completions follow); its completion calls (owner->*Method)(cqe).
template <auto Method>
class Op;
template <class Owner, void (Owner::*Method)(const io_uring_cqe&)>
class Op<Method> final : public Operation {
 public:
  explicit Op(Owner* owner) : owner_(owner) {}
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;

  bool busy() const { return busy_; }
  // A socket the last recv left empty (the peer answers later, if at all)
  // is polled before it is read: the read the kernel would first try at
  // submission finds nothing and only costs a socket lock.
  void recv(Ring& r, int fd, void* buf, size_t len) {
    io_uring_sqe* s = start(r);
    io_uring_prep_recv(s, fd, buf, len, 0);
    if (drained_) s->ioprio |= IORING_RECVSEND_POLL_FIRST;
    recv_ = true;
  }
  void send(Ring& r, int fd, const void* buf, size_t len) {
    io_uring_prep_send(start(r), fd, buf, len, MSG_NOSIGNAL);
  }
  // shutdown(2) now, its result delivered at the end of the ring's round
  // like any completion (Ring::defer). Not IORING_OP_SHUTDOWN: the kernel always hands that to an
  // io-wq thread (io_shutdown refuses the inline attempt), a thread wake-up
  // and a context switch per half-closed connection, where a TCP shutdown
  // only queues a FIN and never blocks.
  void shutdown(Ring& r, int fd, int how) {
    injected_ = ::shutdown(fd, how) == 0 ? 0 : -errno;
    inject_ = true;
    busy_ = true;
    r.defer(this);
  }
  void read(Ring& r, int fd, void* buf, unsigned len) {
    io_uring_prep_read(start(r), fd, buf, len, 0);
  }
  // Completes when the socket has an error (a reset), is hung up or has
  // the peer's FIN, not when it is readable or writable: io_uring always
  // adds POLLERR, POLLHUP and POLLRDHUP to what it is asked for, so asking
  // for POLLERR asks for those.
  void pollError(Ring& r, int fd) { io_uring_prep_poll_add(start(r), fd, POLLERR); }
  // Completes when the socket is readable (or has an error, is hung up or
  // has the peer's FIN, as above).
  void pollIn(Ring& r, int fd) { io_uring_prep_poll_add(start(r), fd, POLLIN); }
  // Keeps accepting until an error or a cancellation (SOCK_CLOEXEC sockets).
  void acceptMultishot(Ring& r, int fd) {
    io_uring_prep_multishot_accept(start(r), fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
  // One accept that completes with -EAGAIN at once when no connection is
  // queued instead of waiting for one (kernel 6.10+; older ones: -EINVAL).
  void acceptNoWait(Ring& r, int fd) {
    io_uring_sqe* s = start(r);
    io_uring_prep_accept(s, fd, nullptr, nullptr, SOCK_CLOEXEC);
    s->ioprio |= kAcceptDontWait;
  }
  // Completes once the ring's current round of completions is dispatched
  // (Ring::defer): work deferred out of the current completion.
  void soon(Ring& r) {
    busy_ = true;
    r.defer(this);
  }

  void complete(const io_uring_cqe& cqe) override {
    busy_ = (cqe.flags & IORING_CQE_F_MORE) != 0;
    if (std::exchange(recv_, false))
      drained_ = cqe.res > 0 && (cqe.flags & IORING_CQE_F_SOCK_NONEMPTY) == 0;
    if (inject_) {
      inject_ = false;
      io_uring_cqe done = cqe;
      done.res = injected_;
      return (owner_->*Method)(done);
    }
    (owner_->*Method)(cqe);
  }

 private:
  io_uring_sqe* start(Ring& r) {
    busy_ = true;
    return r.sqe(this);
  }
  static constexpr uint16_t kAcceptDontWait = 1U << 1;  // IORING_ACCEPT_DONTWAIT (6.10)
  Owner* owner_;
  bool busy_ = false;
  bool recv_ = false;     // the request in flight is a recv
  bool drained_ = false;  // the last recv left the socket empty
  bool inject_ = false;   // the completion carries injected_ (a shutdown done at once)
  int injected_ = 0;
};

// What a fresh upstream socket needs before its connect: SO_MARK and
// TCP_NODELAY, and for a transparent one IP(V6)_TRANSPARENT and a bind to
// `bind` (port 0); for a socket to an app, SO_LINGER {1, 0} (`linger0`: a
// killed agent's sockets reset the apps; an orderly close turns it off).
// Connect::start queues it ahead of the connect, linked, in the same
// submission instead of a system call each (kernel 6.11+:
// socketSetupSupported()). `pending` false: done already.
struct SocketSetup {
  bool pending = false;
  uint32_t mark = 0;
  SockAddr bind;  // empty: not transparent
  bool linger0 = false;
};

// Whether this kernel's io_uring has what SocketSetup needs
// (IORING_OP_URING_CMD setsockopt and IORING_OP_BIND); probed once.
bool socketSetupSupported();

// Fill one submission entry (kernel 6.7+ / 6.11+ layouts; liburing 2.3
// has no helpers for them).
void prepSetsockopt(io_uring_sqe* s, int fd, int level, int name, const int* value);
void prepSetsockopt(io_uring_sqe* s, int fd, int level, int name, const void* value, unsigned len);
void prepBind(io_uring_sqe* s, int fd, const SockAddr& addr);

// A TCP connect bounded by a deadline (connect linked to a link timeout),
// after the socket's SocketSetup when that is pending (linked ahead: a
// failed step fails the connect). Calls (owner->*Done)(res) once every
// request is back: res is 0, -ETIMEDOUT when the deadline passed,
// -ECANCELED when cancelled, a failed setup step's -errno (failedStep()
// names it), or the connect's -errno.
template <auto Done>
class Connect;
template <class Owner, void (Owner::*Done)(int)>
class Connect<Done> final {
 public:
  explicit Connect(Owner* owner) : owner_(owner) {}
  Connect(const Connect&) = delete;
  Connect& operator=(const Connect&) = delete;

  bool busy() const { return pending_ > 0; }
  void start(Ring& r, int fd, const SockAddr& dst, std::chrono::milliseconds deadline,
             const SocketSetup& setup = {}) {
    addr_ = dst;
    timeout_ = toTimespec(deadline);
    connect_res_ = 0;
    expired_ = false;
    failed_step_ = nullptr;
    setup_res_ = 0;
    unsigned steps = 0;
    if (setup.pending) {
      mark_ = static_cast<int>(setup.mark);  // SO_MARK reads the u32's bits as an int
      bind_ = setup.bind;
      kinds_[steps++] = kMark;
      kinds_[steps++] = kNoDelay;
      if (!bind_.empty()) {
        kinds_[steps++] = kTransparent;
        kinds_[steps++] = kBind;
      }
      if (setup.linger0) kinds_[steps++] = kLinger;
    }
    io_uring_sqe* s[kSteps + 2];
    Operation* ops[kSteps + 2];
    for (unsigned i = 0; i < steps; ++i) ops[i] = &steps_[i];
    ops[steps] = &connect_;
    ops[steps + 1] = &timer_;
    r.sqes(s, ops, steps + 2);
    const bool v6 = bind_.isV6();
    for (unsigned i = 0; i < steps; ++i) {
      switch (kinds_[i]) {
        case kMark:
          prepSetsockopt(s[i], fd, SOL_SOCKET, SO_MARK, &mark_);
          break;
        case kNoDelay:
          prepSetsockopt(s[i], fd, IPPROTO_TCP, TCP_NODELAY, &one_);
          break;
        case kTransparent:
          prepSetsockopt(s[i], fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT,
                         &one_);
          break;
        case kBind:
          prepBind(s[i], fd, bind_);
          break;
        case kLinger:
          prepSetsockopt(s[i], fd, SOL_SOCKET, SO_LINGER, &kLingerZero, sizeof(kLingerZero));
          break;
      }
      s[i]->flags |= IOSQE_IO_LINK;
    }
    io_uring_prep_connect(s[steps], fd, addr_.sa(), addr_.len());
    s[steps]->flags |= IOSQE_IO_LINK;  // the next entry bounds this one
    io_uring_prep_link_timeout(s[steps + 1], &timeout_, 0);
    pending_ = static_cast<int>(steps) + 2;
  }
  // The setup step that failed the last start ("SO_MARK", "bind" ...), or null.
  const char* failedStep() const { return failed_step_; }
  // The outcome `res` for a record or a log line: empty for a timeout.
  std::string describe(int res) const {
    if (res == -ETIMEDOUT) return {};
    if (failed_step_) return std::string(failed_step_) + " failed: " + std::strerror(-res);
    return std::strerror(-res);
  }

 private:
  static constexpr unsigned kSteps = 5;
  static constexpr int kConnect = -1, kTimer = -2;  // Part::which; >= 0: a setup step
  enum Kind : uint8_t { kMark, kNoDelay, kTransparent, kBind, kLinger };
  static constexpr linger kLingerZero{1, 0};  // SocketSetup::linger0's value
  struct Part final : Operation {
    Part(Connect* c_, int w) : c(c_), which(w) {}
    Connect* c;
    int which;
    void complete(const io_uring_cqe& cqe) override { c->part(which, cqe.res); }
  };
  const char* stepName(int which) const {
    static constexpr const char* kNames[] = {"SO_MARK", "TCP_NODELAY", "IP_TRANSPARENT", "bind",
                                             "SO_LINGER"};
    Kind k = kinds_[static_cast<unsigned>(which)];
    return k == kTransparent && bind_.isV6() ? "IPV6_TRANSPARENT" : kNames[k];
  }
  void part(int which, int res) {
    if (which == kTimer) {
      expired_ = res == -ETIME;
    } else if (which == kConnect) {
      connect_res_ = res;
    } else if (res < 0 && res != -ECANCELED && !failed_step_) {
      failed_step_ = stepName(which);
      setup_res_ = res;
    }
    if (--pending_ > 0) return;
    int out = connect_res_;
    if (out == -ECANCELED && failed_step_)
      out = setup_res_;  // the chain broke before the connect
    else
      failed_step_ = nullptr;  // the connect's own outcome (a refused ring fails every entry)
    if (out == -ECANCELED && expired_) out = -ETIMEDOUT;
    (owner_->*Done)(out);
  }
  Owner* owner_;
  Part connect_{this, kConnect}, timer_{this, kTimer};
  std::array<Part, kSteps> steps_{{{this, 0}, {this, 1}, {this, 2}, {this, 3}, {this, 4}}};
  std::array<Kind, kSteps> kinds_{};  // what each step of the last start is
  // Read by the kernel until the requests complete:
  SockAddr addr_;
  __kernel_timespec timeout_{};
  int mark_ = 0;
  SockAddr bind_;
  const int one_ = 1;
  int pending_ = 0;
  int connect_res_ = 0;
  int setup_res_ = 0;
  bool expired_ = false;
  const char* failed_step_ = nullptr;
};

// A one-shot timer that calls its owner back. The owner outlives it (a
// worker member), and the ring is torn down first.
class Timer final : public Operation {
 public:
  explicit Timer(std::function<void()> fire) : fire_(std::move(fire)) {}

  // Fires once after `after`, unless already armed (then the earlier
  // deadline stands).
  void arm(Ring& ring, std::chrono::milliseconds after) {
    if (armed_) return;
    ts_ = toTimespec(after);
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
