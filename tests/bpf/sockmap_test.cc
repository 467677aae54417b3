// bpf/sockmap.bpf.c with real sockets in a scratch netns (BPF_PROG_TEST_RUN
// does not run sockops or sk_msg programs). "Bypassed TCP" is measured by
// the netns's own TCP segment counter (Tcp OutSegs in /proc/net/snmp): a
// redirected stream leaves it where the handshake put it.
#include <filesystem>

#include "bpf/sockmap_support.h"
#include "support/eventually.h"

using namespace sluice;
using namespace sluice::test;
using sluice::agent::bpf::BpfMap;
using sluice::agent::bpf::Loader;

TEST_SUITE("sockmap.bpf") {
  TEST_CASE("an outbound app <-> proxy pair is redirected both ways, bypassing loopback TCP") {
    LoadedCapture bpf(true);
    REQUIRE_MESSAGE(bpf.loader->sockmap().active, bpf.loader->sockmap().detail);
    // This kernel counts each psock's redirect queue: the backpressure bound is on.
    CHECK_MESSAGE(bpf.loader->sockmap().detail.find("4 MiB behind moves to loopback TCP") !=
                      std::string::npos,
                  bpf.loader->sockmap().detail);
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
    // A reader that fell more than SLUICE_SOCKMAP_QUEUE_LIMIT behind moved
    // its writer to TCP (in order: checked above); else every byte went
    // straight across.
    uint64_t redirected = bpf.loader->sockmapStats()[SLUICE_SOCKMAP_BYTES_REDIRECTED];
    uint64_t behind = stat4(bpf, SLUICE_STAT4_SOCKMAP_BEHIND);
    MESSAGE((redirected / kMiB) << " MiB redirected, " << behind << " writers moved to TCP");
    CHECK(behind <= 2);
    CHECK(redirected <= 2 * bytes);
    if (behind == 0) CHECK(redirected == 2 * bytes);
  }

  // Backpressure on a hop: the app writes, the proxy's socket is not read.
  // The redirect alone would queue until the host's tcp_mem runs out; the
  // bound moves the app to TCP once SLUICE_SOCKMAP_QUEUE_LIMIT waits, and
  // TCP's window pushes back. Then the proxy reads: redirected bytes first,
  // TCP ones after, every byte in order.
  TEST_CASE("a stopped reader pushes the writer back within a bound, every byte arrives") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    auto r = stoppedReader(app.get(), proxied.get(), 2 * kPushBackWithin);
    checkPushedBack(r);
    uint64_t behind = stat4(bpf, SLUICE_STAT4_SOCKMAP_BEHIND);
    CHECK(behind >= 1);  // more than once if it caught up while the reader drained
    auto stats = bpf.loader->sockmapStats();
    CHECK(stats[SLUICE_SOCKMAP_BYTES_REDIRECTED] > SLUICE_SOCKMAP_QUEUE_LIMIT);
    CHECK(stats[SLUICE_SOCKMAP_BYTES_REDIRECTED] < r.sent);
    // The other direction is its own: still redirected.
    checkComplete(transfer(proxied.get(), app.get(), 2 * kMiB), 2 * kMiB);
    CHECK(stat4(bpf, SLUICE_STAT4_SOCKMAP_BEHIND) == behind);
  }

  // The proxy's hop to an app that stopped reading falls behind (an entry
  // in sluice_hop_behind_v1 for that app); a connection that ends there,
  // never spliced, takes its entry with it.
  TEST_CASE("a proxy hop that closes while behind leaves nothing in sluice_hop_behind_v1") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    {
      auto [app, proxied] = pod.outbound();
      PatternStream st{proxied.get(), app.get()};
      st.sendUpTo(8 * kMiB);  // the app does not read: past the bound, then TCP
      REQUIRE(stat4(bpf, SLUICE_STAT4_SOCKMAP_BEHIND) == 1);
      CHECK(hopBehindEntries(bpf) == 1);
    }  // both ends close (the app with bytes unread: a reset)
    CHECK(sluice::testing::eventually([&] { return hopBehindEntries(bpf) == 0; }));
  }

  // A writer moved to TCP goes back to redirecting once its reader has
  // caught up: all it sent over TCP acknowledged and read, the reader's
  // redirect queue under half the bound. Redirected bytes, TCP bytes, then
  // redirected ones again: in order.
  TEST_CASE("a writer on TCP redirects again once its reader caught up, in order") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    PatternStream st{app.get(), proxied.get()};
    st.sendUpTo(8 * kMiB);  // the proxy does not read: past the bound, then TCP
    REQUIRE(stat4(bpf, SLUICE_STAT4_SOCKMAP_BEHIND) == 1);
    uint64_t redirected = bpf.loader->sockmapStats()[SLUICE_SOCKMAP_BYTES_REDIRECTED];
    CHECK(redirected < st.sent);
    st.readAll();
    REQUIRE(st.received == st.sent);
    CHECK(stat4(bpf, SLUICE_STAT4_SOCKMAP_CAUGHT_UP) == 0);  // nothing sent since
    // A send finds it caught up and redirects again. (The first sends may
    // still take TCP: after a push that found the send buffer full, the
    // kernel keeps the last verdict for the next send without asking.)
    for (int i = 0; i < 8 && stat4(bpf, SLUICE_STAT4_SOCKMAP_CAUGHT_UP) == 0; ++i) {
      st.sendUpTo(st.sent + 64 * 1024);
      st.readAll();
    }
    CHECK(stat4(bpf, SLUICE_STAT4_SOCKMAP_CAUGHT_UP) == 1);
    redirected = bpf.loader->sockmapStats()[SLUICE_SOCKMAP_BYTES_REDIRECTED];
    uint64_t before = st.sent;
    st.sendUpTo(st.sent + kMiB);  // all of it redirected
    CHECK(bpf.loader->sockmapStats()[SLUICE_SOCKMAP_BYTES_REDIRECTED] ==
          redirected + (st.sent - before));
    st.readAll();
    CHECK(st.received == st.sent);
    CHECK(st.mismatched == 0);
  }

  // The kernel behaviour behind docs/architecture.md's warning about plain
  // blocking reads: tcp_bpf_recvmsg waits once, and a wakeup that brought no
  // data ends a blocking recv() with EAGAIN. A writer the bound moved to TCP
  // that blocks on its send buffer is woken when the reader drains, and the
  // wakeup reaches a reader blocked on the same socket too. Event-driven
  // apps (poll, then read) and Python sockets with a timeout retry it; a
  // plain blocking reader beside a writer sees the error. Should a kernel
  // loop instead, this fails and the doc changes.
  TEST_CASE("a blocking reader beside a writer pushed back to TCP: recv() returns EAGAIN") {
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    auto [app, proxied] = pod.outbound();
    // Small buffers, so the writer blocks whatever the host's tcp_wmem and
    // tcp_rmem; no receive timeout, so an EAGAIN is never a timeout's.
    int small = 1;  // rounded up to the kernel's minimum
    REQUIRE(setsockopt(app.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    int rcvbuf = 256 * 1024;
    REQUIRE(setsockopt(proxied.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) == 0);
    timeval none{0, 0};
    REQUIRE(setsockopt(app.get(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none)) == 0);
    const uint64_t total = 16 * kMiB;  // past the bound, then over TCP until it blocks
    std::atomic<uint64_t> eagain{0}, written{0};
    std::atomic<int> read_result{-2};
    std::thread reader([&, fd = app.get()] {  // blocking
      char c = 0;
      for (;;) {
        ssize_t n = ::recv(fd, &c, 1, 0);
        if (n < 0 && errno == EAGAIN) {
          ++eagain;
          continue;  // what an app that knows would do
        }
        read_result = static_cast<int>(n);
        return;
      }
    });
    std::thread writer([&, fd = app.get()] {  // blocking
      std::vector<uint8_t> buf(kMiB, 0x5a);
      while (written < total) {
        ssize_t n = ::send(fd, buf.data(), buf.size(), MSG_NOSIGNAL);
        if (n <= 0) return;
        written += n;
      }
    });
    // Whatever fails below: both threads end (a shutdown wakes them) and
    // are joined before the sockets close.
    struct Joined {
      int fd;
      std::thread &a, &b;
      ~Joined() {
        if (a.joinable() || b.joinable()) ::shutdown(fd, SHUT_RDWR);
        if (a.joinable()) a.join();
        if (b.joinable()) b.join();
      }
    } joined{app.get(), reader, writer};
    // The proxy has stopped reading until the writer is on TCP and blocked.
    for (int i = 0; i < 300 && stat4(bpf, SLUICE_STAT4_SOCKMAP_BEHIND) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(stat4(bpf, SLUICE_STAT4_SOCKMAP_BEHIND) == 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK(written < total);  // blocked
    uint64_t received = 0;
    std::vector<uint8_t> in(64 * 1024);
    while (received < total) {  // the proxy drains, in small steps
      pollfd p{proxied.get(), POLLIN, 0};
      REQUIRE(::poll(&p, 1, 30000) == 1);
      ssize_t n = ::recv(proxied.get(), in.data(), in.size(), MSG_DONTWAIT);
      if (n < 0 && errno == EAGAIN) continue;
      REQUIRE(n > 0);
      received += n;
    }
    writer.join();
    CHECK(written == total);
    REQUIRE(::send(proxied.get(), "x", 1, MSG_NOSIGNAL) == 1);  // the reader's byte
    reader.join();
    CHECK(read_result == 1);
    MESSAGE("blocking recv() returned EAGAIN " << eagain.load() << " times");
    CHECK_MESSAGE(eagain > 0,
                  "a blocking recv() never returned EAGAIN: update docs/architecture.md");
  }

  TEST_CASE("1 GiB app -> proxy -> app through both redirected hops arrives intact") {
    // A same-node connection: the client app's hop (app -> 127.0.0.1:15001)
    // and the server app's (proxy's delivering socket -> app), with the
    // proxy's relay between them; every send of the three writers is
    // redirected.
    LoadedCapture bpf(true);
    Pod pod(*bpf.loader);
    pod.ns.sh("sysctl -qw net.ipv4.tcp_fwmark_accept=1");
    auto [client, accepted] = pod.outbound();
    auto server_listener = listenIn(pod.ns.fd(), "10.77.0.5", 8080);
    auto delivering = connectIn(pod.ns.fd(), "10.77.0.5", 8080, SLUICE_MARK_INBOUND_APP);
    UniqueFd server(::accept(server_listener.get(), nullptr, nullptr));
    REQUIRE(server);
    guard(server.get());
    guard(delivering.get());
    REQUIRE(sockhashEntries(bpf) == 4);
    const uint64_t bytes = 1024 * kMiB;
    uint64_t relayed_up = 0, relayed_down = 0;
    std::thread up([&] { relayed_up = relay(accepted.get(), delivering.get()).moved; });
    std::thread down([&] { relayed_down = relay(delivering.get(), accepted.get()).moved; });
    uint64_t segs_before = outSegs(pod.ns.fd());
    auto start = std::chrono::steady_clock::now();
    auto t = transfer(client.get(), server.get(), bytes);
    auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    checkComplete(t, bytes);
    // The answer's end: the server closes its side, the client sees EOF.
    ::shutdown(server.get(), SHUT_WR);
    char c;
    ssize_t eof = -1;
    for (int i = 0; i < 1000 && eof < 0; ++i) {  // readiness, then a read (see transfer())
      pollfd p{client.get(), POLLIN, 0};
      ::poll(&p, 1, 30000);
      eof = ::recv(client.get(), &c, 1, MSG_DONTWAIT);
    }
    CHECK(eof == 0);
    up.join();
    down.join();
    CHECK(relayed_up == bytes);
    CHECK(relayed_down == 0);
    MESSAGE("1 GiB in " << secs << " s, " << t.partial_writes << " partial writes");
    // Every byte redirected, unless a reader fell more than the bound behind
    // for a while (then its writer sent over TCP until it caught up).
    uint64_t redirected = bpf.loader->sockmapStats()[SLUICE_SOCKMAP_BYTES_REDIRECTED];
    if (stat4(bpf, SLUICE_STAT4_SOCKMAP_BEHIND) == 0) {
      CHECK(outSegs(pod.ns.fd()) - segs_before < 64);  // not over loopback TCP
      CHECK(redirected == 2 * bytes);
    } else {
      CHECK(redirected > bytes);
    }
    client.reset();
    accepted.reset();
    delivering.reset();
    server.reset();
    CHECK(sockhashEntries(bpf) == 0);
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
