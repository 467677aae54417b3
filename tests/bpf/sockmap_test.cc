// bpf/sockmap.bpf.c with real sockets in a scratch netns (BPF_PROG_TEST_RUN
// does not run sockops or sk_msg programs). "Bypassed TCP" is measured by
// the netns's own TCP segment counter (Tcp OutSegs in /proc/net/snmp): a
// redirected stream leaves it where the handshake put it.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>
#include <vector>

#include "agent/bpf/loader.h"
#include "sluice/common/addr.h"
#include "support/bpf_env.h"
#include "support/scratch_netns.h"

using namespace sluice;
using namespace sluice::test;
using sluice::agent::bpf::BpfMap;
using sluice::agent::bpf::Loader;

namespace {

constexpr uint64_t kMiB = 1024 * 1024;

// Tcp OutSegs of the netns: every TCP segment its sockets sent.
uint64_t outSegs(int netns) {
  uint64_t segs = 0;
  auto r = runInNetns(netns, [&] {
    std::ifstream snmp("/proc/thread-self/net/snmp");
    std::string header, values;
    while (std::getline(snmp, header) && std::getline(snmp, values)) {
      if (header.rfind("Tcp:", 0) != 0) continue;
      std::istringstream h(header), v(values);
      std::string name, value;
      while (h >> name && v >> value)
        if (name == "OutSegs") segs = std::stoull(value);
    }
  });
  REQUIRE(r.has_value());
  REQUIRE(segs > 0);
  return segs;
}

// A socket's sockhash key: its own end, then its peer.
sluice_pair_key keyOf(int fd, uint64_t netns_cookie) {
  auto local = localOf(fd);
  auto peer = peerOf(fd);
  return {netns_cookie,   local.sin_addr.s_addr, peer.sin_addr.s_addr,
          local.sin_port, peer.sin_port,         0};
}

// A captured app socket's key: its getpeername() answers the original
// destination (getpeername4), its real peer is the proxy's 127.0.0.1:15001.
sluice_pair_key appKey(int fd, uint64_t netns_cookie) {
  auto local = localOf(fd);
  return {netns_cookie,   local.sin_addr.s_addr,       htonl(INADDR_LOOPBACK),
          local.sin_port, htons(SLUICE_OUTBOUND_PORT), 0};
}

// A hung stream fails the test instead of hanging it (not a timing check).
void guard(int fd) {
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

uint64_t fnv(uint64_t h, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;

struct Transfer {
  uint64_t sent = 0, received = 0;
  uint64_t sent_sum = kFnvBasis, received_sum = kFnvBasis;
  uint64_t partial_writes = 0;
  uint64_t empty_reads = 0;  // readable by poll(), EAGAIN by recv()
  bool eof = false;
  int read_error = 0;
};

// Writes `bytes` of a pseudo-random pattern from `from` (non-blocking, in
// sizes from 1 byte to 1 MiB + 7, so the kernel may take part of a write),
// then shuts its write side; reads everything at `to` until EOF, pausing
// 1 ms every `pause_every` bytes (a slow reader) when non-zero.
Transfer transfer(int from, int to, uint64_t bytes, uint64_t pause_every = 0) {
  Transfer t;
  std::thread writer([&] {
    int flags = fcntl(from, F_GETFL);
    fcntl(from, F_SETFL, flags | O_NONBLOCK);
    const size_t sizes[] = {1, 1000, 65536, kMiB + 7, 4096, 300000};
    std::vector<uint8_t> buf(kMiB + 7);
    uint64_t x = 88172645463325252ULL;
    size_t which = 0;
    while (t.sent < bytes) {
      size_t want = std::min<uint64_t>(sizes[which++ % std::size(sizes)], bytes - t.sent);
      for (size_t i = 0; i < want; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = static_cast<uint8_t>(x);
      }
      size_t off = 0;
      while (off < want) {
        ssize_t n = ::send(from, buf.data() + off, want - off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
          pollfd p{from, POLLOUT, 0};
          ::poll(&p, 1, 30000);
          continue;
        }
        if (n <= 0) return;
        if (static_cast<size_t>(n) < want - off) ++t.partial_writes;
        off += n;
      }
      t.sent_sum = fnv(t.sent_sum, buf.data(), want);
      t.sent += want;
    }
    fcntl(from, F_SETFL, flags);
    ::shutdown(from, SHUT_WR);
  });
  std::vector<uint8_t> buf(256 * 1024);
  uint64_t since_pause = 0;
  for (;;) {
    // Wait for readiness, then read without blocking, as the proxy (io_uring)
    // and event-driven apps do: on a sockhash socket a blocking recv() can
    // return EAGAIN after a wakeup that brought no data (tcp_bpf_recvmsg
    // waits once; docs/architecture.md).
    pollfd p{to, POLLIN, 0};
    ::poll(&p, 1, 30000);
    ssize_t n = ::recv(to, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n == 0) {
      t.eof = true;
      break;
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        ++t.empty_reads;
        if (t.empty_reads > 1000000) {
          t.read_error = errno;
          break;
        }
        continue;
      }
      t.read_error = errno;
      break;
    }
    t.received_sum = fnv(t.received_sum, buf.data(), n);
    t.received += n;
    since_pause += n;
    if (pause_every && since_pause >= pause_every) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      since_pause = 0;
    }
  }
  writer.join();
  return t;
}

void checkComplete(const Transfer& t, uint64_t bytes) {
  CHECK(t.read_error == 0);
  CHECK(t.eof);
  CHECK(t.sent == bytes);
  CHECK(t.received == bytes);
  CHECK(t.received_sum == t.sent_sum);
}

// An enrolled pod netns with the proxy's 127.0.0.1:15001 listener.
struct Pod {
  ScratchNetns ns;
  uint64_t cookie = 0;
  UniqueFd proxy_listener;
  explicit Pod(Loader& loader) {
    ns.sh("ip addr add 10.77.0.5/32 dev lo && ip addr add 10.77.0.9/32 dev lo");
    auto c = netnsCookie(ns.fd());
    REQUIRE(c.has_value());
    cookie = *c;
    REQUIRE(
        loader.enrolled().update(cookie, sluice_enrolled{*parseIp4("10.77.0.5"), 0}).has_value());
    proxy_listener = listenIn(ns.fd(), "127.0.0.1", SLUICE_OUTBOUND_PORT, SLUICE_MARK_MINE);
  }
  // An app connection captured to the proxy: {app socket, proxy's accepted}.
  std::pair<UniqueFd, UniqueFd> outbound() {
    auto app = connectIn(ns.fd(), "10.77.0.9", 8080);
    UniqueFd accepted(::accept(proxy_listener.get(), nullptr, nullptr));
    REQUIRE(accepted);
    guard(app.get());
    guard(accepted.get());
    return {std::move(app), std::move(accepted)};
  }
};

BpfMap<sluice_pair_key, __u64> sockhash(const LoadedCapture& bpf) {
  auto m = BpfMap<sluice_pair_key, __u64>::openPinned(bpf.pin + "/sluice_sockhash_v1");
  REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().describe()));
  return std::move(*m);
}

uint64_t sockhashEntries(const LoadedCapture& bpf) { return sockhash(bpf).entries().size(); }

}  // namespace

TEST_SUITE("sockmap.bpf") {
  TEST_CASE("an outbound app <-> proxy pair is redirected both ways, bypassing loopback TCP") {
    LoadedCapture bpf(true);
    REQUIRE_MESSAGE(bpf.loader->sockmap().active, bpf.loader->sockmap().detail);
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    auto map = sockhash(bpf);
    CHECK(map.lookup(appKey(app.get(), pod.cookie)).has_value());
    CHECK(map.lookup(keyOf(proxied.get(), pod.cookie)).has_value());
    auto stats = bpf.loader->sockmapStats();
    CHECK(stats[SLUICE_SOCKMAP_ADDED_OUT_APP] == 1);
    CHECK(stats[SLUICE_SOCKMAP_ADDED_OUT_PROXY] == 1);

    uint64_t segs_before = outSegs(pod.ns.fd());
    // A request and its answer; the FINs travel over TCP (a handful of segments).
    auto request = transfer(app.get(), proxied.get(), 8 * kMiB);
    checkComplete(request, 8 * kMiB);
    auto answer = transfer(proxied.get(), app.get(), 8 * kMiB);
    checkComplete(answer, 8 * kMiB);
    uint64_t segs = outSegs(pod.ns.fd()) - segs_before;
    CHECK_MESSAGE(segs < 32, segs << " TCP segments for 16 MiB: not redirected");
    stats = bpf.loader->sockmapStats();
    CHECK(stats[SLUICE_SOCKMAP_BYTES_REDIRECTED] == 16 * kMiB);
    CHECK(stats[SLUICE_SOCKMAP_MSG_TCP] == 0);

    // Both sockets leave the sockhash when they close.
    app.reset();
    proxied.reset();
    CHECK(sockhashEntries(bpf) == 0);
  }

  TEST_CASE("with --sockmap=off the same pair goes over loopback TCP") {
    LoadedCapture bpf(false);
    CHECK_FALSE(bpf.loader->sockmap().active);
    CHECK(bpf.loader->sockmap().detail == "off (--sockmap=off)");
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    uint64_t segs_before = outSegs(pod.ns.fd());
    checkComplete(transfer(app.get(), proxied.get(), 8 * kMiB), 8 * kMiB);
    CHECK(outSegs(pod.ns.fd()) - segs_before >= 128);  // the check above can fail
    CHECK_FALSE(std::filesystem::exists(agent::bpf::linkPin(bpf.pin, agent::bpf::kSockmapSockops)));
  }

  TEST_CASE("half-close in either direction keeps the other direction open") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    SUBCASE("the app closes its write side first") {
      checkComplete(transfer(app.get(), proxied.get(), 3 * kMiB + 5), 3 * kMiB + 5);
      checkComplete(transfer(proxied.get(), app.get(), 2 * kMiB + 1), 2 * kMiB + 1);
    }
    SUBCASE("the proxy closes its write side first") {
      checkComplete(transfer(proxied.get(), app.get(), 3 * kMiB + 5), 3 * kMiB + 5);
      checkComplete(transfer(app.get(), proxied.get(), 2 * kMiB + 1), 2 * kMiB + 1);
    }
    CHECK(bpf.loader->sockmapStats()[SLUICE_SOCKMAP_MSG_TCP] == 0);
  }

  TEST_CASE("a reset from either side reaches the other") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    auto resetFrom = [](UniqueFd& closing, int other) {
      char c = 'x';
      REQUIRE(::send(closing.get(), &c, 1, MSG_NOSIGNAL) == 1);
      REQUIRE(::recv(other, &c, 1, 0) == 1);
      linger l{1, 0};
      REQUIRE(setsockopt(closing.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0);
      closing.reset();
      CHECK(::recv(other, &c, 1, 0) == -1);
      CHECK(errno == ECONNRESET);
    };
    SUBCASE("the app resets") { resetFrom(app, proxied.get()); }
    SUBCASE("the proxy resets") { resetFrom(proxied, app.get()); }
    CHECK(bpf.loader->sockmapStats()[SLUICE_SOCKMAP_MSG_REDIRECTED] == 1);
  }

  TEST_CASE("256 MiB each way to a slow reader arrive intact (backpressure, partial writes)") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    const uint64_t bytes = 256 * kMiB;
    auto up = transfer(app.get(), proxied.get(), bytes, 4 * kMiB);
    checkComplete(up, bytes);
    auto down = transfer(proxied.get(), app.get(), bytes, 4 * kMiB);
    checkComplete(down, bytes);
    MESSAGE("partial writes: " << up.partial_writes << " up, " << down.partial_writes << " down");
    CHECK(bpf.loader->sockmapStats()[SLUICE_SOCKMAP_BYTES_REDIRECTED] == 2 * bytes);
  }

  TEST_CASE("an inbound proxy -> app pair (SLUICE_MARK_INBOUND_APP) is redirected") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    // As the pod netns is set up: the app's accepted socket takes the SYN's mark.
    pod.ns.sh("sysctl -qw net.ipv4.tcp_fwmark_accept=1");
    auto app_listener = listenIn(pod.ns.fd(), "10.77.0.5", 8080);
    auto delivering = connectIn(pod.ns.fd(), "10.77.0.5", 8080, SLUICE_MARK_INBOUND_APP);
    UniqueFd app(::accept(app_listener.get(), nullptr, nullptr));
    REQUIRE(app);
    guard(app.get());
    guard(delivering.get());
    auto stats = bpf.loader->sockmapStats();
    CHECK(stats[SLUICE_SOCKMAP_ADDED_IN_PROXY] == 1);
    CHECK(stats[SLUICE_SOCKMAP_ADDED_IN_APP] == 1);
    uint64_t segs_before = outSegs(pod.ns.fd());
    checkComplete(transfer(delivering.get(), app.get(), 4 * kMiB), 4 * kMiB);
    checkComplete(transfer(app.get(), delivering.get(), 4 * kMiB), 4 * kMiB);
    CHECK(outSegs(pod.ns.fd()) - segs_before < 32);
    // An app listening dual-stack on [::] accepts a v4-mapped AF_INET6 socket.
    auto v6 = socketInNetns(pod.ns.fd(), AF_INET6, SOCK_STREAM, 0);
    REQUIRE(v6.has_value());
    sockaddr_in6 any6{};
    any6.sin6_family = AF_INET6;
    any6.sin6_port = htons(8081);
    REQUIRE(::bind(v6->get(), reinterpret_cast<sockaddr*>(&any6), sizeof(any6)) == 0);
    REQUIRE(::listen(v6->get(), 4) == 0);
    auto delivering6 = connectIn(pod.ns.fd(), "10.77.0.5", 8081, SLUICE_MARK_INBOUND_APP);
    UniqueFd app6(::accept(v6->get(), nullptr, nullptr));
    REQUIRE(app6);
    guard(app6.get());
    guard(delivering6.get());
    CHECK(bpf.loader->sockmapStats()[SLUICE_SOCKMAP_ADDED_IN_APP] == 2);
    segs_before = outSegs(pod.ns.fd());
    checkComplete(transfer(delivering6.get(), app6.get(), 4 * kMiB), 4 * kMiB);
    checkComplete(transfer(app6.get(), delivering6.get(), 4 * kMiB), 4 * kMiB);
    CHECK(outSegs(pod.ns.fd()) - segs_before < 32);
    delivering6.reset();
    app6.reset();
    // An unmarked connection inside the pod is no hop of ours.
    auto plain = connectIn(pod.ns.fd(), "10.77.0.5", 8080);
    UniqueFd plain_accepted(::accept(app_listener.get(), nullptr, nullptr));
    CHECK(sockhash(bpf).lookup(keyOf(plain.get(), pod.cookie)) == std::nullopt);
    CHECK(sockhashEntries(bpf) == 2);
  }

  TEST_CASE("agent restarts: live pairs keep going, off stops new ones, nothing stays") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    checkComplete(transfer(app.get(), proxied.get(), kMiB), kMiB);

    bpf.loader.reset();  // the agent exits; pins stay
    auto again = Loader::create({bpf.pin, cgroup2(), {9999}, true});
    REQUIRE_MESSAGE(again.has_value(), (again ? "" : again.error().describe()));
    bpf.loader = std::move(*again);
    REQUIRE(bpf.loader->sockmap().active);
    uint64_t segs_before = outSegs(pod.ns.fd());
    checkComplete(transfer(proxied.get(), app.get(), 4 * kMiB), 4 * kMiB);
    CHECK(outSegs(pod.ns.fd()) - segs_before < 32);

    bpf.loader.reset();
    auto off = Loader::create({bpf.pin, cgroup2(), {9999}, false});
    REQUIRE(off.has_value());
    bpf.loader = std::move(*off);
    CHECK_FALSE(bpf.loader->sockmap().active);
    auto [app2, proxied2] = pod.outbound();
    CHECK(sockhash(bpf).lookup(appKey(app2.get(), pod.cookie)) == std::nullopt);
    CHECK(sockhash(bpf).lookup(keyOf(proxied2.get(), pod.cookie)) == std::nullopt);
    CHECK(sockhashEntries(bpf) == 2);  // the live pair from before only
    app.reset();
    proxied.reset();
    CHECK(sockhashEntries(bpf) == 0);
  }

  TEST_CASE("a kernel/pin that refuses the sockmap programs falls back to off, visibly") {
    // A pinned map of another shape under the sockhash's name: libbpf refuses
    // to reuse it, as it would refuse a kernel without sockhash.
    std::string pin = pinDir();
    std::filesystem::create_directories(pin);
    UniqueFd bogus(bpf_map_create(BPF_MAP_TYPE_HASH, "sluice_sockhash", 4, 4, 1, nullptr));
    REQUIRE(bogus);
    REQUIRE(bpf_obj_pin(bogus.get(), (pin + "/sluice_sockhash_v1").c_str()) == 0);
    LoadedCapture bpf(true);  // capture itself must still come up
    CHECK(bpf.loader->sockmap().requested);
    CHECK_FALSE(bpf.loader->sockmap().active);
    CHECK(bpf.loader->sockmap().detail.find("--sockmap=on was asked but") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(agent::bpf::linkPin(pin, agent::bpf::kSockmapSockops)));
    for (const auto& l : bpf.loader->links()) CHECK(l.program != agent::bpf::kSockmapSockops);
  }
}
