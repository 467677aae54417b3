// The HBONE client's bounds (hbone_rig.h, no root): outbound handshakes per
// pod and per node, pooled tunnels per pod and destination. At each bound a
// connection is reset and counted; other pods' connections go on.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "ztunnel/hbone_rig.h"

using namespace hbone_rig;

namespace {

constexpr const char* kIdOther = "spiffe://cluster.local/ns/b/sa/other";

// One line through an open app connection and its echo back, pumping the
// rings meanwhile.
bool echoes(Mesh& m, int fd, const std::string& text) {
  std::string got;
  Worker w([&] {
    if (!sendAll(fd, reinterpret_cast<const unsigned char*>(text.data()), text.size())) return;
    char buf[256];
    while (got.size() < text.size()) {
      ssize_t k = ::recv(fd, buf, sizeof(buf), 0);
      if (k <= 0) return;
      got.append(buf, static_cast<size_t>(k));
    }
  });
  if (!m.pumpUntil([&] { return w.done.load(); }, 10s)) return false;
  return got == text;
}

// Whether the app's end of a connection was reset (not ended in order).
bool wasReset(Mesh& m, int fd) {
  int err = 0;
  bool ended = m.pumpUntil(
      [&] {
        char c;
        ssize_t k = ::recv(fd, &c, 1, MSG_DONTWAIT);
        err = k < 0 ? errno : 0;
        return k == 0 || (k < 0 && err != EAGAIN);
      },
      5s);
  return ended && err == ECONNRESET;
}

}  // namespace

TEST_SUITE("hbone limits") {
  TEST_CASE("outbound handshakes are bounded per pod and per node - other pods go on") {
    Mesh m([](EngineConfig& c) {
      c.hbone_max_outbound_handshakes = 2;
      c.hbone_max_outbound_handshakes_per_pod = 1;
    });
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    auto pod_c = makePod("uid-c", "a/second", kIdA, "127.0.0.4");
    auto pod_d = makePod("uid-d", "a/third", kIdA, "127.0.0.5");
    m.server_paused = true;  // tunnels stay in their handshake

    UniqueFd a1 = m.open(dst);  // pod A's one handshake
    UniqueFd a2 = m.open(dst);  // the same destination: waits on that tunnel
    CHECK(m.cs->count(Counter::kOutboundHandshakeRefused) == 0);
    UniqueFd a3 = m.open(dst, kIdOther);  // another destination: a second handshake of pod A
    CHECK(m.cs->count(Counter::kOutboundHandshakeRefused) == 1);
    CHECK(wasReset(m, a3.get()));

    UniqueFd c1 = m.open(dst, kIdB, pod_c);  // pod C: its own handshake, the node's second
    CHECK(m.cs->count(Counter::kOutboundHandshakeRefused) == 1);
    UniqueFd d1 = m.open(dst, kIdB, pod_d);  // pod D: the node's bound is reached
    CHECK(m.cs->count(Counter::kOutboundHandshakeRefused) == 2);
    CHECK(wasReset(m, d1.get()));
    CHECK(m.cs->count(Counter::kTunnelsActive) == 2);

    // The handshakes complete: the waiting connections carry bytes, and the
    // bound is free again.
    m.server_paused = false;
    CHECK(echoes(m, a1.get(), "a1\n"));
    CHECK(echoes(m, a2.get(), "a2\n"));
    CHECK(echoes(m, c1.get(), "c1\n"));
    UniqueFd d2 = m.open(dst, kIdB, pod_d);
    CHECK(echoes(m, d2.get(), "d2\n"));
    CHECK(m.cs->count(Counter::kOutboundHandshakeRefused) == 2);
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 3);
    CHECK(m.cs->count(Counter::kConnectFailures) == 0);
  }

  TEST_CASE("pooled tunnels per pod and destination are bounded - other pods go on") {
    Mesh m([](EngineConfig& c) {
      c.hbone_max_streams = 1;  // a tunnel per connection
      c.hbone_max_tunnels_per_peer = 2;
    });
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    auto pod_c = makePod("uid-c", "a/second", kIdA, "127.0.0.4");

    UniqueFd a1 = m.open(dst);
    UniqueFd a2 = m.open(dst);
    CHECK(echoes(m, a1.get(), "a1\n"));
    CHECK(echoes(m, a2.get(), "a2\n"));
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 2);

    UniqueFd a3 = m.open(dst);  // both of pod A's tunnels to B are full: refused
    CHECK(wasReset(m, a3.get()));
    CHECK(m.cs->count(Counter::kPeerTunnelRefused) == 1);
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 2);

    UniqueFd c1 = m.open(dst, kIdB, pod_c);  // pod C has tunnels of its own
    CHECK(echoes(m, c1.get(), "c1\n"));
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 3);

    // A stream of pod A ends: the next connection goes on its tunnel.
    uint64_t closed = m.cs->count(Counter::kClosed);
    a1.reset();
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == closed + 1; }, 5s));
    UniqueFd a4 = m.open(dst);
    CHECK(echoes(m, a4.get(), "a4\n"));
    CHECK(echoes(m, a2.get(), "a2 again\n"));
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 3);
    CHECK(m.cs->count(Counter::kPeerTunnelRefused) == 1);
    CHECK(m.cs->count(Counter::kConnectFailures) == 0);
  }
}
