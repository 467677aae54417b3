// HBONE in-process, without root: what a tunnel refuses (authorization, a
// wrong port or identity, a bad preface, a request that is not CONNECT),
// a Service attempt moving on after a refusal, and the waits and bounds
// (certificates, refused dials, pending handshakes, the connection limit).
// The rig is hbone_rig.h; odd peers are plain OpenSSL + nghttp2 on threads.
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
  TEST_CASE("an authorization deny answers 401 and the app is never connected") {
    Mesh m;
    m.authorizer.verdict = Verdict::kDeny;
    App echo(ip(kAddrB), App::echo);
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), echo.port));
    // Its first bytes go out behind the CONNECT, before the answer.
    REQUIRE(sendAll(app.get(), reinterpret_cast<const unsigned char*>("hello"), 5));
    std::vector<unsigned char> got;
    Worker reader([&] { recvAll(app.get(), got); });
    REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 10s));
    CHECK(got.empty());
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 5s));
    CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 1; }, 5s));
    CHECK(echo.accepted == 0);
    CHECK(m.ss->count(Counter::kDenied) == 1);
    CHECK(m.authorizer.calls == 1);
    CHECK(m.authorizer.pod_uid == "uid-b");
    CHECK(m.authorizer.source_principal == kIdA);
    CHECK(m.authorizer.source.ip().v4net() == ip(kAddrA));
    CHECK(m.authorizer.destination.port() == echo.port);
    auto in = m.closed(*m.ss);
    REQUIRE(in.size() == 1);
    CHECK(why(in[0].reason) == "denied");
    CHECK(in[0].reason_detail == "test says no");
    auto out = m.closed(*m.cs);
    REQUIRE(out.size() == 1);
    CHECK(why(out[0].reason) == "refused");
    CHECK(out[0].reason_detail == "401");
    // The destination took none of them: not counted as sent, in the
    // record or the metrics (the destination counts none either).
    CHECK(out[0].bytes_sent == 0);
    CHECK(m.cs->observed.sent == 0);
    CHECK(m.cs->observed.opened_n == 1);
    CHECK(m.ss->observed.received == 0);
    // The tunnel survives a refused stream and carries the next one.
    m.authorizer.verdict = Verdict::kAllow;
    UniqueFd app2 = m.open(makeSockaddr(ip(kAddrB), echo.port));
    Worker ok([&] {
      sendAll(app2.get(), reinterpret_cast<const unsigned char*>("ping"), 4);
      ::shutdown(app2.get(), SHUT_WR);
      got.clear();
      recvAll(app2.get(), got);
    });
    REQUIRE(m.pumpUntil([&] { return ok.done.load(); }, 10s));
    CHECK(std::string(got.begin(), got.end()) == "ping");
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 1);
    CHECK(m.pumpUntil([&] { return m.cs->observed.sent == 4; }, 5s));
  }

  TEST_CASE("a CONNECT to a port that is not the pod's is refused with 401") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    // The pod's IP but a proxy port, or port 0.
    for (auto dst :
         {makeSockaddr(ip(kAddrB), 15006), makeSockaddr(ip(kAddrB), m.cs->ctx->hbone_port),
          makeSockaddr(ip(kAddrB), 0)}) {
      UniqueFd app = m.open(dst);
      std::vector<unsigned char> got;
      Worker reader([&] { recvAll(app.get(), got); });
      REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 10s));
      CHECK(got.empty());
    }
    CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 3; }, 5s));
    CHECK(m.ss->count(Counter::kRefused) == 3);
    CHECK(m.authorizer.calls == 0);  // refused before the hook is asked
    for (auto& r : m.closed(*m.cs)) {
      CHECK(why(r.reason) == "refused");
      CHECK(r.reason_detail == "401");
    }
    for (auto& r : m.closed(*m.ss)) CHECK(why(r.reason) == "refused_not_this_pod");
    CHECK(echo.accepted == 0);
  }

  TEST_CASE("a client certificate that is no X.509-SVID is refused: a CA, two URI SANs") {
    for (bool ca : {true, false}) {
      CAPTURE(ca);
      Mesh m;
      test::LeafFlaws flaws;
      if (ca)
        flaws.ca = true;
      else
        flaws.second_uri = "spiffe://cluster.local/ns/kube-system/sa/admin";
      // The leaf's own check: what the server's log line says.
      auto bad = m.ca.issue(kIdA, flaws);
      auto chain = x509::parseChain(bad->chain_pem);
      REQUIRE(chain.has_value());
      auto id = x509::svidId((*chain)[0].get());
      REQUIRE_FALSE(id.has_value());
      CHECK(id.error().describe().find(ca ? "CA certificate" : "2 URI SANs") != std::string::npos);
      CHECK(x509::svidId(x509::parseChain(m.ca.issue(kIdA)->chain_pem)->at(0).get()).value() ==
            kIdA);
      // Through a real handshake: the server refuses the tunnel.
      m.creds.set(kIdA, bad);
      App echo(ip(kAddrB), App::echo);
      UniqueFd app = m.open(makeSockaddr(ip(kAddrB), echo.port));
      std::vector<unsigned char> got;
      Worker reader([&] { recvAll(app.get(), got); });
      REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 10s));
      CHECK(got.empty());
      CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kHandshakeFailures) == 1; }, 5s));
      CHECK(echo.accepted == 0);
      CHECK(m.authorizer.calls == 0);
    }
  }

  TEST_CASE("a server presenting another identity than expected is refused") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    UniqueFd app =
        m.open(makeSockaddr(ip(kAddrB), echo.port), "spiffe://cluster.local/ns/b/sa/other");
    std::vector<unsigned char> got;
    Worker reader([&] { recvAll(app.get(), got); });
    REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 10s));
    CHECK(got.empty());
    CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 1; }, 5s));
    CHECK(m.cs->count(Counter::kHandshakeFailures) == 1);
    CHECK(m.cs->count(Counter::kTunnelsActive) == 0);
    auto out = m.closed(*m.cs);
    REQUIRE(out.size() == 1);
    CHECK(why(out[0].reason) == "no_tunnel");
    CHECK(out[0].reason_detail == "peer_refused");
    CHECK(echo.accepted == 0);
  }

  TEST_CASE("bad preface that is not TLS is a handshake failure and closes the tunnel") {
    Mesh m;
    UniqueFd raw = connectTo(localOf(m.hbone_listener.get()), ip(kAddrA));
    setTimeouts(raw.get(), 10s);
    std::string junk = "GET / HTTP/1.1\r\nHost: b\r\n\r\n";
    REQUIRE(sendAll(raw.get(), reinterpret_cast<const unsigned char*>(junk.data()), junk.size()));
    std::vector<unsigned char> got;
    Worker reader([&] { recvAll(raw.get(), got); });
    REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 10s));
    CHECK(m.ss->count(Counter::kHandshakeFailures) == 1);
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kTunnelsActive) == 0; }, 5s));
    CHECK(m.ss->count(Counter::kTunnelsOpened) == 1);
    CHECK(m.ss->count(Counter::kAccepted) == 0);
    CHECK(m.authorizer.calls == 0);
  }

  TEST_CASE("bad preface after TLS is a bad request and closes the tunnel") {
    Mesh m;
    REQUIRE(rawPeer(m, [](SSL* ssl) {
      std::string junk = "this is not the HTTP/2 client preface\r\n\r\n";
      SSL_write(ssl, junk.data(), static_cast<int>(junk.size()));
      char buf[4096];
      while (SSL_read(ssl, buf, sizeof(buf)) > 0) {
      }
    }));
    CHECK(m.ss->count(Counter::kBadRequests) == 1);
    CHECK(m.ss->count(Counter::kHandshakeFailures) == 0);
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kTunnelsActive) == 0; }, 5s));
  }

  TEST_CASE("a request that is not CONNECT is a bad request with GOAWAY and closes the tunnel") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    RawClient h2;
    REQUIRE(rawPeer(m, [&](SSL* ssl) {
      h2.run(ssl, "GET", formatEndpoint(makeSockaddr(ip(kAddrB), echo.port)));
    }));
    CHECK(h2.goaway);
    CHECK(h2.goaway_error == NGHTTP2_PROTOCOL_ERROR);
    CHECK(h2.status.empty());
    CHECK(m.ss->count(Counter::kBadRequests) == 1);
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kTunnelsActive) == 0; }, 5s));
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 5s));
    auto in = m.closed(*m.ss);
    REQUIRE(in.size() == 1);
    CHECK(why(in[0].reason) == "bad_request");
    CHECK(m.authorizer.calls == 0);
    CHECK(echo.accepted == 0);
  }

  TEST_CASE("HTTP/2 rapid reset: nghttp2 ends the tunnel, and the agent counts and says so") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    RawClient h2;
    REQUIRE(rawPeer(
        m,
        [&](SSL* ssl) {
          h2.rapidReset(ssl, formatEndpoint(makeSockaddr(ip(kAddrB), echo.port)), 40);
        },
        30s));
    CHECK(h2.goaway);
    CHECK(h2.goaway_error != NGHTTP2_NO_ERROR);
    CHECK(m.ss->count(Counter::kBadRequests) == 1);
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kTunnelsActive) == 0; }, 5s));
  }

  TEST_CASE(
      "a Service attempt refused by 15008 moves on - one refused by the destination's "
      "authorization (401) is the connection's answer") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    TestSink sink;
    auto svc = std::make_shared<ServiceTarget>();
    svc->name = "b/echo";
    svc->endpoints = {makeSockaddr(ip("127.0.0.6"), 8080), makeSockaddr(ip(kAddrB), 15006),
                      makeSockaddr(ip(kAddrB), echo.port)};
    sockaddr_in vip = makeSockaddr(ip("10.96.0.10"), 80);
    auto [app, attempt] = m.connection(vip);
    attempt->setService(&sink, svc, vip);
    MeshWorkload target{kIdB, "b/server", "node-b"};
    // The app sends first: a copy goes with each CONNECT, and nothing may be
    // read from the app's socket before a 200.
    REQUIRE(sendAll(app.get(), reinterpret_cast<const unsigned char*>("hello"), 5));
    ::shutdown(app.get(), SHUT_WR);
    // Nothing listens on 127.0.0.6: the attempt moves on.
    attempt->pick(svc->endpoints[0]);
    m.client->open(std::move(attempt), target);
    REQUIRE(m.pumpUntil([&] { return sink.retried != nullptr; }, 5s));
    attempt = std::move(sink.retried);
    // 15006 is refused with 401, as a deny is: the app is reset, and the
    // third endpoint (which would answer) is never tried, as on one node.
    attempt->pick(svc->endpoints[1]);
    m.client->open(std::move(attempt), target);
    std::vector<unsigned char> got;
    std::atomic<bool> clean_end{true};
    Worker reader([&] { clean_end = recvAll(app.get(), got); });
    REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 10s));
    CHECK(got.empty());
    CHECK_FALSE(clean_end.load());  // reset, as a deny on one node
    CHECK(sink.retried == nullptr);
    REQUIRE(sink.whys.size() == 1);
    CHECK(sink.whys[0] == "connect_error: 15008 refused");
    // The 401 is the destination answering: no failure towards ejection.
    CHECK(sink.results == std::vector<bool>{false, true});
    CHECK(echo.accepted == 0);
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 2; }, 5s));
    CHECK(m.pumpUntil([&] { return sink.released == 2; }, 5s));
    int retried = 0;
    for (auto& r : m.closed(*m.cs)) {
      CHECK(r.destination_service == "b/echo");
      if (r.retried) {
        retried++;
      } else {
        CHECK(why(r.reason) == "refused");
        CHECK(r.reason_detail == "401");
      }
    }
    CHECK(retried == 1);
    // The metrics see one connection (the app made one), failed with the
    // 401, under the endpoint that answered: the retried attempt is not one.
    CHECK(m.cs->observed.opened_n == 1);
    CHECK(m.cs->observed.closed_n == 1);
    CHECK(m.cs->observed.sent == 0);
  }

  TEST_CASE("connections wait for a certificate on both sides and give up after certificate_wait") {
    Mesh m([](EngineConfig& c) { c.certificate_wait = 300ms; });
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    auto cred_a = m.creds.credential(kIdA), cred_b = m.creds.credential(kIdB);
    m.creds.set(kIdA, nullptr);
    m.creds.set(kIdB, nullptr);
    UniqueFd app = m.open(dst);
    std::vector<unsigned char> got;
    Worker w([&] { sendThenDrain(app.get(), "late", 4, got); });
    m.pumpFor(100ms);
    CHECK(m.cs->count(Counter::kCertificateWaits) == 1);
    CHECK(m.pod_a->connections == 1);  // a waiting connection counts against the limit
    m.creds.set(kIdA, cred_a);         // the client's comes; the server's pod still has none
    REQUIRE(m.pumpUntil([&] { return m.ss->count(Counter::kCertificateWaits) == 1; }, 5s));
    m.creds.set(kIdB, cred_b);
    REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 10s));
    CHECK(std::string(got.begin(), got.end()) == "late");
    // No certificate at all: reset after certificate_wait.
    m.creds.set(kIdA, nullptr);
    UniqueFd app2 = m.open(dst);
    bool orderly = true;
    auto t0 = Clock::now();
    Worker r([&] {
      std::vector<unsigned char> none;
      orderly = recvAll(app2.get(), none);
    });
    REQUIRE(m.pumpUntil([&] { return r.done.load(); }, 5s));
    CHECK(Clock::now() - t0 >= 250ms);
    CHECK_FALSE(orderly);
    CHECK(m.cs->count(Counter::kNoCertificate) == 1);
    CHECK(m.pod_a->connections == 0);
    // It has its record (connections, the access log), as every connection.
    auto closed = m.closed(*m.cs);
    REQUIRE_FALSE(closed.empty());
    const auto& rec = closed.back();
    CHECK(std::string(toString(rec.reason)) == "no_certificate");
    CHECK(rec.reasonText() == std::string("no_certificate: ") + kIdA + " after 300 ms");
    CHECK(rec.destination == formatEndpoint(dst));
    CHECK(rec.source_principal == kIdA);
  }

  TEST_CASE("a refused 15008 is redialled within hbone_refused_retry") {
    Mesh m([](EngineConfig& c) { c.hbone_refused_retry = 2000ms; });
    App echo(ip(kAddrB), App::echo);
    sockaddr_in hbone = localOf(m.hbone_listener.get());
    m.hbone_listener.reset();  // pod B's 15008 is not there yet
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), echo.port));
    std::vector<unsigned char> got;
    Worker w([&] { sendThenDrain(app.get(), "again", 5, got); });
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kConnectRetries) >= 2; }, 5s));
    m.hbone_listener = listenOn(hbone.sin_addr.s_addr, ntohs(hbone.sin_port), true);
    REQUIRE(m.pumpUntil([&] { return w.done.load(); }, 10s));
    CHECK(std::string(got.begin(), got.end()) == "again");
    CHECK(m.cs->count(Counter::kTunnelsOpened) == 1);
    CHECK(m.cs->count(Counter::kConnectFailures) == 0);
  }

  TEST_CASE("pending handshakes are bounded per pod and time out") {
    Mesh m([](EngineConfig& c) {
      c.hbone_max_pending_handshakes_per_pod = 2;
      c.hbone_handshake_timeout = 300ms;
    });
    std::vector<UniqueFd> idle;
    for (int i = 0; i < 3; ++i) {
      idle.push_back(connectTo(localOf(m.hbone_listener.get()), ip(kAddrA)));
      REQUIRE(
          m.pumpUntil([&] { return m.ss->count(Counter::kTunnelsOpened) == unsigned(i + 1); }, 5s));
    }
    CHECK(m.ss->count(Counter::kPendingEvicted) == 1);
    CHECK(m.ss->count(Counter::kTunnelsActive) == 2);
    int err = 0;  // the oldest was reset
    CHECK(m.pumpUntil(
        [&] {
          char c;
          ssize_t k = ::recv(idle[0].get(), &c, 1, MSG_DONTWAIT);
          err = k < 0 ? errno : 0;
          return k == 0 || (k < 0 && err != EAGAIN);
        },
        2s));
    CHECK(err == ECONNRESET);
    REQUIRE(m.pumpUntil([&] { return m.ss->count(Counter::kTunnelsActive) == 0; }, 3s));
    CHECK(m.ss->count(Counter::kHboneTimeouts) == 2);
  }

  TEST_CASE("one source holds at most half of a pod's connection limit - its next CONNECT is 503") {
    Mesh m([](EngineConfig& c) { c.max_connections_per_pod = 4; });
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    UniqueFd first = m.open(dst), second = m.open(dst);
    REQUIRE(m.pumpUntil([&] { return echo.accepted == 2; }, 5s));
    CHECK(proxy::SourceShare::held(*m.pod_b, IpAddr::v4(ip(kAddrA))) == 2);
    UniqueFd third = m.open(dst);  // 3 of 4 open: the pod's limit is not reached, A's half is
    std::vector<unsigned char> got;
    Worker r([&] { recvAll(third.get(), got); });
    REQUIRE(m.pumpUntil([&] { return r.done.load(); }, 5s));
    CHECK(got.empty());
    CHECK(m.ss->count(Counter::kLimitRejected) == 1);
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 1; }, 5s));
    CHECK(m.closed(*m.cs)[0].reason_detail == "503");
    CHECK(echo.accepted == 2);
    // One of A's ends: its place is free again.
    ::shutdown(first.get(), SHUT_RDWR);
    first.reset();
    REQUIRE(m.pumpUntil(
        [&] { return proxy::SourceShare::held(*m.pod_b, IpAddr::v4(ip(kAddrA))) == 1; }, 5s));
    UniqueFd fourth = m.open(dst);
    CHECK(m.pumpUntil([&] { return echo.accepted == 3; }, 5s));
  }

  TEST_CASE("the connection limit answers 503 and an abort by the authorizer resets the stream") {
    Mesh m([](EngineConfig& c) { c.max_connections_per_pod = 1; });
    App echo(ip(kAddrB), App::echo);
    sockaddr_in dst = makeSockaddr(ip(kAddrB), echo.port);
    UniqueFd first = m.open(dst);
    REQUIRE(m.pumpUntil([&] { return echo.accepted == 1; }, 5s));
    UniqueFd second = m.open(dst);  // one open already: the limit of 1 is reached
    std::vector<unsigned char> got;
    Worker r([&] { recvAll(second.get(), got); });
    REQUIRE(m.pumpUntil([&] { return r.done.load(); }, 5s));
    CHECK(m.ss->count(Counter::kLimitRejected) == 1);
    REQUIRE(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 1; }, 5s));
    CHECK(m.closed(*m.cs)[0].reason_detail == "503");
    // Later the policy says no to the open one (Engine::reauthorize).
    auto open = m.ss->records.openInbound(0);
    REQUIRE(open.size() == 1);
    REQUIRE(open[0]->owner != nullptr);
    open[0]->owner->abort(CloseReason::kDenied);
    bool orderly = true;
    Worker r2([&] { orderly = recvAll(first.get(), got); });
    REQUIRE(m.pumpUntil([&] { return r2.done.load(); }, 5s));
    CHECK_FALSE(orderly);
    REQUIRE(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 2; }, 5s));
    bool denied = false;
    for (auto& rec : m.closed(*m.ss))
      if (why(rec.reason) == "denied") denied = true;
    CHECK(denied);
    CHECK(m.cs->count(Counter::kTunnelsActive) == 1);  // the tunnel carries on
  }
}
