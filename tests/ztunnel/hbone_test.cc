// HBONE in-process, without root, on the rig of hbone_rig.h: streams sharing
// a tunnel, a slow reader, keepalive, pooled tunnels, GOAWAY, a removed pod,
// idle tunnels. What a tunnel refuses, and its bounds: hbone_refusal_test.cc.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "sluice/common/addr.h"
#include "sluice/common/x509.h"
#include "support/test_ca.h"
#include "ztunnel/hbone/client.h"
#include "ztunnel/hbone/server.h"
#include "ztunnel/hbone_peers.h"
#include "ztunnel/hbone_rig.h"

using namespace hbone_rig;

TEST_SUITE("hbone") {
  TEST_CASE("many concurrent streams share one tunnel with bytes intact both ways and half-close") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    constexpr int kStreams = 40;
    constexpr size_t kBytes = 300 * 1024;
    std::vector<std::unique_ptr<Worker>> apps;
    std::atomic<int> intact{0};
    for (int i = 0; i < kStreams; ++i) {
      auto app = std::make_shared<UniqueFd>(m.open(dst));
      apps.push_back(std::make_unique<Worker>([app, i, &intact] {
        auto data = pattern(kBytes, static_cast<unsigned>(i));
        std::thread writer([&] {
          sendAll(app->get(), data.data(), data.size());
          ::shutdown(app->get(), SHUT_WR);  // half-close: the echo still answers
        });
        std::vector<unsigned char> back;
        bool ok = recvAll(app->get(), back);
        writer.join();
        if (ok && back == data) intact++;
      }));
    }
    REQUIRE(m.pumpUntil([&] { return allDone(apps); }, 30s));
    CHECK(intact == kStreams);
    CHECK(echo.accepted == kStreams);
    // Everything closes in order and is counted once.
    CHECK(m.pumpUntil(
        [&] {
          return m.cs->count(Counter::kClosed) == kStreams &&
                 m.ss->count(Counter::kClosed) == kStreams;
        },
        5s));
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 1);
    CHECK(m.ss->count(Counter::kTunnelsOpened) == 1);
    CHECK(m.cs->count(Counter::kActive) == 0);
    CHECK(m.ss->count(Counter::kActive) == 0);
    CHECK(m.cs->count(Counter::kAccepted) == 0);  // the listener counts client streams
    CHECK(m.ss->count(Counter::kAccepted) == kStreams);
    CHECK(m.pod_a->connections == 0);
    CHECK(m.pod_b->connections == 0);
    auto out = m.closed(*m.cs);
    REQUIRE(out.size() == kStreams);
    for (auto& r : out) {
      CHECK(why(r.reason) == "eof");
      CHECK(r.bytes_sent == kBytes);
      CHECK(r.bytes_received == kBytes);
      CHECK((r.direction == Direction::kOutbound));
      CHECK((r.path == Path::kHbone));
      CHECK(r.mutual_tls);
      CHECK(r.source_principal == kIdA);
      CHECK(r.destination_principal == kIdB);
      CHECK(r.destination == formatEndpoint(dst));
    }
    auto in = m.closed(*m.ss);
    REQUIRE(in.size() == kStreams);
    for (auto& r : in) {
      CHECK(why(r.reason) == "eof");
      CHECK((r.direction == Direction::kInbound));
      CHECK(r.source_principal == kIdA);
      CHECK(r.source.rfind(std::string(kAddrA) + ":", 0) == 0);  // from Forwarded
      CHECK(r.bytes_sent == kBytes);
      CHECK(r.bytes_received == kBytes);
    }
    CHECK(m.authorizer.calls == kStreams);
    CHECK((m.authorizer.path == Path::kHbone));
    CHECK(m.authorizer.source_principal == kIdA);
    CHECK(m.authorizer.mutual_tls);
  }

  TEST_CASE("a slow reader stalls the sender with bounded buffering and then gets everything") {
    Mesh m([](EngineConfig& c) {
      c.hbone_stream_window = 64 * 1024;
      c.buffer_bytes = 16 * 1024;
    });
    m.ss->sockets.buffer_bytes = 32 * 1024;
    std::atomic<bool> read_now{false};
    std::vector<unsigned char> got;
    App sink(ip(kAddrB), [&](int fd) {
      setBuffers(fd, 32 * 1024);
      auto give_up = Clock::now() + 20s;
      while (!read_now && Clock::now() < give_up) std::this_thread::sleep_for(5ms);
      recvAll(fd, got);
    });
    constexpr size_t kBytes = 24 << 20;
    auto data = pattern(kBytes, 7);
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), sink.port));
    setBuffers(app.get(), 32 * 1024);
    std::atomic<size_t> written{0};
    Worker writer([&] {
      const unsigned char* p = data.data();
      size_t left = kBytes;
      while (left > 0) {
        ssize_t k = ::send(app.get(), p, std::min<size_t>(left, 16384), MSG_NOSIGNAL);
        if (k <= 0) return;
        p += k;
        left -= static_cast<size_t>(k);
        written += static_cast<size_t>(k);
      }
      ::shutdown(app.get(), SHUT_WR);
    });
    // The writer stalls: nothing moves for a while, far from the end.
    size_t last = 0;
    auto still_since = Clock::now();
    bool stalled = m.pumpUntil(
        [&] {
          size_t w = written;
          if (w != last) {
            last = w;
            still_since = Clock::now();
          }
          return w > 0 && Clock::now() - still_since > 400ms;
        },
        10s);
    CHECK(stalled);
    CHECK(written < kBytes / 4);
    // What the server side took from the tunnel but the app has not read is
    // bounded by the stream window and the socket buffers, not the payload.
    uint64_t pushed = 0;
    for (auto& r : m.ss->records.snapshot()) pushed += r.bytes_sent;
    MESSAGE("stalled after ", written.load(), " bytes written, ", pushed, " pushed to the app");
    CHECK(pushed > 0);
    CHECK(pushed < 2 * 1024 * 1024);
    read_now = true;
    REQUIRE(m.pumpUntil([&] { return writer.done.load() && sink.accepted == 1; }, 30s));
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 30s));
    CHECK(got.size() == kBytes);
    CHECK((got == data));
  }

  TEST_CASE("a reset by one app reaches the other while neither reads nor writes") {
    // The sender's bytes fill the stream window and the socket buffers; the
    // stream then posts no receive on the sender's socket, and its tick
    // watches it: the reset still becomes an RST_STREAM and the other app's
    // reset.
    for (bool client_resets : {true, false}) {
      CAPTURE(client_resets);
      Mesh m([](EngineConfig& c) {
        c.hbone_stream_window = 64 * 1024;
        c.buffer_bytes = 16 * 1024;
      });
      m.ss->sockets.buffer_bytes = 32 * 1024;
      // Sends without blocking until nothing went for 300 ms; calls `more`
      // between tries (the rig's ring, or a sleep).
      auto flood = [](int fd, const std::function<void()>& more) {
        std::vector<unsigned char> chunk(16 * 1024, 0x5a);
        size_t total = 0;
        auto moved = Clock::now();
        while (Clock::now() - moved < 300ms) {
          ssize_t k = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
          if (k > 0) {
            total += static_cast<size_t>(k);
            moved = Clock::now();
          } else {
            more();
          }
        }
        return total;
      };
      // The receiver: learns of the reset without reading (a read would
      // make room and the stream's next receive would find the reset
      // anyway), then reads what reached it and the reset.
      struct Seen {
        std::atomic<int> revents{-1};
        std::atomic<bool> orderly{true};
        std::atomic<bool> done{false};
      } seen;
      auto receive = [&seen](int fd) {
        pollfd pf{fd, 0, 0};
        seen.revents = ::poll(&pf, 1, 10000) == 1 ? pf.revents : 0;
        std::vector<unsigned char> got;
        seen.orderly = recvAll(fd, got);
        seen.done = true;
      };
      std::atomic<size_t> sent{0};
      App server(ip(kAddrB), [&](int fd) {
        setBuffers(fd, 32 * 1024);
        if (client_resets) return receive(fd);
        sent = flood(fd, [] { std::this_thread::sleep_for(5ms); });
        linger lg{1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));  // the App's close resets
      });
      UniqueFd app = m.open(makeSockaddr(ip(kAddrB), server.port));
      setBuffers(app.get(), 32 * 1024);
      REQUIRE(m.pumpUntil([&] { return server.accepted == 1; }, 5s));
      if (client_resets) {
        sent = flood(app.get(), [&] { m.step(); });
        linger lg{1, 0};
        REQUIRE(setsockopt(app.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
        app.reset();
        REQUIRE(m.pumpUntil([&] { return seen.done.load(); }, 15s));
      } else {
        Worker client([&] { receive(app.get()); });
        REQUIRE(m.pumpUntil([&] { return seen.done.load(); }, 15s));
      }
      MESSAGE("stalled after ", sent.load(), " bytes");
      CHECK(sent > 0);
      CHECK((seen.revents & POLLERR) != 0);
      CHECK_FALSE(seen.orderly);
      CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 5s));
      CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 1; }, 5s));
    }
  }

  TEST_CASE("an HTTP request the server app resets is reported at both ends, with status 0") {
    Mesh m;
    App server(ip(kAddrB), [](int fd) {
      std::string got;
      char buf[4096];
      while (got.find("\r\n\r\n") == std::string::npos) {
        ssize_t k = ::recv(fd, buf, sizeof(buf), 0);
        if (k <= 0) return;
        got.append(buf, static_cast<size_t>(k));
      }
      linger lg{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));  // the App's close resets
    });
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), server.port));
    const std::string request = "GET /reset HTTP/1.1\r\nHost: b\r\n\r\n";
    REQUIRE(
        sendAll(app.get(), reinterpret_cast<const unsigned char*>(request.data()), request.size()));
    REQUIRE(m.pumpUntil([&] { return server.accepted == 1; }, 5s));
    CHECK(m.pumpUntil(
        [&] { return m.ss->count(Counter::kClosed) == 1 && m.cs->count(Counter::kClosed) == 1; },
        10s));
    CHECK(m.cs->observed.statuses == std::vector<int>{0});
    CHECK(m.ss->observed.statuses == std::vector<int>{0});
  }

  TEST_CASE("an HTTP request to a port nobody listens on is reported at both ends, with status 0") {
    Mesh m;
    uint16_t closed_port = 0;
    {
      UniqueFd probe = listenOn(ip(kAddrB));
      closed_port = ntohs(localOf(probe.get()).sin_port);
    }  // closed: a connect to it is refused
    // The request is in the app's socket before the stream opens: it goes
    // out right behind the CONNECT, and the server's connect fails after.
    auto [app, attempt] = m.connection(makeSockaddr(ip(kAddrB), closed_port));
    const std::string request = "GET /nobody HTTP/1.1\r\nHost: b\r\n\r\n";
    REQUIRE(
        sendAll(app.get(), reinterpret_cast<const unsigned char*>(request.data()), request.size()));
    m.client->open(std::move(attempt), MeshWorkload{kIdB, "b/server", "node-b"});
    CHECK(m.pumpUntil(
        [&] { return m.ss->count(Counter::kClosed) == 1 && m.cs->count(Counter::kClosed) == 1; },
        10s));
    CHECK(m.ss->count(Counter::kConnectFailures) == 1);
    CHECK(m.cs->observed.statuses == std::vector<int>{0});
    CHECK(m.ss->observed.statuses == std::vector<int>{0});  // it came with the CONNECT
    auto closed = m.closed(*m.ss);
    REQUIRE(closed.size() == 1);
    CHECK(why(closed[0].reason) == "connect_error");
  }

  TEST_CASE("keepalive PINGs keep a quiet tunnel and a silent peer is closed within 2x keepalive") {
    Mesh m([](EngineConfig& c) { c.hbone_keepalive = 200ms; });
    App echo(ip(kAddrB), App::echo);
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), echo.port));
    REQUIRE(m.pumpUntil([&] { return echo.accepted == 1; }, 5s));
    // Nothing moves, but the peer answers PINGs: the tunnel stays.
    m.pumpFor(900ms);
    CHECK(m.cs->count(Counter::kTunnelsActive) == 1);
    CHECK(m.cs->count(Counter::kActive) == 1);
    // The server side goes silent (its ring no longer runs).
    m.server_paused = true;
    auto t0 = Clock::now();
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kTunnelsActive) == 0; }, 3s));
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
    MESSAGE("closed after ", took.count(), " ms");
    // The last PING answer came at most one keepalive before the pause.
    CHECK(took >= 190ms);
    CHECK(took < 800ms);
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 1; }, 2s));
    auto out = m.closed(*m.cs);
    REQUIRE(out.size() == 1);
    CHECK(why(out[0].reason) == "tunnel_closed");
    CHECK(out[0].reason_detail == "keepalive_timeout");
    std::vector<unsigned char> got;
    bool orderly = true;
    Worker reader([&] { orderly = recvAll(app.get(), got); });
    REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 5s));
    CHECK_FALSE(orderly);  // the app sees a reset
    m.server_paused = false;
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kTunnelsActive) == 0; }, 5s));
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 5s));
  }

  TEST_CASE("a pooled tunnel whose peer restarted is replaced by a fresh one") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    CHECK(roundTrip(m, dst, "before"));
    CHECK(m.cs->count(Counter::kTunnelsActive) == 1);  // pooled, idle
    // The server side goes away and comes back (a restarted node proxy).
    m.server->shutdown();
    REQUIRE(m.pumpUntil([&] { return m.server->idle(); }, 5s));
    m.server = std::make_unique<hbone::Server>(*m.ss->ctx, m.creds, *m.tls);
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kTunnelsActive) == 0; }, 5s));
    CHECK(roundTrip(m, dst, "after"));
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 2);
    CHECK(m.cs->count(Counter::kTunnelsActive) == 1);
    CHECK(echo.accepted == 2);
  }

  TEST_CASE("GOAWAY from the server lets open streams finish and new ones take a new tunnel") {
    Mesh m;
    m.server.reset();  // plain nghttp2 answers on pod B's 15008 instead
    RawServer raw(m.hbone_listener.get(), *m.tls, m.creds.credential(kIdB), 3);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), 8080);
    std::atomic<bool> go{false};
    std::atomic<int> intact{0};
    std::vector<std::unique_ptr<Worker>> apps;
    auto start = [&](int i) {
      auto app = std::make_shared<UniqueFd>(m.open(dst));
      apps.push_back(std::make_unique<Worker>([app, i, &go, &intact] {
        auto data = pattern(200 * 1024, static_cast<unsigned>(i));
        if (!sendAll(app->get(), data.data(), 1000)) return;
        auto give_up = Clock::now() + 20s;  // a failed check must not hang the test
        while (!go && Clock::now() < give_up) std::this_thread::sleep_for(2ms);
        std::thread rest([&] {
          sendAll(app->get(), data.data() + 1000, data.size() - 1000);
          ::shutdown(app->get(), SHUT_WR);
        });
        std::vector<unsigned char> back;
        bool ok = recvAll(app->get(), back);
        rest.join();
        if (ok && back == data) intact++;
      }));
    };
    for (int i = 0; i < 3; ++i) start(i);
    REQUIRE(m.pumpUntil([&] { return raw.goaway_sent.load(); }, 5s));
    m.pumpFor(100ms);  // the client reads the GOAWAY
    start(3);
    REQUIRE(m.pumpUntil([&] { return raw.streams == 4; }, 5s));
    CHECK(raw.connections == 2);
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 2);
    go = true;
    REQUIRE(m.pumpUntil([&] { return allDone(apps); }, 20s));
    CHECK(intact == 4);
    // The first tunnel closes once its streams are done; the second stays pooled.
    CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kTunnelsActive) == 1; }, 5s));
    CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 4; }, 5s));
    for (auto& r : m.closed(*m.cs)) CHECK(why(r.reason) == "eof");
    m.client->shutdown();
    CHECK(m.pumpUntil([&] { return m.client->idle(); }, 5s));
  }

  TEST_CASE("removing the pod resets its tunnels and streams") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), echo.port));
    REQUIRE(m.pumpUntil([&] { return echo.accepted == 1; }, 5s));
    m.server->removePod("uid-b");
    bool orderly = true;
    std::vector<unsigned char> got;
    Worker r([&] { orderly = recvAll(app.get(), got); });
    REQUIRE(m.pumpUntil([&] { return r.done.load(); }, 5s));
    CHECK_FALSE(orderly);
    REQUIRE(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 5s));
    CHECK(why(m.closed(*m.ss)[0].reason) == "pod_removed");
    CHECK(m.pumpUntil([&] { return m.server->idle() && m.cs->count(Counter::kTunnelsActive) == 0; },
                      5s));
  }

  TEST_CASE("an idle tunnel holds no receive buffer, and its streams carry bytes again") {
    // The rig ticks at every step, so a tunnel whose receive waited two
    // ticks parks within milliseconds: its receive is cancelled and its
    // buffer freed; a poll brings a fresh one when bytes come.
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    auto parked = [&] {
      return m.client->receiveBufferBytes() == 0 && m.server->receiveBufferBytes() == 0;
    };
    UniqueFd app = m.open(dst);
    REQUIRE(m.pumpUntil([&] { return echo.accepted == 1; }, 5s));
    REQUIRE(m.pumpUntil(parked, 5s));
    // A parked tunnel at both ends: one stream's bytes go both ways, then
    // both park again, and again, with the same stream and tunnel.
    for (int round = 0; round < 3; ++round) {
      std::string text = "round " + std::to_string(round) + std::string(100000, 'x');
      std::string got(text.size(), '\0');
      Worker w([&] {
        sendAll(app.get(), reinterpret_cast<const unsigned char*>(text.data()), text.size());
        size_t n = 0;
        while (n < got.size()) {
          ssize_t k = ::recv(app.get(), got.data() + n, got.size() - n, 0);
          if (k <= 0) break;
          n += static_cast<size_t>(k);
        }
      });
      REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 10s));
      CHECK(got == text);
      CHECK(m.pumpUntil(parked, 5s));
    }
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 1);
    CHECK(m.cs->count(Counter::kActive) == 1);
    // The app's end while both ends are parked: the server's app sees it.
    ::shutdown(app.get(), SHUT_WR);
    std::vector<unsigned char> rest;
    Worker drain([&] { recvAll(app.get(), rest); });
    REQUIRE(m.pumpUntil([&] { return drain.done.load(); }, 5s));
    CHECK(rest.empty());
    CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 1; }, 5s));
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 5s));
  }

  TEST_CASE("a CONNECT with END_STREAM: the app gets its FIN and the stream ends cleanly") {
    // A client with nothing to send may end its half with the request.
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    std::string authority = formatEndpoint(makeSockaddr(ip(kAddrB), echo.port));
    struct Seen {
      std::string status;
      bool ended = false;
    } seen;
    REQUIRE(rawPeer(m, [&](SSL* ssl) {
      auto s = clientSession(
          &seen,
          [](nghttp2_session*, const nghttp2_frame* f, void* ud) {
            if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
                (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
              static_cast<Seen*>(ud)->ended = true;
            return 0;
          },
          [](nghttp2_session*, const nghttp2_frame*, const uint8_t* name, size_t namelen,
             const uint8_t* value, size_t valuelen, uint8_t, void* ud) {
            if (std::string_view(reinterpret_cast<const char*>(name), namelen) == ":status")
              static_cast<Seen*>(ud)->status.assign(reinterpret_cast<const char*>(value), valuelen);
            return 0;
          });
      std::string method = "CONNECT";
      nghttp2_nv hdrs[] = {
          {(uint8_t*)":method", (uint8_t*)method.data(), 7, method.size(), NGHTTP2_NV_FLAG_NONE},
          {(uint8_t*)":authority", (uint8_t*)authority.data(), 10, authority.size(),
           NGHTTP2_NV_FLAG_NONE}};
      nghttp2_submit_request(s.get(), nullptr, hdrs, 2, nullptr, nullptr);  // END_STREAM
      uint8_t buf[16384];
      while (!seen.ended) {
        const uint8_t* data = nullptr;
        for (ssize_t n; (n = nghttp2_session_mem_send(s.get(), &data)) > 0;)
          if (SSL_write(ssl, data, static_cast<int>(n)) <= 0) return;
        int n = SSL_read(ssl, buf, sizeof(buf));
        if (n <= 0 || nghttp2_session_mem_recv(s.get(), buf, static_cast<size_t>(n)) < 0) return;
      }
    }));
    CHECK(seen.status == "200");
    CHECK(seen.ended);  // the echo app saw the FIN and ended its half
    REQUIRE(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 5s));
    auto in = m.closed(*m.ss);
    REQUIRE(in.size() == 1);
    CHECK(why(in[0].reason) == "eof");
  }

  TEST_CASE("an abort resets the apps at both ends of an idle stream") {
    Mesh m;
    std::atomic<int> server_end{0};  // 1: FIN, -1: reset
    App app(ip(kAddrB), [&](int fd) {
      std::vector<unsigned char> got;
      server_end = recvAll(fd, got) ? 1 : -1;
    });
    UniqueFd client = m.open(makeSockaddr(ip(kAddrB), app.port));
    REQUIRE(m.pumpUntil([&] { return app.accepted == 1; }, 5s));
    m.pumpFor(50ms);  // both ends idle
    auto open = m.ss->records.openInbound(0);
    REQUIRE(open.size() == 1);
    REQUIRE(open[0]->owner != nullptr);
    open[0]->owner->abort(CloseReason::kDenied);
    std::vector<unsigned char> got;
    bool orderly = true;
    Worker r([&] { orderly = recvAll(client.get(), got); });
    REQUIRE(m.pumpUntil([&] { return r.done.load() && server_end != 0; }, 5s));
    CHECK_FALSE(orderly);
    CHECK(server_end == -1);
  }

  TEST_CASE("an idle pooled tunnel is closed and a renewed certificate drains the old tunnel") {
    Mesh m([](EngineConfig& c) { c.hbone_idle_timeout = 300ms; });
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    CHECK(roundTrip(m, dst, "one"));
    m.pumpFor(100ms);
    CHECK(m.cs->count(Counter::kTunnelsActive) == 1);  // pooled
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kTunnelsActive) == 0; }, 3s));
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kTunnelsActive) == 0; }, 3s));
    CHECK(roundTrip(m, dst, "two"));
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 2);
    // Pod A's certificate is renewed: new streams take a new tunnel, and the
    // old one (idle) goes.
    m.creds.set(kIdA, m.ca.issue(kIdA));
    CHECK(roundTrip(m, dst, "three"));
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 3);
    CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kTunnelsActive) == 1; }, 3s));
  }
}
