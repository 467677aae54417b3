// The HBONE test rig, without root: a Client and a Server, each with its own
// ring and records, on the test thread; pods are 127.0.0.x addresses in the
// current netns; certificates come from an in-process CA (tests/support).
// Shared by the hbone_*_test.cc files; the odd peers (plain OpenSSL +
// nghttp2 on threads) are in hbone_peers.h.
#pragma once

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
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

namespace hbone_rig {

using namespace sluice;
using namespace sluice::ztunnel;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// The odd peers write with SSL_write (plain write()): a peer that closed
// first must fail the write, not kill the test.
inline const bool kNoSigpipe = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();

// ------------------------------------------------------------ certificates

// An in-process CA (tests/support/test_ca.h).
struct TestCa : test::TestCa {
  TestCa() : test::TestCa("hbone test CA", 3600) {}
};

class FakeCredentials final : public CredentialSource {
 public:
  std::shared_ptr<const WorkloadCredential> credential(const std::string& uri) override {
    std::lock_guard lk(mu_);
    auto it = creds_.find(uri);
    return it == creds_.end() ? nullptr : it->second;
  }
  void set(const std::string& uri, std::shared_ptr<const WorkloadCredential> c) {
    std::lock_guard lk(mu_);
    creds_[uri] = std::move(c);
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const WorkloadCredential>> creds_;
};

// ------------------------------------------------------------ sockets

inline uint32_t ip(const char* s) { return *parseIp4(s); }

inline sockaddr_in localOf(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return a;
}

inline UniqueFd listenOn(uint32_t addr, uint16_t port = 0, bool nonblock = false) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0));
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a = makeSockaddr(addr, port);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  REQUIRE(::listen(fd.get(), 256) == 0);
  return fd;
}

inline UniqueFd connectTo(const sockaddr_in& dst, uint32_t from = 0) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (from) {
    sockaddr_in b = makeSockaddr(from, 0);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&b), sizeof(b)) == 0);
  }
  REQUIRE(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&dst), sizeof(dst)) == 0);
  return fd;
}

inline void setTimeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>(t.count() % 1000 * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

inline void setBuffers(int fd, int bytes) {
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}

// Upstream sockets in the current netns: bound to bind_ip, or else to the
// pod's own address (what its netns would give it). The mark is ignored.
class TestSockets final : public proxy::SocketFactory {
 public:
  int buffer_bytes = 0;  // SO_SNDBUF/SO_RCVBUF when set
  Result<proxy::Upstream> upstream(const proxy::PodState& pod, uint32_t, int family,
                                   const IpAddr& bind, bool) override {
    UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return failErrno("socket");
    if (buffer_bytes) setBuffers(fd.get(), buffer_bytes);
    int one = 1;  // as inpod::upstreamSocket
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    SockAddr b(!bind.empty()        ? bind
               : family == AF_INET6 ? pod.spec.ip6
                                    : IpAddr::v4(pod.spec.ip4),
               0);
    if (::bind(fd.get(), b.sa(), b.len()) != 0) return failErrno("bind");
    return proxy::Upstream{std::move(fd), {}};
  }
};

inline std::vector<unsigned char> pattern(size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>((i * 131 + seed) ^ (i >> 13));
  return v;
}

inline bool sendAll(int fd, const unsigned char* p, size_t n) {
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// Everything until EOF; false on an error (a reset, a timeout).
inline bool recvAll(int fd, std::vector<unsigned char>& out) {
  unsigned char buf[1 << 16];
  for (;;) {
    ssize_t k = ::recv(fd, buf, sizeof(buf), 0);
    if (k == 0) return true;
    if (k < 0) return false;
    out.insert(out.end(), buf, buf + k);
  }
}

// An app in a pod: accepts on addr:port, one thread per connection.
class App {
 public:
  using Handler = std::function<void(int fd)>;
  App(uint32_t addr, Handler h) : listener_(listenOn(addr)), handler_(std::move(h)) {
    port = ntohs(localOf(listener_.get()).sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~App() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
    {
      std::lock_guard lk(mu_);
      for (int fd : open_) ::shutdown(fd, SHUT_RDWR);  // the test is over: no waiting
    }
    for (auto& t : conns_) t.join();
  }
  uint16_t port = 0;
  std::atomic<int> accepted{0};

  static void echo(int fd) {
    std::vector<unsigned char> buf(1 << 16);
    for (;;) {
      ssize_t k = ::recv(fd, buf.data(), buf.size(), 0);
      if (k <= 0) break;
      if (!sendAll(fd, buf.data(), static_cast<size_t>(k))) break;
    }
    ::shutdown(fd, SHUT_WR);  // half-close after the peer's
  }

 private:
  void loop() {
    for (;;) {
      int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      accepted++;
      setTimeouts(fd, 20s);
      {
        std::lock_guard lk(mu_);
        open_.push_back(fd);
      }
      conns_.emplace_back([this, fd] {
        handler_(fd);
        std::lock_guard lk(mu_);
        std::erase(open_, fd);
        ::close(fd);
      });
    }
  }
  UniqueFd listener_;
  Handler handler_;
  std::thread thread_;
  std::vector<std::thread> conns_;
  std::mutex mu_;
  std::vector<int> open_;
};

// ------------------------------------------------------------ the two sides

inline constexpr const char* kIdA = "spiffe://cluster.local/ns/a/sa/client";
inline constexpr const char* kIdB = "spiffe://cluster.local/ns/b/sa/server";

inline std::shared_ptr<proxy::PodState> makePod(const char* uid, const char* name, const char* id,
                                                const char* addr) {
  auto p = std::make_shared<proxy::PodState>();
  p->spec.uid = uid;
  p->spec.name_namespace = name;
  p->spec.identity = id;
  p->spec.ip4 = ip(addr);
  return p;
}

class RecordingAuthorizer final : public InboundAuthorizer {
 public:
  Verdict verdict = Verdict::kAllow;
  int calls = 0;
  std::string source_principal, pod_uid;
  SockAddr source, destination;
  Path path = Path::kInbound;
  bool mutual_tls = false;
  Authorization authorize(const InboundRequest& r) override {
    calls++;
    source_principal = r.source_principal;
    pod_uid = r.pod_uid;
    source = r.source;
    destination = r.destination;
    path = r.path;
    mutual_tls = r.mutual_tls;
    return {verdict, verdict == Verdict::kDeny ? "test says no" : ""};
  }
};

// What a side's records tell an observer: the HTTP exchanges, by status.
// What a side's observer (the metrics) is told.
struct ObserverLog final : ConnectionObserver {
  std::vector<int> statuses;  // of the requests
  int opened_n = 0, closed_n = 0;
  uint64_t sent = 0, received = 0;
  void opened(unsigned, const ConnectionRecord&) override { opened_n++; }
  void transferred(unsigned, const ConnectionRecord&, uint64_t s, uint64_t r) override {
    sent += s;
    received += r;
  }
  void request(unsigned, const ConnectionRecord&, const RequestRecord& r) override {
    statuses.push_back(r.status);
  }
  void closed(unsigned, const ConnectionRecord&) override { closed_n++; }
};

struct Side {
  explicit Side(const EngineConfig& cfg, InboundAuthorizer* authorizer = nullptr)
      : records(false, &observed) {
    auto r = uring::Ring::create(512);
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
    ring = std::move(*r);
    ctx = std::make_unique<proxy::WorkerContext>(proxy::WorkerContext{.config = cfg,
                                                                      .ring = *ring,
                                                                      .records = records,
                                                                      .worker = 0,
                                                                      .workers = 1,
                                                                      .sockets = sockets,
                                                                      .authorizer = authorizer,
                                                                      .hbone_port = 15008,
                                                                      .want_fine_tick = {}});
  }
  uint64_t count(Counter c) { return records.counters().get(c); }
  ObserverLog observed;
  proxy::Records records;
  TestSockets sockets;
  std::unique_ptr<uring::Ring> ring;
  std::unique_ptr<proxy::WorkerContext> ctx;
};

inline const char* const kAddrA = "127.0.0.2";  // the client pod
inline const char* const kAddrB = "127.0.0.3";  // the server pod

struct Mesh {
  EngineConfig cfg;
  TestCa ca;
  FakeCredentials creds;
  std::unique_ptr<tls::Contexts> tls;
  RecordingAuthorizer authorizer;
  std::unique_ptr<Side> cs, ss;  // client side, server side
  std::unique_ptr<hbone::Client> client;
  std::unique_ptr<hbone::Server> server;
  std::shared_ptr<proxy::PodState> pod_a = makePod("uid-a", "a/client", kIdA, kAddrA);
  std::shared_ptr<proxy::PodState> pod_b = makePod("uid-b", "b/server", kIdB, kAddrB);
  UniqueFd hbone_listener;  // pod B's 15008, on another port
  UniqueFd app_listener;    // pod A's 15001 stand-in
  bool server_paused = false;

  explicit Mesh(std::function<void(EngineConfig&)> tune = {}) {
    cfg.trust_anchor_pem = ca.pem();
    cfg.connect_timeout = 2000ms;
    if (tune) tune(cfg);
    auto t = tls::Contexts::create(ca.pem());
    REQUIRE(t.has_value());
    tls = std::move(*t);
    creds.set(kIdA, ca.issue(kIdA));
    creds.set(kIdB, ca.issue(kIdB));
    hbone_listener = listenOn(ip(kAddrB), 0, true);
    app_listener = listenOn(ip(kAddrA));
    cs = std::make_unique<Side>(cfg);
    ss = std::make_unique<Side>(cfg, &authorizer);
    cs->ctx->hbone_port = ss->ctx->hbone_port = ntohs(localOf(hbone_listener.get()).sin_port);
    client = std::make_unique<hbone::Client>(*cs->ctx, creds, *tls);
    server = std::make_unique<hbone::Server>(*ss->ctx, creds, *tls);
  }
  ~Mesh() {
    client->shutdown();
    if (server) server->shutdown();
    server_paused = false;
    pumpUntil([&] { return client->idle() && (!server || server->idle()); }, 5s);
  }

  void step() {
    auto now = Clock::now();
    unsigned n = *cs->ring->run(0);
    if (!server_paused && server) {
      for (;;) {
        sockaddr_in peer{};
        socklen_t len = sizeof(peer);
        int fd =
            ::accept4(hbone_listener.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
        if (fd < 0) break;
        ss->records.counters().add(Counter::kTunnelsAccepted);
        server->accept(pod_b, UniqueFd(fd), peer);
        ++n;
      }
      n += *ss->ring->run(0);
      server->tick(now);
      server->fineTick(now);
    }
    client->tick(now);
    client->fineTick(now);
    if (n == 0) std::this_thread::sleep_for(100us);
  }
  bool pumpUntil(const std::function<bool()>& done, std::chrono::milliseconds limit) {
    auto end = Clock::now() + limit;
    while (!done()) {
      if (Clock::now() > end) return false;
      step();
    }
    return true;
  }
  void pumpFor(std::chrono::milliseconds d) {
    auto end = Clock::now() + d;
    while (Clock::now() < end) step();
  }

  // An app connection of pod A (or `from`, another pod of the client's node)
  // to dst (through the HBONE client); returns the app's end of it.
  UniqueFd open(const sockaddr_in& dst, const char* identity = kIdB,
                std::shared_ptr<proxy::PodState> from = nullptr) {
    auto [app, attempt] = connection(dst, from);
    client->open(std::move(attempt), MeshWorkload{identity, "b/server", "node-b"});
    return app;
  }

  // An app connection of pod A (or `from`) to dst, not on its way yet: the
  // app's end and the attempt holding the proxy's end.
  std::pair<UniqueFd, std::unique_ptr<proxy::Attempt>> connection(
      const sockaddr_in& dst, std::shared_ptr<proxy::PodState> from = nullptr) {
    UniqueFd app = connectTo(localOf(app_listener.get()), ip(kAddrA));
    setTimeouts(app.get(), 20s);
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    UniqueFd proxy_end(
        ::accept4(app_listener.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
    REQUIRE(proxy_end);
    return {std::move(app),
            std::make_unique<proxy::Attempt>(from ? from : pod_a, std::move(proxy_end), peer, dst)};
  }

  std::vector<ConnectionRecord> closed(Side& s) {
    std::vector<ConnectionRecord> out;
    for (auto& r : s.records.snapshot())
      if (r.state == ConnState::kClosed) out.push_back(r);
    return out;
  }
};

inline std::string why(CloseReason r) { return toString(r); }

// Runs fn on a thread while the test thread pumps the rings.
struct Worker {
  std::thread t;
  std::atomic<bool> done{false};
  explicit Worker(std::function<void()> fn)
      : t([this, fn = std::move(fn)] {
          fn();
          done = true;
        }) {}
  ~Worker() { t.join(); }
};

// An app's side of one exchange: all of data, a half-close, then every
// byte until EOF into got.
inline void sendThenDrain(int fd, const void* data, size_t n, std::vector<unsigned char>& got) {
  sendAll(fd, static_cast<const unsigned char*>(data), n);
  ::shutdown(fd, SHUT_WR);
  recvAll(fd, got);
}

inline bool allDone(const std::vector<std::unique_ptr<Worker>>& ws) {
  for (auto& w : ws)
    if (!w->done) return false;
  return true;
}

// The router's side of Service attempts: notes outcomes, keeps retried ones.
class TestSink final : public proxy::AttemptSink {
 public:
  std::vector<bool> results;
  int released = 0;
  std::vector<std::string> whys;
  std::unique_ptr<proxy::Attempt> retried;
  void attemptResult(proxy::Attempt&, bool ok) override { results.push_back(ok); }
  void attemptReleased(proxy::Attempt&) override { released++; }
  bool attemptRetry(std::unique_ptr<proxy::Attempt>& a, std::string_view why) override {
    whys.emplace_back(why);
    retried = std::move(a);
    return true;
  }
};

// One short exchange through the mesh: true when the echo came back whole.
inline bool roundTrip(Mesh& m, const sockaddr_in& dst, const std::string& text) {
  UniqueFd app = m.open(dst);
  std::vector<unsigned char> got;
  Worker w([&] { sendThenDrain(app.get(), text.data(), text.size(), got); });
  if (!m.pumpUntil([&] { return w.done.load(); }, 10s)) return false;
  return std::string(got.begin(), got.end()) == text;
}

}  // namespace hbone_rig
