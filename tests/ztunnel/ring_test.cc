#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "ztunnel/uring/ring.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sluice/common/unique_fd.h"
#include "ztunnel/uring/ops.h"

using namespace sluice::ztunnel::uring;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {
struct Counter final : Operation {
  int completions = 0;
  int last_res = 0;
  void complete(const io_uring_cqe& cqe) override {
    completions++;
    last_res = cqe.res;
  }
};

// Closes on scope exit: every socket a test opens is closed when it ends.
using Fd = sluice::UniqueFd;

std::unique_ptr<Ring> makeRing(unsigned entries) {
  auto r = Ring::create(entries);
  REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
  return std::move(*r);
}

// Runs the ring until done() holds or the budget is spent; false on timeout.
template <class Pred>
bool runUntil(Ring& ring, Pred done, std::chrono::milliseconds budget = 5s) {
  const auto deadline = Clock::now() + budget;
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    auto n = ring.run(10);
    REQUIRE_MESSAGE(n.has_value(), (n ? "" : n.error().describe()));
  }
  return true;
}

Fd tcpSocket(bool nonblocking = false) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
  REQUIRE(fd >= 0);
  return Fd(fd);
}

sockaddr_in loopback(uint16_t port_be = 0) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = port_be;
  return a;
}

// A socket bound to a loopback port; listening when backlog >= 0. A bound
// socket that does not listen keeps the port from being reused, so a
// connect to it is refused.
Fd boundSocket(sockaddr_in& addr, int backlog) {
  Fd fd = tcpSocket();
  addr = loopback();
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  if (backlog >= 0) REQUIRE(::listen(fd.get(), backlog) == 0);
  return fd;
}

// A listener whose accept queue is full (listen(fd, 0), connections never
// accepted): a further SYN is dropped and a connect to it hangs.
struct Blackhole {
  sockaddr_in addr{};
  Fd listener;
  std::vector<Fd> fillers;

  Blackhole() {
    listener = boundSocket(addr, 0);
    for (int i = 0; i < 64; ++i) {
      Fd c = tcpSocket(/*nonblocking=*/true);
      int rc = ::connect(c.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
      REQUIRE((rc == 0 || errno == EINPROGRESS));
      pollfd p{c.get(), POLLOUT, 0};
      bool connected = rc == 0 || ::poll(&p, 1, 300) == 1;
      fillers.push_back(std::move(c));
      if (!connected) return;  // this SYN was dropped: the queue is full
    }
    FAIL("the listener's accept queue never filled up");
  }
};

struct Dialer {
  void done(int r) {
    calls++;
    res = r;
    busy_in_callback = connect.busy();
    finished = Clock::now();
  }
  Connect<&Dialer::done> connect{this};
  int calls = 0;
  int res = 1;
  bool busy_in_callback = true;
  Clock::time_point finished{};
};

// "-111 ECONNREFUSED": a result as the failure message shows it.
std::string errName(int res) {
  const char* name = res < 0 ? strerrorname_np(-res) : nullptr;
  return std::to_string(res) + (name ? std::string(" ") + name : std::string());
}
}  // namespace

TEST_SUITE("ring") {
  TEST_CASE("completions are handed back to their operation") {
    auto ring = Ring::create(8);
    REQUIRE_MESSAGE(ring.has_value(), (ring ? "" : ring.error().describe()));
    Counter nop;
    io_uring_prep_nop((*ring)->sqe(&nop));
    CHECK(*(*ring)->run(1000) == 1);
    CHECK(nop.completions == 1);
    CHECK(nop.last_res == 0);
  }
  TEST_CASE("more submissions than SQ entries are all queued and completed") {
    auto ring = Ring::create(4);
    REQUIRE(ring.has_value());
    Counter op;
    for (int i = 0; i < 20; ++i) io_uring_prep_nop((*ring)->sqe(&op));
    int done = 0;
    for (int i = 0; i < 20 && done < 20; ++i) done += static_cast<int>(*(*ring)->run(100));
    CHECK(op.completions == 20);
  }
  TEST_CASE("run() returns after its timeout when nothing completes") {
    auto ring = Ring::create(4);
    REQUIRE(ring.has_value());
    int efd = eventfd(0, EFD_CLOEXEC);
    Counter rd;
    uint64_t value = 0;
    io_uring_prep_read((*ring)->sqe(&rd), efd, &value, sizeof(value), 0);
    CHECK(*(*ring)->run(20) == 0);
    CHECK(rd.completions == 0);
    uint64_t one = 7;
    REQUIRE(write(efd, &one, sizeof(one)) == 8);
    CHECK(*(*ring)->run(1000) == 1);
    CHECK(value == 7);
    close(efd);
  }
}

TEST_SUITE("connect") {
  enum class Target { kListening, kRefusing, kBlackhole };
  struct Case {
    const char* name;
    Target target;
    std::chrono::milliseconds deadline;
    bool cancel;  // Ring::cancelFd on the socket 50 ms after the start
    int expected;
    std::chrono::milliseconds min_elapsed, max_elapsed;
  };

  TEST_CASE("Connect completes once with the outcome of connect and deadline") {
    const Case cases[] = {
        {"listening", Target::kListening, 2000ms, false, 0, 0ms, 1000ms},
        {"refused", Target::kRefusing, 2000ms, false, -ECONNREFUSED, 0ms, 1000ms},
        {"deadline", Target::kBlackhole, 100ms, false, -ETIMEDOUT, 95ms, 2000ms},
        {"cancelled", Target::kBlackhole, 10000ms, true, -ECANCELED, 45ms, 2000ms},
    };
    auto ring = makeRing(8);
    for (const Case& c : cases) {
      CAPTURE(c.name);
      sockaddr_in dst{};
      Fd server;
      std::unique_ptr<Blackhole> hole;
      switch (c.target) {
        case Target::kListening:
          server = boundSocket(dst, 16);
          break;
        case Target::kRefusing:
          server = boundSocket(dst, -1);
          break;
        case Target::kBlackhole:
          hole = std::make_unique<Blackhole>();
          dst = hole->addr;
          break;
      }
      Fd fd = tcpSocket();
      Dialer d;
      CHECK_FALSE(d.connect.busy());
      const auto started = Clock::now();
      d.connect.start(*ring, fd.get(), dst, c.deadline);
      CHECK(d.connect.busy());
      if (c.cancel) {
        REQUIRE(runUntil(*ring, [&] { return Clock::now() - started >= 50ms; }));
        CHECK(d.calls == 0);  // still hanging
        CHECK(d.connect.busy());
        ring->cancelFd(fd.get());
      }
      REQUIRE(runUntil(*ring, [&] { return d.calls > 0; }));
      const auto elapsed = d.finished - started;
      CHECK_MESSAGE(d.res == c.expected, "got ", errName(d.res));
      CHECK_FALSE(d.busy_in_callback);  // both CQEs were in before the callback
      CHECK_FALSE(d.connect.busy());
      CHECK(elapsed >= c.min_elapsed);
      CHECK(elapsed < c.max_elapsed);
      // Nothing else arrives for it later.
      (void)*ring->run(50);
      CHECK(d.calls == 1);

      if (c.target == Target::kListening) {  // a real connection was made
        Fd accepted(::accept4(server.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        CHECK(accepted.get() >= 0);
        sockaddr_in peer{};
        socklen_t len = sizeof(peer);
        REQUIRE(::getpeername(fd.get(), reinterpret_cast<sockaddr*>(&peer), &len) == 0);
        CHECK(peer.sin_port == dst.sin_port);
      }
    }
  }

  TEST_CASE("connect chains on a full 4-entry SQ are never split") {
    // Far more Connects (each a linked connect + link timeout) than the SQ
    // holds, started without running the ring in between, to listening,
    // refusing and blackholed targets mixed: each must get its own result
    // (a split pair would leave a connect unbounded or fail the timeout).
    auto ring = makeRing(4);
    sockaddr_in listening{}, refusing{};
    Fd server = boundSocket(listening, 64);
    Fd closed = boundSocket(refusing, -1);
    Blackhole hole;
    constexpr int kConnects = 30;
    std::vector<Fd> fds;
    std::vector<std::unique_ptr<Dialer>> dialers;
    std::vector<int> expected;
    for (int i = 0; i < kConnects; ++i) {
      fds.push_back(tcpSocket());
      dialers.push_back(std::make_unique<Dialer>());
      const sockaddr_in* dst = nullptr;
      switch (i % 3) {
        case 0:
          dst = &listening;
          expected.push_back(0);
          break;
        case 1:
          dst = &refusing;
          expected.push_back(-ECONNREFUSED);
          break;
        default:
          dst = &hole.addr;
          expected.push_back(-ETIMEDOUT);
          break;
      }
      dialers.back()->connect.start(*ring, fds.back().get(), *dst, 200ms);
    }
    auto allDone = [&] {
      for (auto& d : dialers)
        if (d->calls == 0) return false;
      return true;
    };
    REQUIRE(runUntil(*ring, allDone));
    (void)*ring->run(50);
    for (int i = 0; i < kConnects; ++i) {
      CAPTURE(i);
      CHECK_MESSAGE(dialers[i]->res == expected[i], "got ", errName(dialers[i]->res));
      CHECK(dialers[i]->calls == 1);
      CHECK_FALSE(dialers[i]->connect.busy());
    }
    CHECK(ring->errors() == 0);
  }
}

TEST_SUITE("op") {
  struct Deferred {
    void fired(const io_uring_cqe& cqe) {
      calls++;
      CHECK(cqe.res == 0);
      busy_in_callback = op.busy();
      if (again > 0) {
        --again;
        op.soon(*ring);
      }
    }
    Op<&Deferred::fired> op{this};
    Ring* ring = nullptr;
    int calls = 0;
    int again = 0;  // how many more times to re-arm from the callback
    bool busy_in_callback = true;
  };

  TEST_CASE("Op soon completes at the end of run() without waiting - busy() holds until then") {
    auto ring = makeRing(4);
    Deferred d;
    d.ring = ring.get();
    CHECK_FALSE(d.op.busy());
    d.op.soon(*ring);
    CHECK(d.op.busy());
    CHECK(d.calls == 0);  // never synchronous
    // Called outside a run(): the next one does not sleep for its timeout.
    auto t0 = std::chrono::steady_clock::now();
    CHECK(*ring->run(5000) == 1);
    CHECK(std::chrono::steady_clock::now() - t0 < 2500ms);
    CHECK(d.calls == 1);
    CHECK_FALSE(d.busy_in_callback);
    CHECK_FALSE(d.op.busy());

    // Re-armed from inside its callback: a few rounds inside one run(), the
    // rest on the next one, so a cycle cannot hold the thread.
    d.again = 5;
    d.op.soon(*ring);
    CHECK(*ring->run(5000) == 4);
    CHECK(d.calls == 5);
    CHECK(d.op.busy());
    CHECK(*ring->run(5000) == 2);
    CHECK(d.calls == 7);
    CHECK_FALSE(d.op.busy());
    CHECK(*ring->run(20) == 0);
    CHECK(d.calls == 7);
  }

  // Records the order in which ring completions and a deferred op arrive.
  struct Round {
    struct Nop final : Operation {
      Round* r = nullptr;
      void complete(const io_uring_cqe&) override { r->completed(); }
    };
    void completed() {
      order.push_back('c');
      if (order.size() == 1) later.soon(*ring);  // from inside the first completion
    }
    void deferred(const io_uring_cqe&) { order.push_back('d'); }
    Nop a, b;
    Op<&Round::deferred> later{this};
    Ring* ring = nullptr;
    std::string order;
  };

  TEST_CASE("work deferred from a completion runs after the rest of that round, in the same run") {
    auto ring = makeRing(4);
    Round r;
    r.ring = ring.get();
    r.a.r = r.b.r = &r;
    io_uring_prep_nop(ring->sqe(&r.a));  // two completions in one round ...
    io_uring_prep_nop(ring->sqe(&r.b));
    CHECK(*ring->run(1000) == 3);
    CHECK(r.order == "ccd");  // ... and what the first deferred comes after both
    CHECK_FALSE(r.later.busy());
  }

  struct Shutter {
    void shut(const io_uring_cqe& cqe) {
      calls++;
      last_res = cqe.res;
      busy_in_callback = op.busy();
    }
    Op<&Shutter::shut> op{this};
    int calls = 0;
    int last_res = 1;
    bool busy_in_callback = true;
  };

  TEST_CASE("Op shutdown half-closes at once and reports the result from the next run") {
    auto ring = makeRing(4);
    sockaddr_in addr{};
    Fd listener = boundSocket(addr, 4);
    Fd client = tcpSocket();
    REQUIRE(::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    Fd server(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(server.get() >= 0);

    Shutter s;
    s.op.shutdown(*ring, client.get(), SHUT_WR);
    CHECK(s.op.busy());
    CHECK(s.calls == 0);  // the owner hears of it from run(), never from inside the call
    // The FIN is already on its way: the peer reads EOF before the ring runs
    // (no io-wq thread in between).
    char b;
    pollfd p{server.get(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 1000) == 1);
    CHECK(::recv(server.get(), &b, 1, MSG_DONTWAIT) == 0);
    CHECK(*ring->run(1000) == 1);
    CHECK(s.calls == 1);
    CHECK(s.last_res == 0);
    CHECK_FALSE(s.busy_in_callback);
    // Still open for reading after SHUT_WR.
    REQUIRE(::send(server.get(), "x", 1, MSG_NOSIGNAL) == 1);
    CHECK(::recv(client.get(), &b, 1, 0) == 1);

    // A failure arrives the same way, as -errno.
    Fd unconnected = tcpSocket();
    s.op.shutdown(*ring, unconnected.get(), SHUT_WR);
    CHECK(*ring->run(1000) == 1);
    CHECK(s.calls == 2);
    CHECK_MESSAGE(s.last_res == -ENOTCONN, errName(s.last_res));

    // The next request on the same Op is a plain one again (its own result).
    s.op.soon(*ring);
    CHECK(*ring->run(1000) == 1);
    CHECK(s.calls == 3);
    CHECK(s.last_res == 0);
  }

  // A loopback TCP pair: recv completions carry IORING_CQE_F_SOCK_NONEMPTY.
  struct TcpPair {
    TcpPair() {
      sockaddr_in addr{};
      Fd listener = boundSocket(addr, 1);
      client = tcpSocket();
      REQUIRE(::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
      server = Fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      REQUIRE(server.get() >= 0);
    }
    // Sends text and returns once the server side can read it.
    void send(const char* text) {
      REQUIRE(::send(client.get(), text, strlen(text), MSG_NOSIGNAL) ==
              static_cast<ssize_t>(strlen(text)));
      pollfd pf{server.get(), POLLIN, 0};
      REQUIRE(::poll(&pf, 1, 5000) == 1);
    }
    Fd client, server;
  };

  TEST_CASE("recv after a recv that emptied the socket (polled first) still gets what comes") {
    auto ring = makeRing(4);
    TcpPair p;
    Shutter r;
    char buf[4];
    auto recvOnce = [&] {
      int before = r.calls;
      r.op.recv(*ring, p.server.get(), buf, sizeof(buf));
      REQUIRE(runUntil(*ring, [&] { return r.calls > before; }));
      return std::string(buf, r.last_res > 0 ? r.last_res : 0);
    };
    // Six bytes through a 4-byte buffer: the first recv leaves two behind
    // (the next one is a plain recv), the second empties the socket.
    p.send("abcdef");
    CHECK(recvOnce() == "abcd");
    CHECK(recvOnce() == "ef");
    // Emptied: this one is polled before it is read, and data that comes
    // later completes it.
    std::jthread later([&] {
      std::this_thread::sleep_for(20ms);
      (void)!::send(p.client.get(), "gh", 2, MSG_NOSIGNAL);  // no REQUIRE off the test thread
    });
    CHECK(recvOnce() == "gh");
    later.join();
    // Data already there when a polled-first recv is submitted completes it.
    p.send("ij");
    CHECK(recvOnce() == "ij");
    // And the end of the stream completes one with 0.
    ::shutdown(p.client.get(), SHUT_WR);
    CHECK(recvOnce().empty());
    CHECK(r.last_res == 0);
  }

  // A recv armed and submitted (run(0) never polls), and a peer that sends
  // `after` from now: its completion is work that arrives during a poll.
  struct Incoming {
    explicit Incoming(Ring& ring) {
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
      a = Fd(sv[0]);
      b = Fd(sv[1]);
      s.op.recv(ring, a.get(), buf, sizeof(buf));
      CHECK(*ring.run(0) == 0);
    }
    void sendAfter(std::chrono::milliseconds after) {
      peer = std::jthread([this, after] {
        std::this_thread::sleep_for(after);
        (void)!::send(b.get(), "ping", 4, MSG_NOSIGNAL);
      });
    }
    int sv[2];
    Fd a, b;
    Shutter s;  // any Op: its completion is what we wait for
    char buf[8];
    std::jthread peer;
  };

  TEST_CASE("a busy poll sees a completion the peer causes without sleeping for it") {
    auto ring = makeRing(4);
    Incoming in(*ring);
    ring->setBusyPoll(3s);  // far longer than the peer takes: a miss would show
    in.sendAfter(200ms);
    CHECK(*ring->run(5000) == 1);
    CHECK(in.s.last_res == 4);
    // The poll saw the kernel's task-work flag (shared memory, no system
    // call) and run() collected the completion at once.
    CHECK(ring->busyPollHits() == 1);
    CHECK(ring->busyPollMisses() == 0);
  }

  TEST_CASE("busy polls that find nothing are skipped, fewer and fewer - one that pays halves it") {
    auto ring = makeRing(4);
    ring->setBusyPoll(1ms);
    // Runs 1, 3, 6 and 11 poll (and miss); 2, 4-5 and 7-10 skip polling.
    const uint64_t expected[] = {1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 4};
    for (size_t i = 0; i < std::size(expected); ++i) {
      CAPTURE(i);
      CHECK(*ring->run(1) == 0);
      CHECK(ring->busyPollMisses() == expected[i]);
    }
    CHECK(ring->busyPollHits() == 0);
    for (int i = 0; i < 8; ++i) CHECK(*ring->run(1) == 0);  // skipped: 8 of the next 8
    CHECK(ring->busyPollMisses() == 4);
    {
      Incoming in(*ring);
      ring->setBusyPoll(3s);
      in.sendAfter(200ms);
      CHECK(*ring->run(5000) == 1);
      CHECK(ring->busyPollHits() == 1);
    }
    // Four misses in a row, halved by the hit to two: the next miss skips 4.
    ring->setBusyPoll(1ms);
    const uint64_t after_hit[] = {5, 5, 5, 5, 5, 6};
    for (size_t i = 0; i < std::size(after_hit); ++i) {
      CAPTURE(i);
      CHECK(*ring->run(1) == 0);
      CHECK(ring->busyPollMisses() == after_hit[i]);
    }

    ring->setBusyPoll(0us);  // off: never polls
    for (int i = 0; i < 20; ++i) CHECK(*ring->run(1) == 0);
    CHECK(ring->busyPollMisses() == 6);
    CHECK(ring->busyPollHits() == 1);
  }

  TEST_CASE("work already there when a poll starts is no poll: neither a hit nor a miss") {
    auto ring = makeRing(4);
    ring->setBusyPoll(1s);
    Counter nop;
    io_uring_prep_nop(ring->sqe(&nop));  // completes during the poll's submit
    CHECK(*ring->run(1000) == 1);
    CHECK(ring->busyPollHits() == 0);
    CHECK(ring->busyPollMisses() == 0);
    CHECK(*ring->run(0) == 0);  // run(0) never polls (a 1 s poll would miss)
    CHECK(ring->busyPollMisses() == 0);
  }

  struct Acceptor {
    void accepted(const io_uring_cqe& cqe) {
      calls++;
      last_res = cqe.res;
      busy_in_callback.push_back(op.busy());
      CHECK(op.busy() == ((cqe.flags & IORING_CQE_F_MORE) != 0));
      if (cqe.res >= 0) fds.emplace_back(cqe.res);
    }
    Op<&Acceptor::accepted> op{this};
    std::vector<Fd> fds;
    std::vector<bool> busy_in_callback;
    int last_res = 0;
    int calls = 0;
  };

  TEST_CASE("a multishot accept stays busy while more completions follow") {
    auto ring = makeRing(4);
    sockaddr_in addr{};
    Fd listener = boundSocket(addr, 16);
    Acceptor a;
    a.op.acceptMultishot(*ring, listener.get());
    CHECK(a.op.busy());
    std::vector<Fd> clients;
    for (int i = 0; i < 3; ++i) {
      clients.push_back(tcpSocket());
      REQUIRE(::connect(clients.back().get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) ==
              0);
      REQUIRE(runUntil(*ring, [&] { return a.fds.size() == clients.size(); }));
      CHECK(a.op.busy());
    }
    CHECK(a.busy_in_callback == std::vector<bool>{true, true, true});
    for (const Fd& f : a.fds) CHECK((::fcntl(f.get(), F_GETFD) & FD_CLOEXEC) != 0);

    ring->cancelFd(listener.get());
    REQUIRE(runUntil(*ring, [&] { return !a.op.busy(); }));
    CHECK(a.last_res == -ECANCELED);
    CHECK(a.calls == 4);
    CHECK(a.busy_in_callback.back() == false);
  }
}

TEST_SUITE("refused") {
  TEST_CASE("a chain the kernel refuses fails all its entries with EAGAIN on the next run") {
    // IORING_SETUP_SINGLE_ISSUER: a ring created on another thread refuses
    // this thread's submissions (-EEXIST), the one refusal a test can cause.
    std::unique_ptr<Ring> ring;
    std::thread([&] { ring = makeRing(4); }).join();
    REQUIRE(ring);
    Counter nops;
    for (int i = 0; i < 3; ++i) io_uring_prep_nop(ring->sqe(&nops));  // one entry left
    CHECK(ring->errors() == 0);

    sockaddr_in dst{};
    Fd server = boundSocket(dst, 4);
    Fd fd = tcpSocket();
    Dialer d;
    d.connect.start(*ring, fd.get(), dst, 1000ms);  // two entries: refused together
    CHECK(ring->errors() == 2);
    CHECK(d.connect.busy());
    CHECK(d.calls == 0);  // completes from run(), never from inside start()

    auto r = ring->run(1000);
    CHECK_FALSE(r.has_value());  // the ring's own error is surfaced ...
    CHECK(d.calls == 1);         // ... after the refused chain was completed
    CHECK_MESSAGE(d.res == -EAGAIN, "got ", errName(d.res));
    CHECK_FALSE(d.connect.busy());
    CHECK(nops.completions == 0);
  }
}

TEST_SUITE("timer") {
  TEST_CASE("Timer fires once after its delay and a second arm keeps the first deadline") {
    auto ring = makeRing(4);
    int fired = 0;
    Clock::time_point at{};
    Timer* self = nullptr;
    bool armed_in_callback = true;
    Timer timer([&] {
      fired++;
      at = Clock::now();
      armed_in_callback = self->armed();
    });
    self = &timer;
    CHECK_FALSE(timer.armed());
    const auto start = Clock::now();
    timer.arm(*ring, 80ms);
    timer.arm(*ring, 1ms);  // ignored: already armed
    CHECK(timer.armed());
    REQUIRE(runUntil(*ring, [&] { return fired > 0; }));
    CHECK(at - start >= 75ms);
    CHECK(at - start < 2000ms);
    CHECK_FALSE(armed_in_callback);
    CHECK_FALSE(timer.armed());
    (void)*ring->run(120);
    CHECK(fired == 1);

    timer.arm(*ring, 1ms);  // armed again once fired
    CHECK(timer.armed());
    REQUIRE(runUntil(*ring, [&] { return fired == 2; }));
  }
}
