// The ring's socket chores that replace a system call per connection: an
// upstream socket's setup (mark, TCP_NODELAY, transparent bind) linked ahead
// of its connect, and closes queued with the next submission. Root: SO_MARK
// and IP_TRANSPARENT need CAP_NET_ADMIN. Kernel 6.11+ for the setup. And a
// ring waiting for traffic is not I/O pressure (root: a cgroup of its own;
// kernel 6.15+).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>

#include "sluice/common/unique_fd.h"
#include "ztunnel/uring/ops.h"
#include "ztunnel/uring/ring.h"

using namespace sluice;
using namespace sluice::ztunnel::uring;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<Ring> makeRing() {
  auto r = Ring::create(8);
  REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
  return std::move(*r);
}

UniqueFd tcpSocket(int family = AF_INET) {
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  return fd;
}

// A loopback listener on a free port.
UniqueFd listener(SockAddr& at) {
  UniqueFd fd = tcpSocket();
  SockAddr any(IpAddr::v4(htonl(INADDR_LOOPBACK)), 0);
  REQUIRE(::bind(fd.get(), any.sa(), any.len()) == 0);
  REQUIRE(::listen(fd.get(), 8) == 0);
  sockaddr_storage raw{};
  socklen_t len = sizeof(raw);
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&raw), &len) == 0);
  at = SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&raw), len);
  return fd;
}

bool readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

std::pair<UniqueFd, UniqueFd> socketPair() {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// The peer closed: fd reads its end within a second.
bool endSeen(int fd) {
  char c;
  return readable(fd, 1000) && ::read(fd, &c, 1) == 0;
}

struct Dialer {
  int result = 1;
  int calls = 0;
  void done(int res) {
    result = res;
    ++calls;
  }
  Connect<&Dialer::done> connect{this};
};

void runUntilDone(Ring& ring, const Dialer& d) {
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (d.calls == 0 && std::chrono::steady_clock::now() < deadline) REQUIRE(ring.run(10));
  REQUIRE(d.calls == 1);
}

int intOption(int fd, int level, int name) {
  int v = -1;
  socklen_t len = sizeof(v);
  REQUIRE(::getsockopt(fd, level, name, &v, &len) == 0);
  return v;
}

// This process in a cgroup of its own for the test's life (moved back and
// the cgroup removed after, even on failure), to read its I/O pressure.
class OwnCgroup {
 public:
  OwnCgroup() {
    std::ifstream mounts("/proc/self/mounts");
    for (std::string dev, dir, type, rest;
         mounts >> dev >> dir >> type && std::getline(mounts, rest);)
      if (type == "cgroup2") mount_ = dir;
    REQUIRE_MESSAGE(!mount_.empty(), "no cgroup2 mount");
    std::ifstream self("/proc/self/cgroup");
    for (std::string line; std::getline(self, line);)
      if (line.rfind("0::", 0) == 0) original_ = line.substr(3);
    dir_ = mount_ + "/sluice-test-iowait-" + std::to_string(::getpid());
    REQUIRE_MESSAGE(::mkdir(dir_.c_str(), 0755) == 0, "cannot create " << dir_);
    REQUIRE(join(dir_));
  }
  ~OwnCgroup() {
    (void)join(mount_ + original_);
    ::rmdir(dir_.c_str());
  }
  OwnCgroup(const OwnCgroup&) = delete;
  OwnCgroup& operator=(const OwnCgroup&) = delete;

  // Microseconds all of the cgroup's tasks stalled on I/O ("full" total).
  uint64_t ioStalledUs() const {
    std::ifstream f(dir_ + "/io.pressure");
    REQUIRE_MESSAGE(f.good(), "no " << dir_ << "/io.pressure (kernel without PSI?)");
    for (std::string line; std::getline(f, line);)
      if (auto at = line.find("total="); line.rfind("full", 0) == 0 && at != std::string::npos)
        return std::stoull(line.substr(at + 6));
    FAIL("io.pressure has no full line");
    return 0;
  }

 private:
  static bool join(const std::string& dir) {
    std::ofstream procs(dir + "/cgroup.procs");
    procs << ::getpid() << std::flush;
    return procs.good();
  }
  std::string mount_, original_, dir_;
};

}  // namespace

TEST_CASE("this kernel lets a ring wait without counting as I/O wait (older ones: it is counted)") {
  REQUIRE_MESSAGE(makeRing()->waitsWithoutIowait(),
                  "io_uring here lacks IORING_FEAT_NO_IOWAIT (kernel 6.15+)");
}

TEST_CASE("a ring waiting for traffic is no I/O pressure - a plain liburing wait is") {
  OwnCgroup cg;
  auto [mine, peer] = socketPair();
  char buf[16];  // outlives both rings: their receives are cancelled at exit
  SUBCASE("liburing's own wait, with a receive in flight, counts as stalled on I/O") {
    io_uring plain{};
    REQUIRE(io_uring_queue_init(4, &plain, 0) == 0);
    io_uring_prep_recv(io_uring_get_sqe(&plain), mine.get(), buf, sizeof(buf), 0);
    const uint64_t before = cg.ioStalledUs();
    __kernel_timespec ts{0, 400'000'000};
    io_uring_cqe* cqe = nullptr;
    (void)io_uring_submit_and_wait_timeout(&plain, &cqe, 1, &ts, nullptr);
    const uint64_t stalled = cg.ioStalledUs() - before;
    CHECK(io_uring_cq_ready(&plain) == 0);  // it waited the whole timeout
    io_uring_queue_exit(&plain);
    CHECK(stalled >= 300'000);  // the measure works: most of the 400 ms
  }
  SUBCASE("Ring::run does not") {
    auto ring = makeRing();
    io_uring_prep_recv(ring->sqe(nullptr), mine.get(), buf, sizeof(buf), 0);
    const uint64_t before = cg.ioStalledUs();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 4; ++i) REQUIRE(ring->run(100));
    CHECK(std::chrono::steady_clock::now() - start >= 350ms);  // it did wait
    CHECK(cg.ioStalledUs() - before < 20'000);
    // And a completion still ends the wait.
    REQUIRE(::write(peer.get(), "x", 1) == 1);
    const auto sent = std::chrono::steady_clock::now();
    REQUIRE(ring->run(2000));
    CHECK(std::chrono::steady_clock::now() - sent < 1s);
  }
}

TEST_CASE(
    "this kernel sets sockets up through the ring (the engine falls back to syscalls if not)") {
  REQUIRE_MESSAGE(socketSetupSupported(),
                  "io_uring here lacks IORING_OP_BIND / socket setsockopt (kernel 6.11+)");
}

TEST_CASE("a pending setup marks, sets TCP_NODELAY and binds transparently before the connect") {
  auto ring = makeRing();
  SockAddr at;
  UniqueFd l = listener(at);
  UniqueFd s = tcpSocket();
  // 127.0.0.9 is local anyway; the transparent bind is what a pod's
  // inbound delivery does with the client's (non-local) address.
  // And linger 0: a socket to an app (proxy::appSocketLinger0).
  SocketSetup setup{true, 0x5a5a, SockAddr(IpAddr::v4(htonl(0x7f000009)), 0), true};
  Dialer d;
  d.connect.start(*ring, s.get(), at, 2000ms, setup);
  runUntilDone(*ring, d);
  CHECK(d.result == 0);
  CHECK(d.connect.failedStep() == nullptr);
  CHECK(intOption(s.get(), SOL_SOCKET, SO_MARK) == 0x5a5a);
  CHECK(intOption(s.get(), IPPROTO_TCP, TCP_NODELAY) == 1);
  CHECK(intOption(s.get(), SOL_IP, IP_TRANSPARENT) == 1);
  linger lg{};
  socklen_t lg_len = sizeof(lg);
  REQUIRE(::getsockopt(s.get(), SOL_SOCKET, SO_LINGER, &lg, &lg_len) == 0);
  CHECK(lg.l_onoff == 1);
  CHECK(lg.l_linger == 0);
  sockaddr_in peer{};
  socklen_t len = sizeof(peer);
  UniqueFd accepted(::accept(l.get(), reinterpret_cast<sockaddr*>(&peer), &len));
  REQUIRE(accepted);
  CHECK(ntohl(peer.sin_addr.s_addr) == 0x7f000009);  // the listener sees the bound address

  SUBCASE("without a bind address nor linger: mark and TCP_NODELAY only") {
    UniqueFd plain = tcpSocket();
    Dialer d2;
    d2.connect.start(*ring, plain.get(), at, 2000ms, SocketSetup{true, 7, {}});
    runUntilDone(*ring, d2);
    CHECK(d2.result == 0);
    CHECK(intOption(plain.get(), SOL_SOCKET, SO_MARK) == 7);
    CHECK(intOption(plain.get(), IPPROTO_TCP, TCP_NODELAY) == 1);
    CHECK(intOption(plain.get(), SOL_IP, IP_TRANSPARENT) == 0);
    CHECK(intOption(plain.get(), SOL_SOCKET, SO_LINGER) == 0);  // l_onoff
  }
  SUBCASE("linger without a bind address: the step follows TCP_NODELAY") {
    UniqueFd app = tcpSocket();
    Dialer d3;
    d3.connect.start(*ring, app.get(), at, 2000ms, SocketSetup{true, 7, {}, true});
    runUntilDone(*ring, d3);
    CHECK(d3.result == 0);
    CHECK(d3.connect.failedStep() == nullptr);
    CHECK(intOption(app.get(), SOL_SOCKET, SO_LINGER) == 1);  // l_onoff
  }
}

TEST_CASE("a failed setup step fails the connect with its error and names it, and no SYN is sent") {
  auto ring = makeRing();
  SockAddr at;
  UniqueFd l = listener(at);
  UniqueFd s = tcpSocket();  // IPv4: IPV6_TRANSPARENT on it is refused
  IpAddr v6 = IpAddr::v6(in6addr_loopback);
  Dialer d;
  d.connect.start(*ring, s.get(), at, 2000ms, SocketSetup{true, 1, SockAddr(v6, 0)});
  runUntilDone(*ring, d);
  CHECK(d.result < 0);
  CHECK(d.result != -ECANCELED);
  REQUIRE(d.connect.failedStep() != nullptr);
  CHECK(std::string(d.connect.failedStep()) == "IPV6_TRANSPARENT");
  CHECK(d.connect.describe(d.result).rfind("IPV6_TRANSPARENT failed: ", 0) == 0);
  CHECK_FALSE(readable(l.get(), 100));  // nothing to accept

  SUBCASE("the next start of the same Connect reports afresh") {
    UniqueFd fresh = tcpSocket();
    d.calls = 0;
    d.connect.start(*ring, fresh.get(), at, 2000ms, SocketSetup{true, 1, {}});
    runUntilDone(*ring, d);
    CHECK(d.result == 0);
    CHECK(d.connect.failedStep() == nullptr);
  }
}

TEST_CASE("a chain the ring refuses fails with EAGAIN, blamed on no setup step") {
  auto r = Ring::create(4);  // 4 setup steps + connect + timeout never fit
  REQUIRE(r.has_value());
  auto ring = std::move(*r);
  SockAddr at;
  UniqueFd l = listener(at);
  UniqueFd s = tcpSocket();
  Dialer d;
  d.connect.start(*ring, s.get(), at, 2000ms,
                  SocketSetup{true, 1, SockAddr(IpAddr::v4(htonl(0x7f000009)), 0)});
  runUntilDone(*ring, d);
  CHECK(d.result == -EAGAIN);
  CHECK(d.connect.failedStep() == nullptr);
  CHECK(ring->errors() == 6);
}

TEST_CASE("an orderly close through the ring turns linger 0 off first: FIN, else RST") {
  SockAddr at;
  UniqueFd l = listener(at);
  auto ring = makeRing();
  for (bool orderly : {true, false}) {
    CAPTURE(orderly);
    UniqueFd peer = tcpSocket();
    REQUIRE(::connect(peer.get(), at.sa(), at.len()) == 0);
    UniqueFd mine(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(mine);
    linger zero{1, 0};  // as an app's connection is born (proxy::Worker::accepted)
    REQUIRE(::setsockopt(mine.get(), SOL_SOCKET, SO_LINGER, &zero, sizeof(zero)) == 0);
    ring->close(std::move(mine), orderly);
    REQUIRE(ring->run(0));
    REQUIRE(readable(peer.get(), 1000));
    char c;
    ssize_t n = ::recv(peer.get(), &c, 1, 0);
    if (orderly) {
      CHECK(n == 0);  // the end of the stream
    } else {
      CHECK(n < 0);
      CHECK(errno == ECONNRESET);
    }
  }
}

TEST_CASE("close through the ring: the peer sees the end after the next submission") {
  auto [mine, peer] = socketPair();
  auto ring = makeRing();
  ring->close(std::move(mine));
  CHECK_FALSE(mine);
  CHECK_FALSE(readable(peer.get(), 0));  // queued, not submitted yet
  REQUIRE(ring->run(0));
  CHECK(endSeen(peer.get()));

  SUBCASE("a close the ring never submitted is done by its destructor") {
    auto [a, b] = socketPair();
    auto other = makeRing();
    other->close(std::move(a));
    other.reset();
    CHECK(endSeen(b.get()));
  }
}
