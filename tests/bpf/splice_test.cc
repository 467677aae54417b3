// The same-node splice of bpf/sockmap.bpf.c (struct sluice_splice) with real
// sockets: a client app C captured to the proxy's 127.0.0.1:15001 (PA), the
// proxy's delivering socket PD to the server app S, the test's relay as the
// proxy between PA and PD. The relay arms a direction and publishes how many
// bytes it has written on after every write, as the proxy does; C's sk_msg
// switches to straight C -> S when it finds that count equal to what C sent.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "bpf/sockmap_support.h"
#include "support/eventually.h"

using namespace sluice;
using namespace sluice::test;
using sluice::agent::bpf::BpfMap;
using sluice::testing::eventually;

namespace {

using SpliceMap = BpfMap<sluice_pair_key, sluice_splice>;
using SplicedMap = BpfMap<sluice_pair_key, sluice_splice_bytes>;

template <typename M>
M pinned(const LoadedCapture& bpf, const char* name) {
  auto m = M::openPinned(bpf.pin + "/" + name);
  REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().describe()));
  return std::move(*m);
}

uint64_t spliceStat(const LoadedCapture& bpf, uint32_t stat) {
  auto fd = pinned<BpfMap<uint32_t, uint64_t>>(bpf, "sluice_splice_stats_v1");
  int cpus = libbpf_num_possible_cpus();
  std::vector<uint64_t> v(cpus);
  REQUIRE(bpf_map_lookup_elem(fd.fd(), &stat, v.data()) == 0);
  uint64_t sum = 0;
  for (auto x : v) sum += x;
  return sum;
}

// One same-node connection: C -> PA (outbound hop), PD -> S (inbound hop).
struct Chain {
  LoadedCapture bpf{true};
  Pod pod{*bpf.loader};
  UniqueFd client, accepted, delivering, server;
  sluice_pair_key client_key{}, server_key{};
  Chain() {
    REQUIRE_MESSAGE(bpf.loader->sockmap().active, bpf.loader->sockmap().detail);
    pod.ns.sh("sysctl -qw net.ipv4.tcp_fwmark_accept=1");
    auto [c, a] = pod.outbound();
    client = std::move(c);
    accepted = std::move(a);
    auto listener = listenIn(pod.ns.fd(), "10.77.0.5", 8080);
    delivering = connectIn(pod.ns.fd(), "10.77.0.5", 8080, SLUICE_MARK_INBOUND_APP);
    server = UniqueFd(::accept(listener.get(), nullptr, nullptr));
    REQUIRE(server);
    guard(server.get());
    guard(delivering.get());
    REQUIRE(sockhashEntries(bpf) == 4);
    client_key = appKey(client.get(), pod.cookie);
    server_key = keyOf(server.get(), pod.cookie);
  }
};

// The proxy's relay for one direction with its splice: arms it (sender
// `from_app` -> receiver `to_app`) once `arm_after` bytes have been written
// on (0: before the relay starts), and publishes the count after every write
// from then on; `before`: bytes written on before this relay took over.
// stop() ends it without passing an EOF on.
struct SplicedRelay {
  SpliceMap map;
  std::atomic<bool> stopping{false};
  Relayed result;
  std::thread thread;
  SplicedRelay(const LoadedCapture& bpf, int from, int to, sluice_pair_key from_app,
               sluice_pair_key to_app, uint64_t arm_after, uint64_t before = 0)
      : map(pinned<SpliceMap>(bpf, "sluice_splice_v1")) {
    auto publish = [this, from_app, to_app, arm_after, before](uint64_t written) {
      if (written < arm_after) return;
      sluice_splice e{};
      e.armed = 1;
      e.forwarded = before + written;
      e.peer = to_app;
      CHECK(map.update(from_app, e, BPF_F_LOCK).has_value());
    };
    if (arm_after == 0) publish(0);
    thread =
        std::thread([this, from, to, publish] { result = relay(from, to, publish, &stopping); });
  }
  const Relayed& join() {
    if (thread.joinable()) thread.join();
    return result;
  }
  void stop() {
    stopping = true;
    join();
  }
  ~SplicedRelay() { stop(); }
};

uint64_t splicedBytes(const LoadedCapture& bpf, const sluice_pair_key& from_app) {
  auto v = pinned<SplicedMap>(bpf, "sluice_splice_bytes_v1").lookup(from_app);
  return v ? v->spliced : 0;
}

// One read into `buf` after readiness (see transfer()): its result.
ssize_t recvSome(int fd, std::vector<uint8_t>& buf) {
  for (int empty = 0; empty < 100000; ++empty) {
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, 30000);
    ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n >= 0 || (errno != EAGAIN && errno != EINTR)) return n;
  }
  return -1;
}
ssize_t recvSome(int fd) {
  std::vector<uint8_t> buf(64);
  return recvSome(fd, buf);
}

// Reads until EOF or an error; returns 0 on EOF, else the errno.
int readToEnd(int fd) {
  std::vector<uint8_t> buf(65536);
  for (int empty = 0; empty < 100000;) {
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, 30000);
    ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n == 0) return 0;
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      ++empty;
      continue;
    }
    if (n < 0) return errno;
  }
  return EAGAIN;
}

}  // namespace

TEST_SUITE("sockmap.splice") {
  TEST_CASE("the switch keeps the order: relayed bytes first, then spliced ones (checksum)") {
    Chain ch;
    const uint64_t bytes = 64 * kMiB;
    SUBCASE("a writer that pauses (the relay catches up between its sends)") {
      SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                      kMiB);
      auto t = transfer(ch.client.get(), ch.server.get(), bytes, 0, 256 * 1024);
      checkComplete(t, bytes);
      up.join();
      uint64_t spliced = splicedBytes(ch.bpf, ch.client_key);
      MESSAGE("relayed " << up.join().moved << ", spliced " << spliced);
      CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 1);
      CHECK(up.join().moved >= kMiB);
      CHECK(spliced > 0);
      CHECK(up.join().moved + spliced == bytes);
    }
    SUBCASE("a writer that never pauses") {
      SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                      kMiB);
      auto t = transfer(ch.client.get(), ch.server.get(), bytes);
      checkComplete(t, bytes);
      up.join();
      uint64_t spliced = splicedBytes(ch.bpf, ch.client_key);
      MESSAGE("relayed " << up.join().moved << ", spliced " << spliced << " (switched "
                         << spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) << ")");
      CHECK(up.join().moved + spliced == bytes);
    }
  }

  TEST_CASE("spliced both ways: half-close in either order, every byte before the EOF") {
    Chain ch;
    SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                    0);
    SplicedRelay down(ch.bpf, ch.delivering.get(), ch.accepted.get(), ch.server_key, ch.client_key,
                      0);
    SUBCASE("the client closes its write side first") {
      checkComplete(transfer(ch.client.get(), ch.server.get(), 3 * kMiB + 5, 0, 65536),
                    3 * kMiB + 5);
      checkComplete(transfer(ch.server.get(), ch.client.get(), 2 * kMiB + 1, 0, 65536),
                    2 * kMiB + 1);
    }
    SUBCASE("the server closes its write side first") {
      checkComplete(transfer(ch.server.get(), ch.client.get(), 3 * kMiB + 5, 0, 65536),
                    3 * kMiB + 5);
      checkComplete(transfer(ch.client.get(), ch.server.get(), 2 * kMiB + 1, 0, 65536),
                    2 * kMiB + 1);
    }
    up.join();
    down.join();
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 2);
    CHECK(up.join().moved + splicedBytes(ch.bpf, ch.client_key) + down.join().moved +
              splicedBytes(ch.bpf, ch.server_key) ==
          5 * kMiB + 6);
  }

  TEST_CASE("a reset from either app reaches the other through the proxy's sockets") {
    Chain ch;
    SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                    0);
    SplicedRelay down(ch.bpf, ch.delivering.get(), ch.accepted.get(), ch.server_key, ch.client_key,
                      0);
    char c = 'x';
    REQUIRE(::send(ch.client.get(), &c, 1, MSG_NOSIGNAL) == 1);
    REQUIRE(::send(ch.server.get(), &c, 1, MSG_NOSIGNAL) == 1);
    CHECK(recvSome(ch.server.get()) == 1);
    CHECK(recvSome(ch.client.get()) == 1);
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 2);
    // The proxy sees the reset on its socket of that hop and resets the other.
    auto resetFrom = [&](UniqueFd& closing, SplicedRelay& sees, SplicedRelay& other,
                         UniqueFd& peer) {
      linger l{1, 0};
      REQUIRE(setsockopt(closing.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0);
      closing.reset();
      CHECK(sees.join().error == ECONNRESET);
      other.stop();
      REQUIRE(setsockopt(ch.accepted.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0);
      REQUIRE(setsockopt(ch.delivering.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0);
      ch.accepted.reset();
      ch.delivering.reset();
      CHECK(readToEnd(peer.get()) == ECONNRESET);
    };
    SUBCASE("the client resets") { resetFrom(ch.client, up, down, ch.server); }
    SUBCASE("the server resets") { resetFrom(ch.server, down, up, ch.client); }
  }

  TEST_CASE("a torn-down splice sends the app's next bytes to the proxy's reset socket") {
    Chain ch;
    SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                    0);
    char c = 'x';
    REQUIRE(::send(ch.client.get(), &c, 1, MSG_NOSIGNAL) == 1);
    CHECK(recvSome(ch.server.get()) == 1);
    REQUIRE(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 1);
    // Policy denies the pair: the proxy ends the splice first. The app's next
    // send goes to the proxy's socket of its hop again (behind every spliced
    // byte, which S already holds).
    up.stop();
    REQUIRE(up.map.erase(ch.client_key));
    c = 'y';
    REQUIRE(::send(ch.client.get(), &c, 1, MSG_NOSIGNAL) == 1);
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_ENDS) == 1);
    char got = 0;
    for (int i = 0; i < 100000 && got != 'y'; ++i) {
      pollfd p{ch.accepted.get(), POLLIN, 0};
      ::poll(&p, 1, 30000);
      if (::recv(ch.accepted.get(), &got, 1, MSG_DONTWAIT) < 0 && errno != EAGAIN) break;
    }
    CHECK(got == 'y');
    // Then it resets both of its sockets: each app learns.
    linger l{1, 0};
    REQUIRE(setsockopt(ch.accepted.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0);
    REQUIRE(setsockopt(ch.delivering.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0);
    ch.accepted.reset();
    ch.delivering.reset();
    CHECK(readToEnd(ch.client.get()) == ECONNRESET);
    CHECK(readToEnd(ch.server.get()) == ECONNRESET);
  }

  TEST_CASE("a slow reader holds a spliced writer back (partial writes), nothing lost") {
    Chain ch;
    SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                    0);
    const uint64_t bytes = 128 * kMiB;
    auto t = transfer(ch.client.get(), ch.server.get(), bytes, 4 * kMiB, 0);
    checkComplete(t, bytes);
    up.join();
    MESSAGE("partial writes: " << t.partial_writes);
    CHECK(up.join().moved + splicedBytes(ch.bpf, ch.client_key) == bytes);
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 1);
  }

  // Backpressure: a non-blocking writer with the smallest send buffer whose
  // reader has stopped. The ingress redirect alone never pushes back (it
  // charges the reader's memory, not against its receive buffer); the
  // sk_msg bound does: once more than SLUICE_SOCKMAP_QUEUE_LIMIT waits for
  // the server, the client goes back to the proxy's socket, the relay's
  // hop to the server moves to TCP, and TCP's windows push back. Then the
  // reader drains and the writer finishes: every byte intact and in order.
  TEST_CASE("a stopped reader pushes a spliced writer back within a bound, every byte arrives") {
    Chain ch;
    SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                    0);
    auto r = stoppedReader(ch.client.get(), ch.server.get(), 2 * kPushBackWithin);
    checkPushedBack(r);
    up.join();
    CHECK(up.join().moved + splicedBytes(ch.bpf, ch.client_key) == r.sent);
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) >= 1);  // again, maybe, while draining
    CHECK(stat4(ch.bpf, SLUICE_STAT4_SPLICE_BEHIND) >= 1);   // the client went back
    CHECK(stat4(ch.bpf, SLUICE_STAT4_SOCKMAP_BEHIND) >= 1);  // the relay's hop to the server
    CHECK(up.join().moved > 0);                              // relayed after the splice
  }

  // A hand-back is not for good: once the server has read what waited for
  // it (its redirect queue and the TCP queue of the proxy's hop, which went
  // to TCP meanwhile) and the proxy has written on all the client sent
  // through it, the client switches straight again. In order throughout.
  TEST_CASE("a handed-back spliced writer switches straight again once its reader caught up") {
    Chain ch;
    SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                    0);
    PatternStream st{ch.client.get(), ch.server.get()};
    // Straight to the server, which does not read: past the bound the
    // client goes back to the proxy.
    st.sendUpTo(SLUICE_SPLICE_QUEUE_LIMIT + kMiB);
    REQUIRE(stat4(ch.bpf, SLUICE_STAT4_SPLICE_BEHIND) == 1);
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 1);
    CHECK(splicedBytes(ch.bpf, ch.client_key) < st.sent);
    st.readAll();
    REQUIRE(st.received == st.sent);
    // The next sends go through the proxy until one finds everything
    // written on and read, and the proxy's hop redirecting again.
    for (int i = 0; i < 16 && spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) < 2; ++i) {
      st.sendUpTo(st.sent + 64 * 1024);
      st.readAll();
    }
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 2);
    uint64_t spliced = splicedBytes(ch.bpf, ch.client_key), before = st.sent;
    st.sendUpTo(st.sent + kMiB);  // straight again, all of it
    CHECK(splicedBytes(ch.bpf, ch.client_key) == spliced + (st.sent - before));
    st.readAll();
    CHECK(st.received == st.sent);
    CHECK(st.mismatched == 0);
    up.stop();
    CHECK(up.result.moved + splicedBytes(ch.bpf, ch.client_key) == st.sent);
    CHECK(up.result.moved > 0);
  }

  // The proxy's hop to the server moved to TCP (the server fell behind)
  // before the client's switch: bytes of it may wait in the server's TCP
  // queue, which the server reads after redirected ones, so the switch is
  // refused while that hop is on TCP; once it has caught up and redirects
  // again, the client's next send switches. In order throughout.
  // A client app whose own hop fell behind sent some bytes over TCP, some of
  // them without the program running (a send after a TCP push that failed
  // keeps the last verdict: the small send buffer and MSG_DONTWAIT make
  // such pushes fail). Its TCP bytes are counted from its write_seq, so it
  // switches straight once the proxy has written on every byte, and the
  // server reads them all in order.
  TEST_CASE("an app whose hop fell behind (some sends over TCP) is spliced once all is relayed") {
    Chain ch;
    int small = 4096;
    REQUIRE(::setsockopt(ch.client.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    PatternStream st{ch.client.get(), ch.server.get()};
    // The proxy does not read yet: past the bound into its socket, the
    // client moves to TCP, and sends on until the kernel takes no more.
    while (stat4(ch.bpf, SLUICE_STAT4_SOCKMAP_BEHIND) == 0) {
      uint64_t before = st.sent;
      st.sendUpTo(st.sent + 64 * 1024);
      REQUIRE_MESSAGE(st.sent > before, std::strerror(errno) << " after " << st.sent << " bytes");
    }
    for (int i = 0; i < 64; ++i) st.sendUpTo(st.sent + 64 * 1024);  // EAGAIN: failed pushes
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 0);
    // The proxy relays all, armed; the server reads; the client sends on
    // and switches once the proxy has written on all it sent.
    SplicedRelay relay(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                       0);
    for (int i = 0; i < 64 && spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 0; ++i) {
      st.readAll();
      st.sendUpTo(st.sent + 64 * 1024);
    }
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 1);
    uint64_t spliced = splicedBytes(ch.bpf, ch.client_key), before = st.sent;
    for (int i = 0; i < 64 && st.sent < before + kMiB; ++i) {  // straight now: all of it
      st.sendUpTo(before + kMiB);
      st.readAll();
    }
    CHECK(splicedBytes(ch.bpf, ch.client_key) - spliced == st.sent - before);
    st.readAll();
    CHECK(st.received == st.sent);
    CHECK(st.mismatched == 0);
    relay.stop();
    CHECK(relay.result.moved + splicedBytes(ch.bpf, ch.client_key) == st.sent);
  }

  TEST_CASE("no splice while the proxy's hop to the app is on TCP, then spliced - in order") {
    Chain ch;
    uint64_t sent = 0;
    auto sendUpTo = [&](uint64_t to) {
      std::vector<uint8_t> buf(64 * 1024);
      while (sent < to) {
        size_t n = std::min<uint64_t>(buf.size(), to - sent);
        for (size_t k = 0; k < n; ++k) buf[k] = patternByte(sent + k);
        ssize_t w = ::send(ch.client.get(), buf.data(), n, MSG_NOSIGNAL);
        if (w <= 0) {  // no REQUIRE: the reader thread may run
          FAIL_CHECK("send: " << std::strerror(errno));
          return;
        }
        sent += w;
      }
    };
    UniqueFd path_map(bpf_obj_get((ch.bpf.pin + "/sluice_sk_msg_path_v1").c_str()));
    REQUIRE(path_map);
    auto pathOf = [&](int fd) {
      uint8_t path = SLUICE_PATH_UNDECIDED;
      (void)bpf_map_lookup_elem(path_map.get(), &fd, &path);
      return path;
    };
    // The client's first bytes; the proxy relays them all while the server
    // does not read: past the bound its hop to the server moves to TCP.
    const uint64_t first = 4 * kMiB + 512 * 1024, ping = 64 * 1024, total = 8 * kMiB;
    // (A piece at a time: the client's own hop never falls behind, which
    // would keep it from ever being spliced.)
    uint64_t relayed = 0;
    std::vector<uint8_t> buf(64 * 1024);
    while (relayed < first) {
      sendUpTo(std::min<uint64_t>(first, sent + buf.size()));
      while (relayed < sent) {
        ssize_t n = recvSome(ch.accepted.get(), buf);
        REQUIRE(n > 0);
        REQUIRE(::send(ch.delivering.get(), buf.data(), n, MSG_NOSIGNAL) == n);
        relayed += n;
      }
    }
    REQUIRE(pathOf(ch.delivering.get()) == SLUICE_PATH_TCP_BEHIND);
    // Armed now, with all the client sent written on: the client's next
    // send would switch, but bytes of the hop's TCP wait for the server.
    SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key, 0,
                    relayed);
    sendUpTo(first + ping);
    CHECK(stat4(ch.bpf, SLUICE_STAT4_SPLICE_REFUSED) == 1);
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 0);
    // The server reads from now on.
    std::atomic<uint64_t> received{0};
    uint64_t mismatched = 0;
    std::thread reader([&] {
      std::vector<uint8_t> in(256 * 1024);
      for (ssize_t n; (n = recvSome(ch.server.get(), in)) > 0;) {
        for (ssize_t k = 0; k < n; ++k) mismatched += in[k] != patternByte(received + k);
        received += n;
      }
    });
    auto settled = [&] {  // written on and read; the server's last ACK may be delayed (40 ms+)
      bool ok = eventually([&] {
        auto e = up.map.lookup(ch.client_key);
        return e && e->forwarded + splicedBytes(ch.bpf, ch.client_key) == sent && received == sent;
      });
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return ok;
    };
    // Once the server has read all and acknowledged it, the hop's next send
    // redirects again and lifts the refusal. (The first of its sends may
    // still take TCP: after a push that found the send buffer full, the
    // kernel keeps the last verdict for the next send without asking.)
    for (int i = 0; i < 8; ++i) {
      CHECK(settled());
      if (stat4(ch.bpf, SLUICE_STAT4_SOCKMAP_CAUGHT_UP) == 1) break;
      sendUpTo(sent + ping);
    }
    CHECK(stat4(ch.bpf, SLUICE_STAT4_SOCKMAP_CAUGHT_UP) == 1);
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 0);
    // So a send of the client's that finds all it sent written on is
    // spliced (again, its first may still go without a verdict, above).
    uint64_t proxied = sent;
    for (int i = 0; i < 8 && spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 0; ++i) {
      CHECK(settled());
      proxied = sent;
      sendUpTo(sent + ping);
    }
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 1);  // no REQUIRE: the reader runs
    sendUpTo(total);
    ::shutdown(ch.client.get(), SHUT_WR);
    reader.join();
    CHECK(received == total);
    CHECK(mismatched == 0);
    CHECK(spliceStat(ch.bpf, SLUICE_SPLICE_SWITCHED) == 1);
    CHECK(splicedBytes(ch.bpf, ch.client_key) == total - proxied);
    CHECK(relayed + up.join().moved + splicedBytes(ch.bpf, ch.client_key) == total);
  }

  TEST_CASE("1 GiB through a spliced pair arrives intact") {
    Chain ch;
    SplicedRelay up(ch.bpf, ch.accepted.get(), ch.delivering.get(), ch.client_key, ch.server_key,
                    0);
    const uint64_t bytes = 1024 * kMiB;
    auto start = std::chrono::steady_clock::now();
    auto t = transfer(ch.client.get(), ch.server.get(), bytes);
    auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    checkComplete(t, bytes);
    up.join();
    uint64_t spliced = splicedBytes(ch.bpf, ch.client_key);
    MESSAGE("1 GiB in " << secs << " s; relayed " << up.join().moved << ", spliced " << spliced);
    CHECK(up.join().moved + spliced == bytes);
    CHECK(spliced > bytes / 2);
  }
}
