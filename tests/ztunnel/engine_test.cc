#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "sluice/ztunnel/engine.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "support/engine_pod.h"
#include "ztunnel/inpod/inpod.h"
#include "ztunnel/proxy/engine_impl.h"
#include "ztunnel/proxy/pod.h"

using namespace sluice;
using namespace std::chrono_literals;

namespace {

std::vector<unsigned char> pattern(size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>((i * 131 + seed) ^ (i >> 13));
  return v;
}

std::string sha(const unsigned char* p, size_t n) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(p, n, d);
  return std::string(reinterpret_cast<char*>(d), sizeof(d));
}

bool sendAll(int fd, const unsigned char* p, size_t n) {
  while (n) {
    ssize_t w = ::send(fd, p, std::min<size_t>(n, 1 << 16), MSG_NOSIGNAL);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

std::vector<unsigned char> recvAll(int fd) {
  std::vector<unsigned char> out;
  unsigned char buf[1 << 16];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.insert(out.end(), buf, buf + n);
  return out;
}

// Nothing is meshed; there is no view until has_view is set.
class FakeDirectory final : public ztunnel::MeshDirectory {
 public:
  std::optional<ztunnel::MeshWorkload> meshed(const IpAddr&) override { return std::nullopt; }
  std::shared_ptr<const ztunnel::ServiceTarget> service(const IpAddr&, uint16_t) override {
    return nullptr;
  }
  bool hasView() override { return has_view; }
  std::atomic<bool> has_view{false};
};

// Denies while `deny` is set; remembers what it was asked.
class FakeAuthorizer final : public ztunnel::InboundAuthorizer {
 public:
  ztunnel::Authorization authorize(const ztunnel::InboundRequest& r) override {
    std::lock_guard lk(mu);
    asked++;
    last_path = r.path;
    last_pod = std::string(r.pod);
    last_principal = std::string(r.source_principal);
    last_port = r.destination.port();
    if (deny) return {ztunnel::Verdict::kDeny, "fake policy"};
    return {};
  }
  std::atomic<bool> deny{false};
  std::mutex mu;
  int asked = 0;
  ztunnel::Path last_path{};
  std::string last_pod, last_principal;
  uint16_t last_port = 0;
};

// Sums what it is told, per event.
class CountingObserver final : public ztunnel::ConnectionObserver {
 public:
  void opened(unsigned, const ztunnel::ConnectionRecord&) override { opened_n++; }
  void transferred(unsigned, const ztunnel::ConnectionRecord&, uint64_t sent,
                   uint64_t received) override {
    sent_n += sent;
    received_n += received;
  }
  void closed(unsigned, const ztunnel::ConnectionRecord& r) override {
    std::lock_guard lk(mu);
    closed_records.push_back(r);
  }
  void request(unsigned, const ztunnel::ConnectionRecord& c,
               const ztunnel::RequestRecord& r) override {
    std::lock_guard lk(mu);
    requests.emplace_back(r.status, c.reason);
  }
  std::atomic<int> opened_n{0};
  std::atomic<uint64_t> sent_n{0}, received_n{0};
  std::mutex mu;
  std::vector<ztunnel::ConnectionRecord> closed_records;
  std::vector<std::pair<int, ztunnel::CloseReason>> requests;  // status, the record's reason then
};

}  // namespace

TEST_SUITE("engine") {
  TEST_CASE("16 MiB each way arrive intact and half-close is propagated both ways") {
    Pod pod;
    Running run(pod);
    auto server = pod.listen(9000);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9000);
    const size_t kSize = 16 << 20;
    auto up = pattern(kSize, 1), down = pattern(kSize, 2);
    std::string server_got;
    std::thread srv([&] {
      int c = ::accept(server.get(), nullptr, nullptr);
      REQUIRE(c >= 0);
      std::thread w([&] { sendAll(c, down.data(), down.size()); });
      auto got = recvAll(c);  // until the client's half-close arrives as EOF
      server_got = sha(got.data(), got.size());
      w.join();
      ::shutdown(c, SHUT_WR);
      ::close(c);
    });
    auto client = pod.connectProxy();
    std::thread w([&] {
      sendAll(client.get(), up.data(), up.size());
      ::shutdown(client.get(), SHUT_WR);  // half-close: still reading
    });
    auto got = recvAll(client.get());
    w.join();
    srv.join();
    CHECK(got.size() == kSize);
    CHECK(sha(got.data(), got.size()) == sha(down.data(), down.size()));
    CHECK(server_got == sha(up.data(), up.size()));
    CHECK(eventually([&] {
      auto cs = run.engine->connections();
      return !cs.empty() && cs.back().state == ztunnel::ConnState::kClosed &&
             cs.back().reason == ztunnel::CloseReason::kEof && cs.back().bytes_sent == kSize &&
             cs.back().bytes_received == kSize;
    }));
  }

  TEST_CASE("out of file descriptors: accept backs off instead of spinning, then recovers") {
    // io_uring reads RLIMIT_NOFILE when an accept is armed, so the limit is
    // set first and then the descriptor table is filled up to it.
    rlimit old{};
    REQUIRE(getrlimit(RLIMIT_NOFILE, &old) == 0);
    rlimit capped = old;
    capped.rlim_cur = std::min<rlim_t>(old.rlim_cur, 2048);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &capped) == 0);
    {
      Pod pod;
      Running run(pod);
      auto server = pod.listen(9050);
      run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9050);
      constexpr int kClients = 20;
      std::vector<UniqueFd> clients;
      for (int i = 0; i < kClients; ++i) {
        auto s = socketInNetns(pod.ns.fd(), AF_INET, SOCK_STREAM, 0);
        REQUIRE(s.has_value());
        clients.push_back(std::move(*s));
      }
      // Take every free descriptor, and any that another thread frees meanwhile.
      // Growing a shared descriptor table waits for an RCU grace period, which
      // can take longer than any fixed sleep on a busy machine: the clients
      // connect only once the table is really full.
      std::vector<UniqueFd> fillers;
      std::atomic<bool> filling{true}, full{false};
      std::thread filler([&] {
        while (filling) {
          int fd;
          while ((fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) fillers.emplace_back(fd);
          if (errno == EMFILE) full = true;
          std::this_thread::sleep_for(200us);
        }
      });
      REQUIRE(eventually([&] { return full.load(); }, 10s));
      auto proxy = makeSockaddr(htonl(INADDR_LOOPBACK), SLUICE_OUTBOUND_PORT);
      for (auto& c : clients)
        CHECK(::connect(c.get(), reinterpret_cast<sockaddr*>(&proxy), sizeof(proxy)) == 0);
      std::this_thread::sleep_for(500ms);
      uint64_t errors = run.engine->stats()[ztunnel::Counter::kAcceptErrors];
      filling = false;
      filler.join();
      fillers.clear();
      CHECK(errors > 0);
      // Backing off from 10 ms, doubling: a handful per worker in 500 ms, not a busy loop.
      CHECK(errors < 40);
      // With descriptors back, every queued connection is taken off the backlog
      // and a new one goes through to the destination.
      CHECK(eventually([&] { return run.engine->stats()[ztunnel::Counter::kAccepted] >= kClients; },
                       5s));
      auto again = pod.connectProxy();
      pollfd p{server.get(), POLLIN, 0};
      CHECK(::poll(&p, 1, 5000) == 1);
      int c = ::accept4(server.get(), nullptr, nullptr, SOCK_NONBLOCK);
      CHECK(c >= 0);
      if (c >= 0) ::close(c);
    }
    REQUIRE(setrlimit(RLIMIT_NOFILE, &old) == 0);
  }

  TEST_CASE("a reset by the destination is propagated to the client") {
    Pod pod;
    Running run(pod);
    auto server = pod.listen(9001);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9001);
    auto client = pod.connectProxy();
    int c = ::accept(server.get(), nullptr, nullptr);
    REQUIRE(c >= 0);
    linger lg{1, 0};
    setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    ::close(c);  // RST
    char b;
    ssize_t n = ::recv(client.get(), &b, 1, 0);
    CHECK(n < 0);
    CHECK(errno == ECONNRESET);
    CHECK(eventually([&] { return run.engine->stats()[ztunnel::Counter::kActive] == 0; }));
  }

  TEST_CASE("a reset by one app reaches the other while neither reads nor writes") {
    // The proxy holds bytes the receiver does not take, so it posts no
    // receive on the sender's socket; its tick (about once a second)
    // watches that socket, and the sender's reset still gets through.
    for (bool client_resets : {true, false}) {
      CAPTURE(client_resets);
      Pod pod;
      ztunnel::EngineConfig cfg;
      cfg.buffer_bytes = 16 * 1024;
      Running run(pod, cfg);
      auto server = pod.listen(9001);
      run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9001);
      auto client = pod.connectProxy();
      UniqueFd accepted(::accept(server.get(), nullptr, nullptr));
      REQUIRE(accepted.get() >= 0);
      int sender = client_resets ? client.get() : accepted.get();
      int receiver = client_resets ? accepted.get() : client.get();
      int small = 16 * 1024;
      REQUIRE(::setsockopt(receiver, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)) == 0);
      // The sender writes until nothing has gone for 300 ms: the receiver's
      // buffer, the proxy's socket buffers and its pipe are full.
      std::vector<unsigned char> chunk(64 * 1024, 0x5a);
      size_t total = 0;
      auto moved = std::chrono::steady_clock::now();
      while (std::chrono::steady_clock::now() - moved < 300ms) {
        ssize_t w = ::send(sender, chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
          total += static_cast<size_t>(w);
          moved = std::chrono::steady_clock::now();
        } else {
          std::this_thread::sleep_for(10ms);
        }
      }
      MESSAGE("stalled after ", total, " bytes");
      REQUIRE(total > 0);
      linger lg{1, 0};
      REQUIRE(::setsockopt(sender, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
      if (client_resets)
        client.reset();
      else
        accepted.reset();
      // The receiver learns of the reset without reading (a read would make
      // room, and the proxy's next receive would find the reset anyway)...
      pollfd pf{receiver, 0, 0};  // POLLERR and POLLHUP only
      CHECK(::poll(&pf, 1, 6000) == 1);
      CHECK((pf.revents & POLLERR) != 0);
      // ...then reads what reached it, and the reset, not an end.
      timeval tv{2, 0};
      REQUIRE(::setsockopt(receiver, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0);
      unsigned char buf[1 << 16];
      ssize_t n;
      while ((n = ::recv(receiver, buf, sizeof(buf), 0)) > 0) {
      }
      int err = n < 0 ? errno : 0;
      CHECK_MESSAGE(err == ECONNRESET, "recv ended with ", n, " errno ", std::strerror(err));
      CHECK(eventually([&] {
        auto cs = run.engine->connections();
        return run.engine->stats()[ztunnel::Counter::kActive] == 0 && !cs.empty() &&
               cs.back().reason == ztunnel::CloseReason::kReset;
      }));
    }
  }

  TEST_CASE("a connect to an unresponsive destination times out and the client is reset") {
    Pod pod;
    ztunnel::EngineConfig cfg;
    cfg.connect_timeout = 300ms;
    Running run(pod, cfg);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.99"), 80);  // on-link, nobody answers ARP
    auto client = pod.connectProxy();
    auto start = std::chrono::steady_clock::now();
    char b;
    ssize_t n = ::recv(client.get(), &b, 1, 0);
    CHECK(n <= 0);
    CHECK(std::chrono::steady_clock::now() - start < 3s);
    CHECK(eventually([&] {
      auto cs = run.engine->connections();
      return !cs.empty() && cs.back().reason == ztunnel::CloseReason::kConnectTimeout;
    }));
    CHECK(run.engine->stats()[ztunnel::Counter::kConnectFailures] == 1);
  }

  TEST_CASE("a request sent to a destination that never answers is reported with status 0") {
    // The connect fails long after the request came: the proxy looks at what
    // the client sent before it resets it, and counts the request answered by
    // nothing, with how the connection ended.
    Pod pod;
    CountingObserver obs;
    ztunnel::EngineConfig cfg;
    cfg.connect_timeout = 300ms;
    Running run(pod, cfg, {nullptr, &obs});
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.99"), 80);  // on-link, nobody answers ARP
    auto client = pod.connectProxy();
    const std::string request = "GET /lost HTTP/1.1\r\nHost: x\r\n\r\n";
    REQUIRE(sendAll(client.get(), reinterpret_cast<const unsigned char*>(request.data()),
                    request.size()));
    char b;
    CHECK(::recv(client.get(), &b, 1, 0) <= 0);  // reset once the connect timed out
    REQUIRE(eventually([&] {
      std::lock_guard lk(obs.mu);
      return obs.closed_records.size() == 1;
    }));
    std::lock_guard lk(obs.mu);
    REQUIRE(obs.requests.size() == 1);
    CHECK(obs.requests[0].first == 0);
    CHECK(std::string(ztunnel::toString(obs.requests[0].second)) == "connect_timeout");
  }

  TEST_CASE("the per-pod connection limit refuses extra connections and serves the others") {
    Pod pod;
    ztunnel::EngineConfig cfg;
    cfg.max_connections_per_pod = 2;
    Running run(pod, cfg);
    auto server = pod.listen(9002);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9002);
    auto a = pod.connectProxy();
    auto b = pod.connectProxy();
    REQUIRE(eventually([&] { return run.engine->stats()[ztunnel::Counter::kActive] == 2; }));
    auto c = pod.connectProxy();
    char x;
    CHECK(::recv(c.get(), &x, 1, 0) <= 0);  // closed by the proxy
    CHECK(run.engine->stats()[ztunnel::Counter::kLimitRejected] == 1);
    CHECK(run.engine->stats()[ztunnel::Counter::kActive] == 2);
  }

  TEST_CASE("connections within the descriptor reserve are refused and counted - room comes back") {
    // A soft RLIMIT_NOFILE just above what the process holds now, while the
    // engine starts (its workers read the limit once): little is left above
    // the reserve, and the connections below take it.
    rlimit saved{};
    REQUIRE(getrlimit(RLIMIT_NOFILE, &saved) == 0);
    const int lowest_free = [] {
      UniqueFd probe(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      return probe.get();
    }();
    rlimit low = saved;
    low.rlim_cur = static_cast<rlim_t>(lowest_free) + 160;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
    Pod pod;
    ztunnel::EngineConfig cfg;
    cfg.descriptor_reserve = 40;
    std::optional<Running> run;
    run.emplace(pod, cfg);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &saved) == 0);
    auto server = pod.listen(9004);
    run->resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9004);
    auto stats = [&] { return run->engine->stats(); };
    // Each connection takes a client, an accepted and an upstream socket,
    // and the server's: well before 100 of them, the reserve is reached.
    std::vector<UniqueFd> held;
    for (int i = 0; i < 100 && stats()[ztunnel::Counter::kLimitRejected] == 0; ++i) {
      held.push_back(pod.connectProxy());
      (void)eventually([&] {
        return stats()[ztunnel::Counter::kActive] + stats()[ztunnel::Counter::kLimitRejected] ==
               held.size();
      });
    }
    REQUIRE(stats()[ztunnel::Counter::kLimitRejected] >= 1);
    char x;
    CHECK(::recv(held.back().get(), &x, 1, 0) <= 0);  // reset by the proxy
    // What was served still is; once the connections are gone there is room again.
    const auto served = stats()[ztunnel::Counter::kActive];
    CHECK(served >= 10);
    held.clear();
    server.reset();  // its queued connections are reset: they end at once
    REQUIRE(eventually([&] { return stats()[ztunnel::Counter::kActive] == 0; }));
    server = pod.listen(9004);
    const auto rejected = stats()[ztunnel::Counter::kLimitRejected];
    auto again = pod.connectProxy();
    CHECK(eventually([&] { return stats()[ztunnel::Counter::kActive] == 1; }));
    CHECK(stats()[ztunnel::Counter::kLimitRejected] == rejected);
  }

  TEST_CASE("clients that connect and vanish do not disturb a running transfer") {
    Pod pod;
    Running run(pod);
    auto server = pod.listen(9003);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9003);
    auto data = pattern(4 << 20, 3);
    std::atomic<bool> stop{false};
    std::thread srv([&] {
      while (!stop) {
        pollfd p{server.get(), POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        int c = ::accept(server.get(), nullptr, nullptr);
        if (c < 0) continue;
        std::thread([c, &data] {
          char hello;
          if (::recv(c, &hello, 1, 0) == 1) sendAll(c, data.data(), data.size());
          ::close(c);
        }).detach();
      }
    });
    auto good = pod.connectProxy();
    for (int i = 0; i < 50; ++i) {
      auto junk = pod.connectProxy();
      if (i % 2) {
        linger lg{1, 0};
        setsockopt(junk.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
      }
    }
    REQUIRE(::send(good.get(), "h", 1, 0) == 1);
    auto got = recvAll(good.get());
    stop = true;
    srv.join();
    CHECK(got.size() == data.size());
    CHECK(sha(got.data(), got.size()) == sha(data.data(), data.size()));
  }

  TEST_CASE("removePod resets its connections and stops accepting") {
    Pod pod;
    Running run(pod);
    auto server = pod.listen(9004);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9004);
    auto client = pod.connectProxy();
    REQUIRE(eventually([&] { return run.engine->stats()[ztunnel::Counter::kActive] == 1; }));
    run.engine->removePod("pod-1");
    char x;
    CHECK(::recv(client.get(), &x, 1, 0) <= 0);
    CHECK(eventually([&] { return run.engine->stats()[ztunnel::Counter::kActive] == 0; }));
    CHECK(run.engine->listeners().empty());
    auto s = socketInNetns(pod.ns.fd(), AF_INET, SOCK_STREAM, 0);
    auto sa = makeSockaddr(htonl(INADDR_LOOPBACK), SLUICE_OUTBOUND_PORT);
    CHECK(eventually([&] {
      auto t = socketInNetns(pod.ns.fd(), AF_INET, SOCK_STREAM, 0);
      return ::connect(t->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 &&
             errno == ECONNREFUSED;
    }));
    // and the pod can be added again
    CHECK(run.engine->addPod(pod.spec()).has_value());
  }

  TEST_CASE("without a view of the mesh outbound connections are reset - not passed through") {
    Pod pod;
    FakeResolver resolver;
    FakeDirectory directory;
    ztunnel::EngineConfig cfg;
    cfg.workers = 2;
    auto engine = ztunnel::createEngine(cfg, resolver, nullptr, &directory);
    REQUIRE_MESSAGE(engine.has_value(), (engine ? "" : engine.error().describe()));
    REQUIRE((*engine)->addPod(pod.spec()).has_value());
    auto server = pod.listen(9005);
    resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9005);
    auto refused = pod.connectProxy();
    char x;
    CHECK(::recv(refused.get(), &x, 1, 0) < 0);
    CHECK(errno == ECONNRESET);
    CHECK((*engine)->stats()[ztunnel::Counter::kNoView] == 1);
    pollfd p{server.get(), POLLIN, 0};
    CHECK(::poll(&p, 1, 100) == 0);  // nothing reached the destination
    directory.has_view = true;
    auto client = pod.connectProxy();
    CHECK(::poll(&p, 1, 5000) == 1);
    UniqueFd accepted(::accept(server.get(), nullptr, nullptr));
    CHECK(accepted.valid());
    CHECK((*engine)->stats()[ztunnel::Counter::kNoView] == 1);
  }

  TEST_CASE("no original destination: the connection is closed and counted") {
    Pod pod;
    Running run(pod);
    auto client = pod.connectProxy();
    char x;
    CHECK(::recv(client.get(), &x, 1, 0) <= 0);
    CHECK(run.engine->stats()[ztunnel::Counter::kNoOriginalDst] == 1);
  }

  TEST_CASE("the resolver is asked with the app's address and 127.0.0.1:15001") {
    // The local address is the listener's own (read once, not per
    // connection); the peer is the app's socket as it sees itself.
    Pod pod;
    Running run(pod);
    auto client = pod.connectProxy();
    sockaddr_storage self{};
    socklen_t len = sizeof(self);
    REQUIRE(::getsockname(client.get(), reinterpret_cast<sockaddr*>(&self), &len) == 0);
    char x;
    CHECK(::recv(client.get(), &x, 1, 0) <= 0);  // no destination: closed
    std::lock_guard lk(run.resolver.mu);
    REQUIRE(run.resolver.asked_local.has_value());
    CHECK(run.resolver.asked_local->str() == "127.0.0.1:15001");
    REQUIRE(run.resolver.asked_peer.has_value());
    CHECK(*run.resolver.asked_peer == SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&self), len));
  }

  TEST_CASE("a connection accepted on a proxy listener inherits its TCP_NODELAY") {
    // The proxy sets TCP_NODELAY once per listener, not per accepted
    // connection: Linux copies it to the connections the listener accepts.
    Pod pod;
    auto nodelay_of_accepted = [&](bool listener_nodelay) {
      SockAddr addr(*IpAddr::parse("10.77.3.5"), listener_nodelay ? 15001 : 15002);
      auto l = ztunnel::inpod::listenIn(pod.ns.fd(), addr, false);
      REQUIRE(l.has_value());
      int v = listener_nodelay ? 1 : 0;
      REQUIRE(setsockopt(l->get(), IPPROTO_TCP, TCP_NODELAY, &v, sizeof(v)) == 0);
      auto c = socketInNetns(pod.ns.fd(), AF_INET, SOCK_STREAM, 0);
      REQUIRE(c.has_value());
      REQUIRE(::connect(c->get(), addr.sa(), addr.len()) == 0);
      UniqueFd a(::accept4(l->get(), nullptr, nullptr, SOCK_CLOEXEC));
      REQUIRE(a.get() >= 0);
      int got = -1;
      socklen_t len = sizeof(got);
      REQUIRE(getsockopt(a.get(), IPPROTO_TCP, TCP_NODELAY, &got, &len) == 0);
      return got != 0;
    };
    CHECK(nodelay_of_accepted(true));
    CHECK_FALSE(nodelay_of_accepted(false));  // the check can tell
  }

  TEST_CASE("the authorization hook refuses a same-node connection before the app sees it") {
    Pod pod;
    FakeAuthorizer authz;
    authz.deny = true;
    Running run(pod, {}, {&authz, nullptr});
    auto server = pod.listen(9006);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9006);
    auto client = pod.connectProxy();
    char x;
    CHECK(::recv(client.get(), &x, 1, 0) < 0);  // reset
    CHECK(errno == ECONNRESET);
    pollfd p{server.get(), POLLIN, 0};
    CHECK(::poll(&p, 1, 200) == 0);  // the app never got a connection
    CHECK(run.engine->stats()[ztunnel::Counter::kDenied] == 1);
    {
      std::lock_guard lk(authz.mu);
      CHECK(std::string(ztunnel::toString(authz.last_path)) == "local_handoff");
      CHECK(authz.last_pod == "test/pod");
      CHECK(authz.last_principal == "spiffe://cluster.local/ns/test/sa/default");
      CHECK(authz.last_port == 9006);
    }
    auto cs = run.engine->connections();
    REQUIRE(cs.size() == 1);
    CHECK(cs[0].reasonText() == "denied: fake policy");
    CHECK(std::string(ztunnel::toString(cs[0].path)) == "local_handoff");
  }

  TEST_CASE("reauthorize resets open connections the authorizer denies now, and only those") {
    Pod pod;
    FakeAuthorizer authz;
    Running run(pod, {}, {&authz, nullptr});
    auto server = pod.listen(9007);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9007);
    auto client = pod.connectProxy();
    UniqueFd app(::accept(server.get(), nullptr, nullptr));
    REQUIRE(app.valid());
    REQUIRE(::send(client.get(), "ping", 4, 0) == 4);
    char buf[8];
    REQUIRE(::recv(app.get(), buf, sizeof(buf), 0) == 4);
    run.engine->reauthorize();  // still allowed: nothing happens
    REQUIRE(::send(app.get(), "pong", 4, 0) == 4);
    REQUIRE(::recv(client.get(), buf, sizeof(buf), 0) == 4);
    authz.deny = true;
    run.engine->reauthorize();
    CHECK(::recv(client.get(), buf, sizeof(buf), 0) < 0);
    CHECK(errno == ECONNRESET);
    CHECK(eventually([&] { return run.engine->stats()[ztunnel::Counter::kActive] == 0; }));
    CHECK(run.engine->stats()[ztunnel::Counter::kDenied] == 1);
    auto cs = run.engine->connections();
    REQUIRE(cs.size() == 1);
    CHECK(cs[0].reasonText() == "denied: fake policy");
    CHECK(cs[0].bytes_sent == 4);
    CHECK(cs[0].bytes_received == 4);
  }

  TEST_CASE("resetConnections: one by id (both apps see a reset), then a pod's, others untouched") {
    Pod pod;
    Running run(pod);
    auto server = pod.listen(9010);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9010);
    auto a = pod.connectProxy();
    UniqueFd a_app(::accept(server.get(), nullptr, nullptr));
    auto b = pod.connectProxy();
    UniqueFd b_app(::accept(server.get(), nullptr, nullptr));
    REQUIRE(a_app.valid());
    REQUIRE(b_app.valid());
    char buf[8];
    REQUIRE(::send(a.get(), "ping", 4, 0) == 4);
    REQUIRE(::recv(a_app.get(), buf, sizeof(buf), 0) == 4);
    REQUIRE(eventually([&] { return run.engine->stats()[ztunnel::Counter::kActive] == 2; }));
    // The record of a's connection: the one that carried 4 bytes.
    uint64_t a_id = 0, b_id = 0;
    for (const auto& c : run.engine->connections()) (c.bytes_sent == 4 ? a_id : b_id) = c.id;
    REQUIRE(a_id != 0);
    REQUIRE(b_id != 0);
    CHECK(run.engine->resetConnections(0, "") == 0);                // nothing selected
    CHECK(run.engine->resetConnections(a_id + b_id + 7, "") == 0);  // no such id
    CHECK(run.engine->resetConnections(a_id, "") == 1);
    CHECK(::recv(a.get(), buf, sizeof(buf), 0) < 0);
    CHECK(errno == ECONNRESET);
    CHECK(::recv(a_app.get(), buf, sizeof(buf), 0) < 0);
    CHECK(errno == ECONNRESET);
    CHECK(run.engine->resetConnections(a_id, "") == 0);  // closed already
    // b is untouched.
    REQUIRE(::send(b.get(), "pong", 4, 0) == 4);
    CHECK(::recv(b_app.get(), buf, sizeof(buf), 0) == 4);
    for (const auto& c : run.engine->connections())
      if (c.id == a_id) CHECK(c.reasonText() == "reset: by an operator (admin API)");
    // By pod: every connection of it.
    CHECK(run.engine->resetConnections(0, "other/pod") == 0);
    CHECK(run.engine->resetConnections(0, pod.spec().name_namespace) == 1);
    CHECK(::recv(b.get(), buf, sizeof(buf), 0) < 0);
    CHECK(errno == ECONNRESET);
    CHECK(eventually([&] { return run.engine->stats()[ztunnel::Counter::kActive] == 0; }));
  }

  TEST_CASE("the connection observer sees opened, every byte, and the closed record") {
    Pod pod;
    CountingObserver obs;
    Running run(pod, {}, {nullptr, &obs});
    auto server = pod.listen(9008);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9008);
    auto up = pattern(300000, 1);
    auto client = pod.connectProxy();
    UniqueFd app(::accept(server.get(), nullptr, nullptr));
    REQUIRE(app.valid());
    REQUIRE(sendAll(client.get(), up.data(), up.size()));
    ::shutdown(client.get(), SHUT_WR);
    auto got = recvAll(app.get());
    CHECK(got.size() == up.size());
    REQUIRE(::send(app.get(), "0123456789", 10, 0) == 10);
    app.reset();
    (void)recvAll(client.get());
    REQUIRE(eventually([&] {
      std::lock_guard lk(obs.mu);
      return obs.closed_records.size() == 1;
    }));
    CHECK(obs.opened_n == 1);
    CHECK(obs.sent_n == up.size());
    CHECK(obs.received_n == 10);
    std::lock_guard lk(obs.mu);
    const auto& r = obs.closed_records[0];
    CHECK(r.bytes_sent == up.size());
    CHECK(r.bytes_received == 10);
    CHECK(std::string(ztunnel::toString(r.state)) == "closed");
    CHECK(r.reasonText() == "eof");
    CHECK(r.source_principal == "spiffe://cluster.local/ns/test/sa/default");
    CHECK(r.destination_principal == "spiffe://cluster.local/ns/test/sa/default");
  }

  TEST_CASE("a pod without a SPIFFE ID is refused with a clear error") {
    Pod pod;
    FakeResolver resolver;
    auto e = ztunnel::createEngine({}, resolver);
    REQUIRE(e.has_value());
    auto spec = pod.spec();
    spec.identity.clear();
    auto r = (*e)->addPod(spec);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().describe().find("SPIFFE ID") != std::string::npos);
    CHECK((*e)->listeners().empty());
  }

  TEST_CASE("a pod whose loopback is still down is enrolled: the engine brings lo up") {
    Pod pod;
    pod.ns.sh("ip link set lo down && ip addr flush dev lo");  // as a netns never brought up
    Running run(pod);  // addPod must succeed (binding 127.0.0.1:15001 needs lo up)
    pod.ns.sh("ip -o link show lo | grep -q '<LOOPBACK,UP'");  // fails the test unless up
    auto server = pod.listen(9009);
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9009);
    auto client = pod.connectProxy();
    UniqueFd app(::accept(server.get(), nullptr, nullptr));
    CHECK(app.valid());
  }

  TEST_CASE("a dual-stack pod: IPv6 listeners, and [::1]:15001 hands an IPv6 connection off") {
    Pod pod(true);
    Running run(pod);
    std::set<std::pair<std::string, std::string>> listeners;
    for (const auto& l : run.engine->listeners()) listeners.emplace(l.kind, l.address);
    CHECK(listeners ==
          std::set<std::pair<std::string, std::string>>{{"outbound", "127.0.0.1:15001"},
                                                        {"inbound", "10.77.3.5:15006"},
                                                        {"outbound6", "[::1]:15001"},
                                                        {"inbound6", "[fd00:77:3::5]:15006"}});
    auto server = pod.listen6(9006);
    run.resolver.dst6 = SockAddr(*IpAddr::parse(kPodIp6), 9006).in6();
    std::string peer;
    std::thread srv([&] {
      sockaddr_in6 from{};
      socklen_t len = sizeof(from);
      int c = ::accept(server.get(), reinterpret_cast<sockaddr*>(&from), &len);
      REQUIRE(c >= 0);
      peer = SockAddr(from).ip().str();
      const char reply[] = "six";
      ::send(c, reply, 3, 0);
      ::shutdown(c, SHUT_WR);
      recvAll(c);
      ::close(c);
    });
    auto client = pod.connectProxy(true);
    ::shutdown(client.get(), SHUT_WR);
    auto got = recvAll(client.get());
    srv.join();
    CHECK(std::string(got.begin(), got.end()) == "six");
    // The destination is an enrolled pod of this node (the pod itself): handed
    // off inside its netns, from the client pod's IPv6 address (IPV6_TRANSPARENT).
    CHECK(peer == kPodIp6);
    CHECK(eventually([&] {
      for (const auto& c : run.engine->connections())
        if (c.destination == "[fd00:77:3::5]:9006" && c.state == ztunnel::ConnState::kClosed)
          return c.path == ztunnel::Path::kLocalHandoff &&
                 c.source.starts_with("[fd00:77:3::5]:") &&
                 c.reason == ztunnel::CloseReason::kEof && c.bytes_received == 3;
      return false;
    }));
  }

  // The proxy's accepted plaintext socket for client C:p has the tuple
  // (pod:80, C:p). An upstream to pod:80 bound to C at port p would give the
  // app's end that same tuple, and its SYN would meet the proxy's socket.
  // The kernel's bind to port 0 offers ports of the other parity than the
  // range's start first: with 20000-20009, the odd ones.
  TEST_CASE(
      "an upstream bound to a client's address skips the ports of its plaintext connections") {
    Pod pod;
    pod.ns.sh("sysctl -qw net.ipv4.ip_local_port_range='20000 20009'");
    auto state = std::make_shared<ztunnel::proxy::PodState>();
    state->spec = pod.spec();
    state->netns = UniqueFd(::dup(pod.ns.fd()));
    ztunnel::proxy::NetnsSockets sockets;
    REQUIRE(sockets.init());
    const IpAddr client = *IpAddr::parse("10.77.3.9");
    auto bound = [&](const ztunnel::proxy::Upstream& u) {
      sockaddr_in a{};
      socklen_t len = sizeof(a);
      REQUIRE(::getsockname(u.fd.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
      CHECK(a.sin_addr.s_addr == *parseIp4("10.77.3.9"));
      return ntohs(a.sin_port);
    };
    std::vector<ztunnel::proxy::SourceShare> plain;
    for (uint16_t port = 20001; port <= 20009; port += 2)
      plain.push_back(ztunnel::proxy::SourceShare::take(state, client, 100, port));
    std::vector<ztunnel::proxy::Upstream> held;
    for (int i = 0; i < 5; ++i) {
      auto u = sockets.upstream(*state, SLUICE_MARK_INBOUND_APP, AF_INET, client, i % 2 == 0);
      REQUIRE_MESSAGE(u.has_value(), (u ? "" : u.error().describe()));
      CHECK_FALSE(u->setup.pending);  // bound here, to see the port, even where it may defer
      const uint16_t port = bound(*u);
      CHECK_MESSAGE(port % 2 == 0, port);
      held.push_back(std::move(*u));
    }
    // Every port of the range is bound or a client's: refused, nothing taken.
    auto none = sockets.upstream(*state, SLUICE_MARK_INBOUND_APP, AF_INET, client, true);
    REQUIRE_FALSE(none.has_value());
    CHECK(none.error().describe().find("Address already in use") != std::string::npos);
    // Another client's ports are no business of this one's sockets: the
    // ring binds them at the connect, as before.
    const IpAddr other = *IpAddr::parse("10.77.3.10");
    held.clear();
    auto u = sockets.upstream(*state, SLUICE_MARK_INBOUND_APP, AF_INET, other, true);
    REQUIRE(u.has_value());
    CHECK(u->setup.pending == ztunnel::uring::socketSetupSupported());
    // Those connections gone, the port is the kernel's pick again (at the
    // connect where the ring can bind).
    plain.clear();
    CHECK(state->plain_client_count.load() == 0);
    CHECK(state->plain_clients.empty());
    CHECK(state->plain_sources.empty());
    auto later = sockets.upstream(*state, SLUICE_MARK_INBOUND_APP, AF_INET, client, true);
    REQUIRE(later.has_value());
    CHECK(later->setup.pending == ztunnel::uring::socketSetupSupported());
  }
}
