// HBONE stream starts and ends on the rig of hbone_rig.h: a client sends
// the app's first bytes behind its CONNECT (a Service connection a copy,
// retried elsewhere only while no server can have passed them on), and
// every byte a stream took from a tunnel opens the tunnel's window again,
// however the stream ends.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "ztunnel/hbone_peers.h"
#include "ztunnel/hbone_rig.h"

using namespace hbone_rig;

namespace {

// Small windows: a tunnel that loses track of a few streams' bytes stalls.
void smallWindows(EngineConfig& c) {
  c.hbone_stream_window = 256 * 1024;
  c.hbone_connection_window = 1024 * 1024;
}

std::shared_ptr<ServiceTarget> service(std::vector<sockaddr_in> endpoints) {
  auto svc = std::make_shared<ServiceTarget>();
  svc->name = "b/echo";
  for (auto& e : endpoints) svc->endpoints.push_back(e);
  return svc;
}

// A connection of pod A to a Service VIP whose app sent `first` before the
// connection went on its way, to the Service's first endpoint: the app's end.
UniqueFd openService(Mesh& m, TestSink& sink, const std::shared_ptr<ServiceTarget>& svc,
                     std::string_view first) {
  const sockaddr_in vip = makeSockaddr(ip("10.96.0.10"), 80);
  auto [app, attempt] = m.connection(vip);
  attempt->setService(&sink, svc, vip);
  REQUIRE(sendAll(app.get(), reinterpret_cast<const unsigned char*>(first.data()), first.size()));
  attempt->pick(svc->endpoints[0]);
  m.client->open(std::move(attempt), MeshWorkload{kIdB, "b/server", "node-b"});
  return std::move(app);
}

// The rig's client against plain nghttp2 on pod B's 15008 (RawServer).
struct RawMesh {
  explicit RawMesh(RawServer::Mode mode)
      : raw(m.hbone_listener.get(), *m.tls, m.creds.credential(kIdB), 0, mode) {
    m.server.reset();
  }
  Mesh m;
  RawServer raw;
};

// The one record the client side closed.
ConnectionRecord closedOnce(Mesh& m) {
  REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 1; }, 5s));
  auto out = m.closed(*m.cs);
  REQUIRE(out.size() == 1);
  return out[0];
}

}  // namespace

TEST_SUITE("hbone stream windows") {
  TEST_CASE("a client sends the app's first bytes before the 200 comes") {
    RawMesh rig(RawServer::Mode::kAnswerAfterData);
    Mesh& m = rig.m;
    RawServer& raw = rig.raw;
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), 8080));
    std::vector<unsigned char> got;
    Worker w([&] { sendThenDrain(app.get(), "hello", 5, got); });
    REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 10s));
    CHECK(std::string(got.begin(), got.end()) == "hello");
    CHECK(raw.answered_after_data == 1);
    CHECK(why(closedOnce(m).reason) == "eof");
  }

  TEST_CASE("a Service connection sends a copy of its first bytes before the 200, each byte once") {
    RawMesh rig(RawServer::Mode::kAnswerAfterData);
    Mesh& m = rig.m;
    RawServer& raw = rig.raw;
    TestSink sink;
    UniqueFd app = openService(m, sink, service({makeSockaddr(ip(kAddrB), 8080)}), "GET / ");
    std::vector<unsigned char> got;
    Worker w([&] { sendThenDrain(app.get(), "HTTP/1.1", 8, got); });
    REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 10s));
    CHECK(std::string(got.begin(), got.end()) == "GET / HTTP/1.1");  // echoed: nothing twice
    CHECK(raw.answered_after_data == 1);
    CHECK(sink.results == std::vector<bool>{true});
    CHECK(sink.whys.empty());
    auto r = closedOnce(m);
    CHECK(why(r.reason) == "eof");
    CHECK(r.bytes_sent == 14);
  }

  TEST_CASE("a Service connection whose first bytes went out is not retried when its tunnel dies") {
    // The server may have passed them on to its app before the tunnel
    // broke: another endpoint must not get them a second time.
    RawMesh rig(RawServer::Mode::kDropAtData);
    Mesh& m = rig.m;
    RawServer& raw = rig.raw;
    TestSink sink;
    UniqueFd app = openService(
        m, sink, service({makeSockaddr(ip(kAddrB), 8080), makeSockaddr(ip(kAddrB), 8081)}),
        "POST /once");
    std::vector<unsigned char> got;
    Worker reader([&] { recvAll(app.get(), got); });
    REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 10s));
    CHECK(got.empty());
    CHECK(raw.dropped == 1);
    CHECK(sink.retried == nullptr);
    CHECK(sink.whys.empty());
    auto r = closedOnce(m);
    CHECK_FALSE(r.retried);
    CHECK(why(r.reason) == "tunnel_closed");
  }

  TEST_CASE("bytes that reach the app after their stream closed open the tunnel's window") {
    // The server app ends its side first and reads late: the client's bytes
    // and END_STREAM arrive, the stream closes in HTTP/2 with most of them
    // still on their way to the app, which gets them afterwards. Ten such
    // streams move 10 × 256 KiB through a 1 MiB tunnel window.
    Mesh m(smallWindows);
    m.ss->sockets.buffer_bytes = 16 * 1024;
    constexpr size_t kBytes = 256 * 1024;
    std::atomic<int> intact{0};
    App late(ip(kAddrB), [&](int fd) {
      ::shutdown(fd, SHUT_WR);
      std::this_thread::sleep_for(150ms);
      std::vector<unsigned char> got;
      if (recvAll(fd, got) && got == pattern(kBytes, 5)) intact++;
    });
    constexpr int kStreams = 10;
    for (int i = 0; i < kStreams; ++i) {
      UniqueFd app = m.open(makeSockaddr(ip(kAddrB), late.port));
      std::vector<unsigned char> back;
      auto data = pattern(kBytes, 5);
      Worker w([&] { sendThenDrain(app.get(), data.data(), data.size(), back); });
      REQUIRE_MESSAGE(m.pumpUntil([&] { return w.done.load() && intact == i + 1; }, 10s), "stream ",
                      i, " did not complete");
      CHECK(back.empty());
    }
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 1);
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == kStreams; }, 5s));
    for (auto& r : m.closed(*m.ss)) {
      CHECK(why(r.reason) == "eof");
      CHECK(r.bytes_sent == kBytes);
    }
  }

  TEST_CASE("what forgotten streams still hold for apps that do not read counts in the window") {
    // Eight streams of 400 KiB each through a 1 MiB tunnel window, one
    // after the other, to apps that end their side first and read nothing
    // for a while: a stream is forgotten by HTTP/2 once its bytes and end
    // are in, but what its app has not taken still holds the tunnel's
    // window, so the server takes about 1 MiB, not 3.2 MiB (giving the
    // window back when HTTP/2 forgets a stream would let all of it in).
    // Then the apps read and everything arrives.
    Mesh m([](EngineConfig& c) {
      c.hbone_stream_window = 1024 * 1024;
      c.hbone_connection_window = 1024 * 1024;
    });
    m.ss->sockets.buffer_bytes = 16 * 1024;
    constexpr size_t kBytes = 400 * 1024;
    constexpr int kStreams = 8;
    std::atomic<bool> read_now{false};
    std::atomic<int> intact{0};
    App late(ip(kAddrB), [&](int fd) {
      setBuffers(fd, 16 * 1024);
      ::shutdown(fd, SHUT_WR);
      auto give_up = Clock::now() + 20s;
      while (!read_now && Clock::now() < give_up) std::this_thread::sleep_for(5ms);
      std::vector<unsigned char> got;
      if (recvAll(fd, got) && got == pattern(kBytes, 6)) intact++;
    });
    auto data = pattern(kBytes, 6);
    std::vector<std::unique_ptr<Worker>> apps;
    std::vector<UniqueFd> fds;
    for (int i = 0; i < kStreams; ++i) {  // one after the other
      fds.push_back(m.open(makeSockaddr(ip(kAddrB), late.port)));
      int fd = fds.back().get();
      apps.push_back(std::make_unique<Worker>([fd, &data] {
        std::vector<unsigned char> back;
        sendThenDrain(fd, data.data(), data.size(), back);
      }));
      m.pumpFor(200ms);
    }
    auto pushed = [&] {
      uint64_t n = 0;
      for (auto& r : m.ss->records.snapshot()) n += r.bytes_sent;
      return n;
    };
    MESSAGE("taken from the tunnel while the apps do not read: ", pushed());
    CHECK(pushed() > 2 * kBytes);
    CHECK(pushed() < 2 * 1024 * 1024);
    read_now = true;
    REQUIRE(m.pumpUntil([&] { return allDone(apps) && intact == kStreams; }, 20s));
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 1);
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == kStreams; }, 5s));
  }

  TEST_CASE("the first bytes of a stream whose app is not reachable open the tunnel's window") {
    // Each stream's bytes come with its CONNECT and wait for the app's
    // connect, which is refused (503): they are dropped, and their window
    // comes back, so the tunnel still carries a stream after five of them.
    Mesh m(smallWindows);
    UniqueFd closed_port = listenOn(ip(kAddrB));
    sockaddr_in nobody = localOf(closed_port.get());
    closed_port.reset();  // nothing listens there now: connection refused
    for (int i = 0; i < 5; ++i) {
      UniqueFd app = m.open(nobody);
      auto data = pattern(256 * 1024, 9);
      std::vector<unsigned char> back;
      Worker w([&] { sendThenDrain(app.get(), data.data(), data.size(), back); });
      REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 10s));
      CHECK(back.empty());
    }
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 5; }, 5s));
    auto in = m.closed(*m.ss);
    REQUIRE(in.size() == 5);
    for (auto& r : in) CHECK(why(r.reason) == "connect_error");
    App echo(ip(kAddrB), App::echo);
    auto big = pattern(2 * 1024 * 1024, 4);
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), echo.port));
    std::vector<unsigned char> got;
    Worker w([&] {
      std::thread tx([&] {
        sendAll(app.get(), big.data(), big.size());
        ::shutdown(app.get(), SHUT_WR);
      });
      recvAll(app.get(), got);
      tx.join();
    });
    REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 10s));
    CHECK(got == big);
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 1);
  }
}
