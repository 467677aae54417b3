// HBONE in-process, without root: a Client and a Server, each with its own
// ring and records, on the test thread; pods are 127.0.0.x addresses in the
// current netns; certificates come from an in-process CA. Odd peers are
// plain OpenSSL + nghttp2 on threads.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
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
#include "ztunnel/hbone/client.h"
#include "ztunnel/hbone/server.h"

using namespace sluice;
using namespace sluice::ztunnel;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// ------------------------------------------------------------ certificates

bool addExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
  if (!ext) return false;
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return true;
}

struct TestCa {
  x509::PKey key;
  x509::Cert cert;
  std::string pem;
  long serial = 1;

  TestCa() {
    key = std::move(*x509::generateP256());
    cert.reset(X509_new());
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("hbone test CA"), -1, -1, 0);
    X509_set_issuer_name(cert.get(), name);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
    X509_set_pubkey(cert.get(), key.get());
    addExt(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE");
    addExt(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
    addExt(cert.get(), cert.get(), NID_subject_key_identifier, "hash");
    X509_sign(cert.get(), key.get(), EVP_sha256());
    pem = x509::certPem(cert.get());
  }

  std::shared_ptr<const WorkloadCredential> issue(const std::string& uri) {
    auto k = std::move(*x509::generateP256());
    x509::Cert c(X509_new());
    X509_set_version(c.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c.get()), serial++);
    X509_set_issuer_name(c.get(), X509_get_subject_name(cert.get()));
    X509_gmtime_adj(X509_getm_notBefore(c.get()), -60);
    X509_gmtime_adj(X509_getm_notAfter(c.get()), 3600);
    X509_set_pubkey(c.get(), k.get());
    std::string san = "critical,URI:" + uri;
    bool ok = addExt(c.get(), cert.get(), NID_basic_constraints, "critical,CA:FALSE") &&
              addExt(c.get(), cert.get(), NID_key_usage, "critical,digitalSignature") &&
              addExt(c.get(), cert.get(), NID_ext_key_usage, "serverAuth,clientAuth") &&
              addExt(c.get(), cert.get(), NID_subject_alt_name, san.c_str()) &&
              addExt(c.get(), cert.get(), NID_authority_key_identifier, "keyid:always");
    REQUIRE(ok);
    REQUIRE(X509_sign(c.get(), key.get(), EVP_sha256()) > 0);
    auto cred = std::make_shared<WorkloadCredential>();
    cred->identity = uri;
    cred->chain_pem = x509::certPem(c.get()) + pem;
    cred->key_pem = x509::privateKeyPem(k.get());
    return cred;
  }
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

uint32_t ip(const char* s) { return *parseIp4(s); }

sockaddr_in localOf(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return a;
}

UniqueFd listenOn(uint32_t addr, uint16_t port = 0, bool nonblock = false) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0));
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a = makeSockaddr(addr, port);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  REQUIRE(::listen(fd.get(), 256) == 0);
  return fd;
}

UniqueFd connectTo(const sockaddr_in& dst, uint32_t from = 0) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (from) {
    sockaddr_in b = makeSockaddr(from, 0);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&b), sizeof(b)) == 0);
  }
  REQUIRE(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&dst), sizeof(dst)) == 0);
  return fd;
}

void setTimeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>(t.count() % 1000 * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

void setBuffers(int fd, int bytes) {
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}

// Upstream sockets in the current netns: bound to bind_ip, or else to the
// pod's own address (what its netns would give it). The mark is ignored.
class TestSockets final : public proxy::SocketFactory {
 public:
  int buffer_bytes = 0;  // SO_SNDBUF/SO_RCVBUF when set
  Result<UniqueFd> upstream(const proxy::PodState& pod, uint32_t, uint32_t bind_ip) override {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return failErrno("socket");
    if (buffer_bytes) setBuffers(fd.get(), buffer_bytes);
    sockaddr_in b = makeSockaddr(bind_ip ? bind_ip : pod.spec.ip4, 0);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&b), sizeof(b)) != 0) return failErrno("bind");
    return fd;
  }
};

std::vector<unsigned char> pattern(size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>((i * 131 + seed) ^ (i >> 13));
  return v;
}

bool sendAll(int fd, const unsigned char* p, size_t n) {
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// Everything until EOF; false on an error (a reset, a timeout).
bool recvAll(int fd, std::vector<unsigned char>& out) {
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
      conns_.emplace_back([this, fd] {
        handler_(fd);
        ::close(fd);
      });
    }
  }
  UniqueFd listener_;
  Handler handler_;
  std::thread thread_;
  std::vector<std::thread> conns_;
};

// ------------------------------------------------------------ the two sides

constexpr const char* kIdA = "spiffe://cluster.local/ns/a/sa/client";
constexpr const char* kIdB = "spiffe://cluster.local/ns/b/sa/server";

std::shared_ptr<proxy::PodState> makePod(const char* uid, const char* name, const char* id,
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
  sockaddr_in source{}, destination{};
  Path path = Path::kInbound;
  bool mutual_tls = false;
  Verdict authorize(const InboundRequest& r) override {
    calls++;
    source_principal = r.source_principal;
    pod_uid = r.pod_uid;
    source = r.source;
    destination = r.destination;
    path = r.path;
    mutual_tls = r.mutual_tls;
    return verdict;
  }
};

struct Side {
  explicit Side(const EngineConfig& cfg, InboundAuthorizer* authorizer = nullptr) {
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
  proxy::Records records{false, nullptr};
  TestSockets sockets;
  std::unique_ptr<uring::Ring> ring;
  std::unique_ptr<proxy::WorkerContext> ctx;
};

const char* const kAddrA = "127.0.0.2";  // the client pod
const char* const kAddrB = "127.0.0.3";  // the server pod

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
    cfg.trust_anchor_pem = ca.pem;
    cfg.connect_timeout = 2000ms;
    if (tune) tune(cfg);
    auto t = tls::Contexts::create(ca.pem);
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
    if (n == 0) (void)cs->ring->run(1);
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

  // An app connection of pod A to dst (through the HBONE client); returns
  // the app's end of it.
  UniqueFd open(const sockaddr_in& dst, const char* identity = kIdB) {
    UniqueFd app = connectTo(localOf(app_listener.get()), ip(kAddrA));
    setTimeouts(app.get(), 20s);
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    UniqueFd proxy_end(
        ::accept4(app_listener.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
    REQUIRE(proxy_end);
    auto attempt = std::make_unique<proxy::Attempt>(pod_a, std::move(proxy_end), peer, dst);
    client->open(std::move(attempt), MeshWorkload{identity, "b/server", "node-b"});
    return app;
  }

  std::vector<ConnectionRecord> closed(Side& s) {
    std::vector<ConnectionRecord> out;
    for (auto& r : s.records.snapshot())
      if (r.state == ConnState::kClosed) out.push_back(r);
    return out;
  }
};

std::string why(CloseReason r) { return toString(r); }

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

bool allDone(const std::vector<std::unique_ptr<Worker>>& ws) {
  for (auto& w : ws)
    if (!w->done) return false;
  return true;
}

}  // namespace

TEST_SUITE("hbone") {
  TEST_CASE("many concurrent streams share one tunnel; bytes intact both ways, half-close") {
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

  TEST_CASE("a slow reader stalls the sender with bounded buffering, then gets everything") {
    Mesh m([](EngineConfig& c) {
      c.hbone_stream_window = 64 * 1024;
      c.buffer_bytes = 16 * 1024;
    });
    m.ss->sockets.buffer_bytes = 32 * 1024;
    std::atomic<bool> read_now{false};
    std::vector<unsigned char> got;
    App sink(ip(kAddrB), [&](int fd) {
      setBuffers(fd, 32 * 1024);
      while (!read_now) std::this_thread::sleep_for(5ms);
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
    CHECK(pushed > 0);
    CHECK(pushed < 2 * 1024 * 1024);
    read_now = true;
    REQUIRE(m.pumpUntil([&] { return writer.done.load() && sink.accepted == 1; }, 30s));
    CHECK(m.pumpUntil([&] { return m.ss->count(Counter::kClosed) == 1; }, 30s));
    CHECK(got.size() == kBytes);
    CHECK((got == data));
  }

  TEST_CASE("the authorization hook denies: 403, the app is never connected") {
    Mesh m;
    m.authorizer.verdict = Verdict::kDeny;
    App echo(ip(kAddrB), App::echo);
    UniqueFd app = m.open(makeSockaddr(ip(kAddrB), echo.port));
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
    CHECK(m.authorizer.source.sin_addr.s_addr == ip(kAddrA));
    CHECK(ntohs(m.authorizer.destination.sin_port) == echo.port);
    auto in = m.closed(*m.ss);
    REQUIRE(in.size() == 1);
    CHECK(why(in[0].reason) == "denied");
    auto out = m.closed(*m.cs);
    REQUIRE(out.size() == 1);
    CHECK(why(out[0].reason) == "refused");
    CHECK(out[0].reason_detail == "403");
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
  }

  TEST_CASE("a CONNECT to a port that is not the pod's is refused with 401") {
    Mesh m;
    App echo(ip(kAddrB), App::echo);
    // The pod's IP but a proxy port; then another address entirely.
    for (auto dst :
         {makeSockaddr(ip(kAddrB), 15006), makeSockaddr(ip(kAddrB), m.cs->ctx->hbone_port)}) {
      UniqueFd app = m.open(dst);
      std::vector<unsigned char> got;
      Worker reader([&] { recvAll(app.get(), got); });
      REQUIRE(m.pumpUntil([&] { return reader.done.load(); }, 10s));
      CHECK(got.empty());
    }
    CHECK(m.pumpUntil([&] { return m.cs->count(Counter::kClosed) == 2; }, 5s));
    CHECK(m.ss->count(Counter::kRefused) == 2);
    CHECK(m.authorizer.calls == 0);  // refused before the hook is asked
    for (auto& r : m.closed(*m.cs)) {
      CHECK(why(r.reason) == "refused");
      CHECK(r.reason_detail == "401");
    }
    for (auto& r : m.closed(*m.ss)) CHECK(why(r.reason) == "refused_not_this_pod");
    CHECK(echo.accepted == 0);
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
}
