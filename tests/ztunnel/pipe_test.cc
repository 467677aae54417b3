#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "ztunnel/relay/pipe.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sluice/common/unique_fd.h"

using namespace sluice::ztunnel;
using relay::Pipe;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Closes on scope exit: every socket a test opens is closed when it ends.
using Fd = sluice::UniqueFd;

std::unique_ptr<uring::Ring> makeRing(unsigned entries = 64) {
  auto r = uring::Ring::create(entries);
  REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
  return std::move(*r);
}

// Runs the ring (and `step`, the test's side of the sockets, between runs)
// until done() holds or the budget is spent; false on timeout.
bool runUntil(uring::Ring& ring, const std::function<bool()>& done,
              const std::function<void()>& step = {}, std::chrono::milliseconds budget = 10s) {
  const auto deadline = Clock::now() + budget;
  for (;;) {
    if (step) step();
    if (done()) return true;
    if (Clock::now() >= deadline) return false;
    auto n = ring.run(1);
    REQUIRE_MESSAGE(n.has_value(), (n ? "" : n.error().describe()));
  }
}

// Runs the ring for a while; returns the number of completions dispatched.
unsigned runFor(uring::Ring& ring, std::chrono::milliseconds d,
                const std::function<void()>& step = {}) {
  unsigned total = 0;
  const auto deadline = Clock::now() + d;
  while (Clock::now() < deadline) {
    if (step) step();
    auto n = ring.run(5);
    REQUIRE(n.has_value());
    total += *n;
  }
  return total;
}

void setInt(int fd, int level, int opt, int v) {
  REQUIRE(::setsockopt(fd, level, opt, &v, sizeof(v)) == 0);
}
int getInt(int fd, int level, int opt) {
  int v = 0;
  socklen_t len = sizeof(v);
  REQUIRE(::getsockopt(fd, level, opt, &v, &len) == 0);
  return v;
}

// A connected loopback TCP pair: {test end (non-blocking), proxy end}.
std::pair<Fd, Fd> tcpPair() {
  Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(listener.get() >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  REQUIRE(::listen(listener.get(), 1) == 0);
  Fd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(client.get() >= 0);
  REQUIRE(::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  Fd server(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(server.get() >= 0);
  REQUIRE(::fcntl(client.get(), F_SETFL, O_NONBLOCK) == 0);
  return {std::move(client), std::move(server)};
}

// The byte at `off` of a stream: a little-endian 32-bit counter, xored with
// a per-direction seed (a lost, repeated or reordered chunk shows).
char patternAt(uint64_t off, uint32_t seed) {
  uint32_t word = static_cast<uint32_t>(off / 4) ^ seed;
  return static_cast<char>(word >> (8 * (off % 4)));
}
void fillPattern(char* out, size_t n, uint64_t off, uint32_t seed) {
  for (size_t i = 0; i < n; ++i) out[i] = patternAt(off + i, seed);
}
// Offset of the first byte of `data` (at stream offset `off`) that is wrong, or -1.
int64_t firstMismatch(const char* data, size_t n, uint64_t off, uint32_t seed) {
  for (size_t i = 0; i < n; ++i)
    if (data[i] != patternAt(off + i, seed)) return static_cast<int64_t>(off + i);
  return -1;
}

// The test's end of a connection, driven between ring runs with
// non-blocking calls: sends the pattern up to `send_limit` (then shuts down
// its write side when `shut_when_done`), reads and checks the peer's.
struct Peer {
  int fd = -1;
  uint32_t out_seed = 0, in_seed = 0;
  uint64_t send_limit = 0;
  bool shut_when_done = false;
  bool reading = true;

  uint64_t sent = 0, received = 0;
  bool shut = false, eof = false;
  int64_t mismatch = -1;
  int error = 0;

  void step() {
    char buf[64 * 1024];
    while (sent < send_limit && error == 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof(buf), send_limit - sent));
      fillPattern(buf, n, sent, out_seed);
      ssize_t k = ::send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) error = errno;
        break;
      }
      sent += static_cast<uint64_t>(k);
    }
    if (shut_when_done && !shut && sent == send_limit) {
      REQUIRE(::shutdown(fd, SHUT_WR) == 0);
      shut = true;
    }
    while (reading && !eof && error == 0) {
      ssize_t k = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) error = errno;
        break;
      }
      if (k == 0) {
        eof = true;
        break;
      }
      if (mismatch < 0) mismatch = firstMismatch(buf, static_cast<size_t>(k), received, in_seed);
      received += static_cast<uint64_t>(k);
    }
  }
};

// Records every callback, per pipe.
struct Recorder final : relay::PipeOwner {
  struct Events {
    uint64_t moved = 0, sent = 0;
    int sends = 0;  // pipeSent calls: sends completed
    int readable = 0, ended = 0, failed = 0;
    int err = 0;
    bool sending = false;
  };
  std::map<const Pipe*, Events> events;
  int callbacks = 0;
  std::vector<const Pipe*> ended_order;
  bool closes_next = false;  // pipeSinkClosesNext's answer

  Events& of(const Pipe& p) { return events[&p]; }
  void pipeMoved(Pipe& p, size_t n) override {
    callbacks++;
    of(p).moved += n;
  }
  void pipeReadable(Pipe& p) override {
    callbacks++;
    of(p).readable++;
  }
  void pipeSent(Pipe& p, size_t n) override {
    callbacks++;
    of(p).sent += n;
    of(p).sends++;
  }
  void pipeEnded(Pipe& p) override {
    callbacks++;
    of(p).ended++;
    ended_order.push_back(&p);
  }
  void pipeFailed(Pipe& p, int err, bool sending) override {
    callbacks++;
    of(p).failed++;
    of(p).err = err;
    of(p).sending = sending;
  }
  bool pipeSinkClosesNext(const Pipe&) const override { return closes_next; }
};

// "-111 ECONNREFUSED": a result as the failure message shows it.
std::string errName(int res) {
  const char* name = res < 0 ? strerrorname_np(-res) : nullptr;
  return std::to_string(res) + (name ? std::string(" ") + name : std::string());
}

constexpr uint32_t kUpSeed = 0x11223344, kDownSeed = 0xa5a5a5a5;

// A <-> proxy <-> B over two loopback TCP connections, relayed by two
// socket->socket pipes (up: A's bytes to B, down: B's bytes to A).
struct Proxy {
  std::unique_ptr<uring::Ring> ring = makeRing();
  Recorder rec;
  Fd a, pa, pb, b;
  Pipe up, down;
  Peer A, B;

  explicit Proxy(size_t buffer, size_t grow_to = 0)
      : up(*ring, rec, buffer, grow_to), down(*ring, rec, buffer, grow_to) {
    std::tie(a, pa) = tcpPair();
    std::tie(b, pb) = tcpPair();
    A.fd = a.get();
    A.out_seed = B.in_seed = kUpSeed;
    B.fd = b.get();
    B.out_seed = A.in_seed = kDownSeed;
  }
  void start() {
    up.start(pa.get(), pb.get());
    down.start(pb.get(), pa.get());
  }
  void step() {
    A.step();
    B.step();
  }
  // Runs (stepping the peers) until `up` has read nothing new for `still`;
  // false if that never happens within the budget.
  bool runUntilStalled(std::chrono::milliseconds still) {
    uint64_t last = 0;
    auto changed = Clock::now();
    return runUntil(
        *ring,
        [&] {
          if (up.bytes() != last) {
            last = up.bytes();
            changed = Clock::now();
          }
          return last > 0 && Clock::now() - changed >= still;
        },
        [&] { step(); });
  }
  // The proxy's fds outlive the pipes' requests.
  void drain() {
    ring->cancelFd(pa.get());
    ring->cancelFd(pb.get());
    CHECK(runUntil(*ring, [&] { return !up.busy() && !down.busy(); }));
  }
};

}  // namespace

TEST_SUITE("pipe") {
  TEST_CASE("socket to socket relays 8 MiB each way intact with half-close") {
    constexpr uint64_t kTotal = 8ull << 20;
    Proxy p(64 * 1024);
    p.A.send_limit = kTotal;
    p.A.shut_when_done = true;
    // B holds its last MiB back until it has read A's EOF: B -> A must keep
    // flowing after A -> B was half-closed.
    p.B.send_limit = kTotal - (1u << 20);
    bool a_eof_when_b_eof = true;
    uint64_t b_sent_when_b_eof = 0;
    p.start();
    REQUIRE(runUntil(
        *p.ring, [&] { return p.A.eof && p.B.eof && p.rec.ended_order.size() == 2; },
        [&] {
          p.step();
          if (p.B.eof && p.B.send_limit < kTotal) {
            a_eof_when_b_eof = p.A.eof;
            b_sent_when_b_eof = p.B.sent;
            p.B.send_limit = kTotal;
            p.B.shut_when_done = true;
          }
        },
        30s));
    CHECK(p.A.error == 0);
    CHECK(p.B.error == 0);
    CHECK(p.B.received == kTotal);
    CHECK(p.A.received == kTotal);
    CHECK(p.B.mismatch == -1);
    CHECK(p.A.mismatch == -1);
    CHECK_FALSE(a_eof_when_b_eof);  // half-close: A -> B ended, B -> A still open
    CHECK(b_sent_when_b_eof <= kTotal - (1u << 20));

    for (Pipe* pipe : {&p.up, &p.down}) {
      const auto& e = p.rec.of(*pipe);
      CHECK(pipe->bytes() == kTotal);
      CHECK(e.moved == kTotal);
      CHECK(e.sent == kTotal);
      CHECK(e.ended == 1);
      CHECK(e.failed == 0);
      CHECK(e.readable == 0);  // socket sinks are never pulled
      CHECK(pipe->sinkDone());
      CHECK_FALSE(pipe->busy());  // nothing more to read after EOF
    }
    CHECK(p.rec.ended_order == std::vector<const Pipe*>{&p.up, &p.down});
    p.drain();
  }

  TEST_CASE("backpressure: a sink that does not read stops the source then resumes") {
    constexpr size_t kBuffer = 64 * 1024;
    constexpr uint64_t kTotal = 8ull << 20;
    Proxy p(kBuffer);
    // Fixed (not autotuned) buffers between the pipe and B.
    setInt(p.pb.get(), SOL_SOCKET, SO_SNDBUF, 64 * 1024);
    setInt(p.b.get(), SOL_SOCKET, SO_RCVBUF, 64 * 1024);
    const uint64_t bound = static_cast<uint64_t>(getInt(p.pb.get(), SOL_SOCKET, SO_SNDBUF)) +
                           static_cast<uint64_t>(getInt(p.b.get(), SOL_SOCKET, SO_RCVBUF)) +
                           kBuffer + 64 * 1024;  // slack for the kernel's accounting
    p.A.send_limit = kTotal;
    p.A.shut_when_done = true;
    p.B.reading = false;
    p.start();

    // Run until the pipe has read nothing new for 300 ms.
    REQUIRE(p.runUntilStalled(300ms));
    const uint64_t stalled = p.up.bytes();
    MESSAGE("stalled after ", stalled, " bytes (bound ", bound, ")");
    CHECK(stalled >= kBuffer);
    CHECK(stalled <= bound);
    CHECK(p.A.sent < kTotal);  // A is held back too
    CHECK(p.up.busy());        // a send to B is waiting for room
    CHECK(p.rec.of(p.up).sent <= stalled);
    CHECK(p.rec.of(p.up).failed == 0);

    // B reads again: everything arrives, intact, with A's EOF.
    p.B.reading = true;
    REQUIRE(runUntil(
        *p.ring, [&] { return p.B.eof && p.rec.of(p.up).ended > 0; }, [&] { p.step(); }, 30s));
    CHECK(p.up.bytes() == kTotal);
    CHECK(p.B.received == kTotal);
    CHECK(p.B.mismatch == -1);
    CHECK(p.rec.of(p.up).ended == 1);
    p.drain();
  }

  TEST_CASE("a reset by the peer reaches the owner as pipeFailed") {
    Proxy p(16 * 1024);
    p.start();
    CHECK(runFor(*p.ring, 20ms) == 0);  // both pipes idle, waiting to read
    // B resets: SO_LINGER 0 then close sends an RST.
    linger lg{1, 0};
    REQUIRE(::setsockopt(p.b.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    p.b.reset();
    REQUIRE(runUntil(*p.ring, [&] { return p.rec.of(p.down).failed > 0; }));
    const auto& down = p.rec.of(p.down);
    CHECK_MESSAGE((down.err == -ECONNRESET || down.err == -EPIPE), "got ", errName(down.err));
    CHECK_FALSE(down.sending);  // the receive from B failed
    CHECK(p.rec.of(p.up).failed == 0);

    // A's next bytes cannot be written to B.
    p.A.send_limit = 4096;
    REQUIRE(runUntil(
        *p.ring, [&] { return p.rec.of(p.up).failed > 0; }, [&] { p.A.step(); }));
    const auto& up = p.rec.of(p.up);
    CHECK_MESSAGE((up.err == -ECONNRESET || up.err == -EPIPE), "got ", errName(up.err));
    CHECK(up.sending);
    CHECK(up.sent == 0);
    CHECK(down.failed == 1);
    CHECK(up.failed == 1);
    p.drain();
  }

  TEST_CASE("a stalled pipe watches its source: a reset is noticed though the sink never reads") {
    Proxy p(16 * 1024);
    setInt(p.pb.get(), SOL_SOCKET, SO_SNDBUF, 16 * 1024);
    setInt(p.b.get(), SOL_SOCKET, SO_RCVBUF, 16 * 1024);
    p.A.send_limit = 4ull << 20;
    p.B.reading = false;
    p.start();
    // A moves bytes until the pipe holds a buffer B does not take: no
    // receive is posted on A's socket then.
    REQUIRE(p.runUntilStalled(200ms));
    p.up.tick();  // bytes wait
    CHECK_FALSE(p.up.watching());

    SUBCASE("nothing taken until the next call: it watches, and A's reset reaches the owner") {
      // A pipe that is only idle (nothing waiting) does not watch.
      p.down.tick();
      p.down.tick();
      CHECK_FALSE(p.down.watching());
      p.up.tick();
      CHECK(p.up.watching());
      // A resets. Without the watch nothing would complete: B never reads.
      linger lg{1, 0};
      REQUIRE(::setsockopt(p.a.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
      p.a.reset();
      REQUIRE(runUntil(
          *p.ring, [&] { return p.rec.of(p.up).failed > 0; }, {}, 5s));
      const auto& up = p.rec.of(p.up);
      CHECK_MESSAGE(up.err == -ECONNRESET, "got ", errName(up.err));
      CHECK_FALSE(up.sending);
    }
    SUBCASE("the sink takes bytes before the next call: it does not watch") {
      char buf[64 * 1024];
      size_t took = 0;
      for (ssize_t k; (k = ::recv(p.b.get(), buf, sizeof(buf), MSG_DONTWAIT)) > 0;)
        took += static_cast<size_t>(k);
      REQUIRE(took > 0);
      const uint64_t sent = p.rec.of(p.up).sent;
      REQUIRE(runUntil(
          *p.ring, [&] { return p.rec.of(p.up).sent > sent; }, [&] { p.A.step(); }));
      p.up.tick();
      CHECK_FALSE(p.up.watching());
    }
    p.up.stop();
    p.down.stop();
    p.drain();
  }

  TEST_CASE("an idle source gives its buffer back - the next bytes come into a new one") {
    Proxy p(4096, 16384);
    p.A.send_limit = 200000;
    p.start();
    REQUIRE(runUntil(
        *p.ring, [&] { return p.B.received == 200000; }, [&] { p.step(); }));
    CHECK(p.up.bufferBytes() == 16384);  // grown by the bulk, a receive in flight on it
    CHECK(p.down.bufferBytes() == 4096);
    // Idle from one tick to the next: both directions let their buffers go.
    p.up.tick();
    p.down.tick();
    runFor(*p.ring, 20ms);
    CHECK(p.up.bufferBytes() == 16384);  // one tick alone says nothing
    p.up.tick();
    p.down.tick();
    REQUIRE(
        runUntil(*p.ring, [&] { return p.up.bufferBytes() == 0 && p.down.bufferBytes() == 0; }));
    CHECK(p.up.busy());  // waiting on the source, without a buffer
    CHECK(p.rec.of(p.up).failed == 0);

    SUBCASE("bytes come: a buffer of the first size takes them, intact, both ways") {
      p.A.send_limit = 300000;
      p.B.send_limit = 3000;  // one read, into a buffer of the first size
      REQUIRE(runUntil(
          *p.ring, [&] { return p.B.received == 300000 && p.A.received == 3000; },
          [&] { p.step(); }));
      CHECK(p.B.mismatch == -1);
      CHECK(p.A.mismatch == -1);
      CHECK(p.down.bufferBytes() == 4096);
      CHECK(p.rec.of(p.up).moved == 300000);
    }
    SUBCASE("the source's FIN comes: it reaches the sink") {
      REQUIRE(::shutdown(p.a.get(), SHUT_WR) == 0);
      REQUIRE(runUntil(
          *p.ring, [&] { return p.B.eof; }, [&] { p.step(); }));
      CHECK(p.rec.of(p.up).ended == 1);
      CHECK(p.rec.of(p.up).failed == 0);
    }
    SUBCASE("the source resets: the owner hears it") {
      linger lg{1, 0};
      REQUIRE(::setsockopt(p.a.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
      p.a.reset();
      REQUIRE(runUntil(*p.ring, [&] { return p.rec.of(p.up).failed > 0; }));
      CHECK_MESSAGE(p.rec.of(p.up).err == -ECONNRESET, "got ", errName(p.rec.of(p.up).err));
    }
    SUBCASE("frozen for an upgrade: nothing pending, no error, and it settles") {
      p.up.freeze();
      p.down.freeze();
      p.drain();
      CHECK(p.up.pending().empty());
      CHECK_FALSE(p.up.sourceEnded());
      CHECK(p.up.frozenError() == 0);
      return;
    }
    p.up.stop();
    p.down.stop();
    p.drain();
  }

  TEST_CASE("a receive is cancelled only after a whole tick in flight, not the one just posted") {
    Proxy p(4096);
    p.start();  // a new connection: its first receive, no byte yet
    p.up.tick();
    runFor(*p.ring, 20ms);
    CHECK(p.up.bufferBytes() == 4096);
    // A byte comes and goes: the receive in flight at the next tick is a new one.
    p.A.send_limit = 1;
    REQUIRE(runUntil(
        *p.ring, [&] { return p.B.received == 1; }, [&] { p.step(); }));
    REQUIRE(runUntil(*p.ring, [&] { return p.up.busy(); }));
    p.up.tick();
    runFor(*p.ring, 20ms);
    CHECK(p.up.bufferBytes() == 4096);
    // The same receive still in flight at the tick after: idle, parked.
    p.up.tick();
    REQUIRE(runUntil(*p.ring, [&] { return p.up.bufferBytes() == 0; }));
    p.A.send_limit = 2;
    REQUIRE(runUntil(
        *p.ring, [&] { return p.B.received == 2; }, [&] { p.step(); }));
    CHECK(p.B.mismatch == -1);
    p.up.stop();
    p.down.stop();
    p.drain();
  }

  TEST_CASE("ticks at any moment of a transfer lose, repeat and reorder nothing") {
    // Every step ticks both pipes: whenever a tick finds a receive in flight
    // since the last one, it cancels it, maybe as the kernel completes it
    // with bytes. A sends 8 MiB in 1 MiB pieces and waits, between pieces,
    // until the bulk direction has parked: each piece after the first
    // starts on a parked pipe.
    Proxy p(4096, 65536);
    constexpr uint64_t kPiece = 1u << 20, kTotal = 8u << 20;
    p.B.send_limit = 2u << 20;
    p.start();
    int ticks = 0, parked = 0;
    auto step = [&] {
      p.step();
      p.up.tick();
      p.down.tick();
      ++ticks;
    };
    for (uint64_t limit = kPiece; limit <= kTotal; limit += kPiece) {
      p.A.send_limit = limit;
      REQUIRE(runUntil(
          *p.ring,
          [&] { return p.B.received == limit && (limit == kTotal || p.up.bufferBytes() == 0); },
          step, 30s));
      parked += limit < kTotal;
    }
    REQUIRE(runUntil(
        *p.ring, [&] { return p.A.received == p.B.send_limit; }, step, 30s));
    CHECK(p.B.mismatch == -1);
    CHECK(p.A.mismatch == -1);
    CHECK(p.rec.of(p.up).failed == 0);
    CHECK(p.rec.of(p.down).failed == 0);
    CHECK(p.rec.of(p.up).moved == kTotal);
    MESSAGE(ticks, " ticks; the bulk direction parked ", parked, " times mid-transfer");
    p.up.stop();
    p.down.stop();
    p.drain();
  }

  TEST_CASE("a stalled pipe whose source half-closed and then resets: the next calls find it") {
    // A's bytes all reach the proxy's socket (its buffer holds them), so
    // A's FIN arrives behind them while the pipe waits for B.
    Proxy p(16 * 1024);
    setInt(p.pb.get(), SOL_SOCKET, SO_SNDBUF, 16 * 1024);
    setInt(p.b.get(), SOL_SOCKET, SO_RCVBUF, 16 * 1024);
    setInt(p.pa.get(), SOL_SOCKET, SO_RCVBUF, 1 << 20);
    p.A.send_limit = 256 * 1024;
    p.A.shut_when_done = true;
    p.B.reading = false;
    p.start();
    REQUIRE(p.runUntilStalled(200ms));
    REQUIRE(p.A.shut);
    p.up.tick();
    p.up.tick();  // armed: completes at once with the FIN (POLLRDHUP)
    REQUIRE(runUntil(
        *p.ring, [&] { return !p.up.watching(); }, {}, 5s));
    p.up.tick();  // reads the socket's error: none
    CHECK_FALSE(p.up.watching());
    CHECK(runFor(*p.ring, 20ms) == 0);
    linger lg{1, 0};
    REQUIRE(::setsockopt(p.a.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    p.a.reset();
    CHECK(runFor(*p.ring, 50ms) == 0);  // nothing is armed: only the next call finds it
    CHECK(p.rec.of(p.up).failed == 0);
    p.up.tick();
    REQUIRE(runUntil(
        *p.ring, [&] { return p.rec.of(p.up).failed > 0; }, {}, 5s));
    const auto& up = p.rec.of(p.up);
    CHECK_MESSAGE(up.err == -ECONNRESET, "got ", errName(up.err));  // EPIPE in CLOSE_WAIT
    CHECK_FALSE(up.sending);
    p.up.stop();
    p.down.stop();
    p.drain();
  }

  TEST_CASE("pushed source to socket delivers every chunk in order then EOF") {
    auto ring = makeRing();
    Recorder rec;
    auto [b, pb] = tcpPair();
    setInt(pb.get(), SOL_SOCKET, SO_SNDBUF, 16 * 1024);  // many partial sends
    Pipe pipe(*ring, rec, 4096);
    pipe.start(-1, pb.get());
    CHECK_FALSE(pipe.busy());  // nothing to send yet
    Peer B{.fd = b.get(), .in_seed = kUpSeed};

    // Chunks of varied sizes, the first half pushed at once: all but the
    // first queue behind its send.
    std::vector<size_t> sizes;
    uint64_t total = 0;
    for (size_t i = 0; total < (2u << 20); ++i) {
      sizes.push_back(1 + (i * 977) % 8191);
      total += sizes.back();
    }
    uint64_t pushed = 0;
    size_t next = 0;
    auto pushOne = [&] {
      std::vector<char> chunk(sizes[next]);
      fillPattern(chunk.data(), chunk.size(), pushed, kUpSeed);
      pipe.push(chunk.data(), chunk.size());
      pushed += chunk.size();
      ++next;
    };
    pushOne();
    CHECK(pipe.busy());  // the first chunk is being sent
    while (next < sizes.size() / 2) pushOne();
    CHECK(pipe.busy());
    CHECK(pipe.bytes() == pushed);
    CHECK(rec.of(pipe).moved == pushed);  // pipeMoved comes from push() itself
    CHECK(pipe.available() == pushed);    // nothing completed yet
    CHECK(rec.of(pipe).sent == 0);

    // The rest is pushed while sends are in flight, a chunk per round.
    REQUIRE(runUntil(
        *ring, [&] { return B.eof && rec.of(pipe).ended > 0; },
        [&] {
          if (next < sizes.size()) {
            pushOne();
            if (next == sizes.size()) {
              pipe.pushEnd();
              CHECK_FALSE(pipe.ended());  // bytes still to go
            }
          }
          B.step();
        },
        30s));
    CHECK(pushed == total);
    CHECK(B.received == total);
    CHECK(B.mismatch == -1);
    CHECK(B.error == 0);
    const auto& e = rec.of(pipe);
    CHECK(e.sent == total);
    CHECK(e.moved == total);
    CHECK(e.ended == 1);
    CHECK(e.failed == 0);
    CHECK(pipe.sinkDone());
    CHECK(pipe.available() == 0);
    CHECK(pipe.ended());
    CHECK_FALSE(pipe.busy());

    // Nothing is taken after the end.
    const char late[] = "late";
    pipe.push(late, sizeof(late));
    CHECK(pipe.bytes() == total);
    CHECK(rec.of(pipe).moved == total);
    CHECK_FALSE(pipe.busy());
  }

  TEST_CASE("an owner that closes the sink next: the EOF skips shutdown(2) and the close ends it") {
    for (bool closes_next : {false, true}) {
      CAPTURE(closes_next);
      auto ring = makeRing();
      Recorder rec;
      rec.closes_next = closes_next;
      auto [b, pb] = tcpPair();
      Pipe pipe(*ring, rec, 4096);
      pipe.start(-1, pb.get());
      Peer B{.fd = b.get(), .in_seed = kUpSeed};
      std::vector<char> chunk(3000);
      fillPattern(chunk.data(), chunk.size(), 0, kUpSeed);
      pipe.push(chunk.data(), chunk.size());
      pipe.pushEnd();
      REQUIRE(runUntil(
          *ring, [&] { return rec.of(pipe).ended == 1; }, [&] { B.step(); }));
      CHECK(pipe.sinkDone());
      CHECK_FALSE(pipe.busy());
      runFor(*ring, 50ms, [&] { B.step(); });
      CHECK(B.received == chunk.size());
      CHECK(B.mismatch == -1);
      // Without the skip the peer has its FIN now; with it, the socket is
      // still open both ways until the owner closes it.
      CHECK(B.eof == !closes_next);
      pb.reset();
      REQUIRE(runUntil(
          *ring, [&] { return B.eof; }, [&] { B.step(); }));
      CHECK(B.error == 0);
    }
  }

  TEST_CASE("socket source to pulled sink re-reads only after a full pull") {
    constexpr size_t kBuffer = 4096;
    constexpr uint64_t kTotal = 10000;
    auto ring = makeRing();
    Recorder rec;
    auto [a, pa] = tcpPair();
    Pipe pipe(*ring, rec, kBuffer);
    pipe.start(pa.get(), -1);
    CHECK(pipe.busy());  // reading
    CHECK(pipe.available() == 0);
    CHECK_FALSE(pipe.ended());
    Peer A{.fd = a.get(), .out_seed = kUpSeed, .send_limit = kTotal};
    A.step();
    REQUIRE(A.sent == kTotal);

    REQUIRE(runUntil(*ring, [&] { return rec.of(pipe).readable == 1; }));
    CHECK(pipe.available() == kBuffer);
    CHECK(pipe.bytes() == kBuffer);
    CHECK(rec.of(pipe).moved == kBuffer);
    CHECK_FALSE(pipe.busy());  // the buffer is full: no read
    CHECK_FALSE(pipe.ended());
    CHECK(runFor(*ring, 30ms) == 0);
    CHECK(rec.of(pipe).readable == 1);

    std::vector<char> got;
    auto pullSome = [&](size_t n) {
      std::vector<char> tmp(n);
      size_t k = pipe.pull(tmp.data(), n);
      got.insert(got.end(), tmp.begin(), tmp.begin() + static_cast<long>(k));
      return k;
    };
    // Room for a frame header before the bytes (roomBefore): the kRoom
    // bytes in front of the buffer, later bytes already taken. Writing
    // there changes none of the bytes still to come (checked below).
    REQUIRE(pipe.roomBefore(9) == pipe.peek().data() - 9);
    CHECK(pipe.roomBefore(Pipe::kRoom + 1) == nullptr);
    std::memset(pipe.roomBefore(Pipe::kRoom), 'h', Pipe::kRoom);
    // A partial pull leaves the rest and still does not read.
    CHECK(pullSome(100) == 100);
    REQUIRE(pipe.roomBefore(9) == pipe.peek().data() - 9);
    std::memset(pipe.roomBefore(Pipe::kRoom), 'h', Pipe::kRoom);
    CHECK(pipe.available() == kBuffer - 100);
    CHECK_FALSE(pipe.busy());
    CHECK(runFor(*ring, 30ms) == 0);
    CHECK(pipe.bytes() == kBuffer);
    // Pulling more than is there takes exactly what is there, then reads.
    CHECK(pullSome(kBuffer) == kBuffer - 100);
    CHECK(pipe.available() == 0);
    CHECK(pipe.roomBefore(9) == nullptr);  // nothing buffered
    CHECK(pipe.busy());
    CHECK_FALSE(pipe.ended());  // empty, but not the end

    // Drain the rest in odd sizes, pulling only when told.
    REQUIRE(runUntil(*ring, [&] {
      while (pullSome(777) > 0) {
      }
      return got.size() == kTotal;
    }));
    CHECK(pipe.bytes() == kTotal);
    CHECK(firstMismatch(got.data(), got.size(), 0, kUpSeed) == -1);
    CHECK_FALSE(pipe.ended());
    CHECK(pipe.busy());

    // EOF: readable once more, nothing to pull and ended().
    const int readable_before = rec.of(pipe).readable;
    REQUIRE(::shutdown(a.get(), SHUT_WR) == 0);
    REQUIRE(runUntil(*ring, [&] { return rec.of(pipe).readable > readable_before; }));
    CHECK(pipe.available() == 0);
    CHECK(pipe.ended());
    char c;
    CHECK(pipe.pull(&c, 1) == 0);
    CHECK_FALSE(pipe.busy());  // no read after EOF
    CHECK(rec.of(pipe).failed == 0);
    CHECK(rec.of(pipe).ended == 0);  // pipeEnded is for socket sinks
    CHECK(pipe.bytes() == kTotal);
  }

  TEST_CASE("a socket source's buffer doubles after reads that fill it, up to its bound") {
    // A pulled sink: each read waits for a full pull, so every read finds
    // the sender's bytes already queued (a read fills the buffer exactly
    // when at least that much waits).
    auto ring = makeRing();
    Recorder rec;
    auto [a, pa] = tcpPair();
    Pipe pipe(*ring, rec, 4096, 16384);
    pipe.start(pa.get(), -1);
    CHECK(pipe.capacity() == 4096);
    // 3 bytes only: the first read does not fill the buffer, nothing grows.
    REQUIRE(::send(a.get(), "abc", 3, 0) == 3);
    REQUIRE(runUntil(*ring, [&] { return rec.of(pipe).readable == 1; }));
    std::vector<char> got(3);
    CHECK(pipe.pull(got.data(), got.size()) == 3);
    CHECK(pipe.capacity() == 4096);

    constexpr uint64_t kTotal = 200000;
    Peer A{.fd = a.get(), .out_seed = kUpSeed, .send_limit = kTotal};
    uint64_t pulled = 0;
    std::vector<size_t> reads;  // the size of each read, in order
    std::vector<char> data;
    REQUIRE(runUntil(
        *ring,
        [&] {
          if (pipe.available() > 0) {
            reads.push_back(pipe.available());
            data.resize(pipe.available());
            size_t k = pipe.pull(data.data(), data.size());
            CHECK(firstMismatch(data.data(), k, pulled, kUpSeed) == -1);
            pulled += k;
          }
          return pulled == kTotal;
        },
        [&] { A.step(); }));
    // Full reads: 4 KiB, 8 KiB, then 16 KiB each (the bound); never larger.
    REQUIRE(reads.size() >= 3);
    CHECK(reads[0] == 4096);
    CHECK(reads[1] == 8192);
    CHECK(reads[2] == 16384);
    CHECK(*std::max_element(reads.begin(), reads.end()) == 16384);
    CHECK(pipe.capacity() == 16384);
  }

  TEST_CASE("the next receive buffer's size: doubled after a full read, up to the bound") {
    struct Case {
      size_t size, got, next;
    } cases[] = {
        {4096, 4096, 8192},     // full: doubled
        {8192, 8192, 16384},    //
        {16384, 16384, 16384},  // full at the bound: stays
        {12288, 12288, 16384},  // full, doubling passes the bound: the bound
        {32768, 32768, 32768},  // above the bound already (a resumed pipe): stays
        {16384, 16383, 16384},  // one byte short: unchanged
        {16384, 3, 16384},      // a small read does not shrink it
        {4096, 0, 4096},        // EOF
    };
    for (const auto& c : cases) {
      CAPTURE(c.size);
      CAPTURE(c.got);
      CHECK(relay::nextBufferSize(c.size, c.got, 16384) == c.next);
    }
  }

  TEST_CASE("pushed with send false: the bytes wait for flush(), then go out in one send") {
    auto ring = makeRing();
    Recorder rec;
    auto [b, pb] = tcpPair();
    Pipe pipe(*ring, rec, 4096);
    pipe.start(-1, pb.get());
    Peer B{.fd = b.get(), .in_seed = kUpSeed};
    std::vector<char> chunk(3000);
    uint64_t pushed = 0;
    for (int i = 0; i < 4; ++i) {
      fillPattern(chunk.data(), chunk.size(), pushed, kUpSeed);
      pipe.push(chunk.data(), chunk.size(), false);
      pushed += chunk.size();
    }
    CHECK(rec.of(pipe).moved == pushed);  // counted as they come
    CHECK_FALSE(pipe.busy());             // but not sent
    CHECK(runFor(*ring, 30ms, [&] { B.step(); }) == 0);
    CHECK(B.received == 0);
    pipe.flush();
    CHECK(pipe.busy());
    REQUIRE(runUntil(
        *ring, [&] { return B.received == pushed; }, [&] { B.step(); }));
    CHECK(B.mismatch == -1);
    CHECK(rec.of(pipe).sent == pushed);
    CHECK(rec.of(pipe).sends == 1);
    CHECK(pipe.available() == 0);
  }

  TEST_CASE("after stop() no owner callback happens while completions still arrive") {
    Proxy p(16 * 1024);
    // A third pipe, pulled, with a full buffer when stopped.
    auto [c, pc] = tcpPair();
    Pipe pulled(*p.ring, p.rec, 4096);
    pulled.start(pc.get(), -1);
    p.A.send_limit = 1u << 20;
    p.B.send_limit = 1u << 20;
    p.start();
    REQUIRE(runUntil(
        *p.ring, [&] { return p.up.bytes() > 0 && p.down.bytes() > 0; }, [&] { p.step(); }));
    Peer C{.fd = c.get(), .out_seed = kUpSeed, .send_limit = 8192};
    C.step();
    REQUIRE(runUntil(*p.ring, [&] { return p.rec.of(pulled).readable > 0; }));
    CHECK(pulled.available() > 0);

    p.up.stop();
    p.down.stop();
    pulled.stop();
    const int callbacks = p.rec.callbacks;
    const uint64_t up_bytes = p.up.bytes(), down_bytes = p.down.bytes();

    // More traffic and an EOF from A: the receives in flight complete.
    p.A.send_limit += 64 * 1024;
    p.A.shut_when_done = true;
    const unsigned completions = runFor(*p.ring, 100ms, [&] { p.step(); });
    CHECK(completions > 0);  // completions did arrive ...
    // A full pull would read more if the pipe were not stopped.
    std::vector<char> tmp(8192);
    CHECK(pulled.pull(tmp.data(), tmp.size()) > 0);
    CHECK_FALSE(pulled.busy());

    p.ring->cancelFd(p.pa.get());
    p.ring->cancelFd(p.pb.get());
    p.ring->cancelFd(pc.get());
    const auto drained = Clock::now() + 5s;
    while ((p.up.busy() || p.down.busy() || pulled.busy()) && Clock::now() < drained)
      REQUIRE(p.ring->run(10).has_value());
    CHECK_FALSE(p.up.busy());
    CHECK_FALSE(p.down.busy());
    CHECK_FALSE(pulled.busy());
    CHECK(p.rec.callbacks == callbacks);  // ... and none reached the owner
    CHECK(p.up.bytes() == up_bytes);
    CHECK(p.down.bytes() == down_bytes);
  }

  TEST_CASE(
      "freeze keeps what was read and a resumed pipe delivers it once then the rest and EOF") {
    constexpr uint64_t kTotal = 64ull << 20;  // more than every buffer on the way holds
    Proxy p(64 * 1024);
    p.A.send_limit = kTotal;
    p.A.shut_when_done = true;
    p.B.reading = false;  // A -> B backs up: the pipe holds bytes it cannot write
    p.B.send_limit = 1000;
    p.B.shut_when_done = true;  // B -> A ends before the freeze
    p.start();
    runFor(*p.ring, 300ms, [&] { p.step(); });
    REQUIRE(p.down.sinkDone());
    REQUIRE(p.A.eof);
    REQUIRE(p.A.sent < kTotal);

    p.up.freeze();
    p.down.freeze();
    p.drain();  // cancels what is in flight; the frozen pipes keep its results
    CHECK(p.up.frozenError() == 0);
    CHECK(p.down.frozenError() == 0);
    std::string pending = p.up.pending();
    CHECK(pending.size() > 0);
    CHECK(p.down.pending().empty());
    CHECK_FALSE(p.up.sourceEnded());
    CHECK(p.down.sourceEnded());
    for (Pipe* pipe : {&p.up, &p.down}) CHECK(p.rec.of(*pipe).failed == 0);
    const uint64_t read_before = p.up.bytes();

    // A successor's pipes over the same sockets.
    Recorder rec2;
    Pipe up2(*p.ring, rec2, 64 * 1024), down2(*p.ring, rec2, 64 * 1024);
    up2.resume(p.pa.get(), p.pb.get(), pending, p.up.sourceEnded(), p.up.sinkDone());
    down2.resume(p.pb.get(), p.pa.get(), p.down.pending(), p.down.sourceEnded(), p.down.sinkDone());
    p.B.reading = true;
    // B's EOF can come before up2 hears its shutdown is done (the FIN leaves
    // at once; the owner is told on the next run).
    REQUIRE(runUntil(
        *p.ring, [&] { return p.B.eof && rec2.of(up2).ended > 0; }, [&] { p.step(); }, 30s));
    CHECK(p.A.error == 0);
    CHECK(p.B.error == 0);
    CHECK(p.B.received == kTotal);  // nothing lost, nothing twice
    CHECK(p.B.mismatch == -1);
    CHECK(read_before + up2.bytes() == kTotal);
    CHECK(rec2.of(up2).ended == 1);
    CHECK(rec2.of(down2).ended == 0);  // its EOF was passed on before the freeze, not again
    CHECK(rec2.of(up2).failed + rec2.of(down2).failed == 0);
    p.ring->cancelFd(p.pa.get());
    p.ring->cancelFd(p.pb.get());
    CHECK(runUntil(*p.ring, [&] { return !up2.busy() && !down2.busy(); }));
  }
}
