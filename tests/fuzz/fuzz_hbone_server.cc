// The HBONE server side (hbone::Server on its own io_uring ring, as
// tests/ztunnel/hbone_test.cc runs it): per input, one TCP connection from
// 127.2.x.y accepted on pod B's (127.0.0.3) 15008 stand-in.
//   fuzz_hbone_raw: the input is the raw bytes the peer sends (mostly the TLS
//     record layer and handshake parser).
//   fuzz_hbone_h2 (SLUICE_FUZZ_HBONE_TLS): a real mutual-TLS handshake with a
//     client holding pod A's certificate first; the input is then the
//     decrypted HTTP/2 byte stream (preface, SETTINGS, HEADERS with a CONNECT
//     authority, DATA...). A CONNECT to 127.0.0.3:9 reaches an echo app in
//     pod B (the seeds' authority); other ports there are refused.
// The peer then half-closes and the app closes its connections; the input is
// done when the server holds nothing for the connection any more. A
// connection still held after 10 s is a hang, a socket still open after it a
// leak.
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"
#include "sluice/common/x509.h"
#include "support/test_ca.h"
#include "ztunnel/hbone/server.h"

using namespace sluice;
using namespace sluice::ztunnel;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz_hbone: setup failed: %s\n", what);
  std::abort();
}

// An in-process CA (tests/support/test_ca.h).
struct TestCa : test::TestCa {
  TestCa() : test::TestCa("fuzz CA", 86400L * 365) {}
};

constexpr const char* kIdA = "spiffe://cluster.local/ns/a/sa/client";
constexpr const char* kIdB = "spiffe://cluster.local/ns/b/sa/server";

class Credentials final : public CredentialSource {
 public:
  std::shared_ptr<const WorkloadCredential> b;
  std::shared_ptr<const WorkloadCredential> credential(const std::string& uri) override {
    return uri == kIdB ? b : nullptr;
  }
};

// A network namespace of its own (root only): its loopback, 127.0.0.3:9
// included, is this run's alone, so targets and -jobs run side by side.
void privateNetwork() {
  if (::unshare(CLONE_NEWNET) != 0) {
    std::fprintf(stderr,
                 "fuzz_hbone: no network namespace of its own (%s): on the host's loopback, "
                 "two runs at once collide on 127.0.0.3:9\n",
                 std::strerror(errno));
    return;
  }
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) die("SIOCGIFFLAGS lo");
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) die("SIOCSIFFLAGS lo up");
}

// Thousands of connections a second between the same two addresses: ports
// in TIME_WAIT must not run the ephemeral range dry.
void reuse(int fd) {
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
}

// Upstream sockets bound to the pod's own address (what its netns would give).
class Sockets final : public proxy::SocketFactory {
 public:
  Result<proxy::Upstream> upstream(const proxy::PodState& pod, uint32_t, int family,
                                   const IpAddr& bind, bool) override {
    UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return failErrno("socket");
    reuse(fd.get());
    SockAddr b(bind.empty() ? IpAddr::v4(pod.spec.ip4) : bind, 0);
    if (::bind(fd.get(), b.sa(), b.len()) != 0) return failErrno("bind");
    return proxy::Upstream{std::move(fd), {}};
  }
};

UniqueFd listenOn(uint32_t addr, uint16_t port = 0) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  reuse(fd.get());
  sockaddr_in a = makeSockaddr(addr, port);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::listen(fd.get(), 64) != 0) {
    std::fprintf(stderr, "fuzz_hbone: listen on 127.0.0.3:%u: %s\n", port, std::strerror(errno));
    die("listen");
  }
  return fd;
}

// The app in pod B: accepts, echoes what fits in its send buffer (the rest
// is dropped), closes on EOF or an error, and closes everything when told.
class EchoApp {
 public:
  explicit EchoApp(UniqueFd listener) : listener_(std::move(listener)) {
    ::fcntl(listener_.get(), F_SETFL, O_NONBLOCK);
  }

  void step() {
    while (UniqueFd c{::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)})
      conns_.push_back(std::move(c));
    char buf[16384];
    std::erase_if(conns_, [&buf](const UniqueFd& c) {
      for (;;) {
        ssize_t n = ::recv(c.get(), buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) return true;
        if (n < 0) return false;
        (void)!::send(c.get(), buf, static_cast<size_t>(n), MSG_NOSIGNAL);
      }
    });
  }
  void closeAll() { conns_.clear(); }

 private:
  UniqueFd listener_;
  std::vector<UniqueFd> conns_;
};

sockaddr_in localOf(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return a;
}

struct Rig {
  EngineConfig cfg;
  TestCa ca;
  Credentials creds;
  std::unique_ptr<tls::Contexts> tls;
  proxy::Records records{false, nullptr};
  Sockets sockets;
  std::unique_ptr<uring::Ring> ring;
  std::unique_ptr<proxy::WorkerContext> ctx;
  std::unique_ptr<hbone::Server> server;
  std::shared_ptr<proxy::PodState> pod_b = std::make_shared<proxy::PodState>();
  UniqueFd listener;             // pod B's 15008 stand-in
  std::unique_ptr<EchoApp> app;  // 127.0.0.3:9
  SSL_CTX* client_tls = nullptr;

  Rig() {
    signal(SIGPIPE, SIG_IGN);
    privateNetwork();  // before any socket and the ring (its io-wq threads inherit it)
    // A warning per refused tunnel would be most of the run's time;
    // FUZZ_LOG=debug shows the tunnels of one input when looking into it.
    const char* level = std::getenv("FUZZ_LOG");
    log::setup(level ? level : "error");
    cfg.trust_anchor_pem = ca.pem();
    cfg.connect_timeout = 200ms;
    cfg.access_log = false;
    auto t = tls::Contexts::create(ca.pem());
    if (!t) die("tls::Contexts::create");
    tls = std::move(*t);
    creds.b = ca.issue(kIdB);
    auto r = uring::Ring::create(256);
    if (!r) die("Ring::create");
    ring = std::move(*r);
    listener = listenOn(*parseIp4("127.0.0.3"));
    app = std::make_unique<EchoApp>(listenOn(*parseIp4("127.0.0.3"), 9));
    ctx = std::make_unique<proxy::WorkerContext>(
        proxy::WorkerContext{.config = cfg,
                             .ring = *ring,
                             .records = records,
                             .worker = 0,
                             .workers = 1,
                             .sockets = sockets,
                             .authorizer = nullptr,
                             .hbone_port = ntohs(localOf(listener.get()).sin_port),
                             .want_fine_tick = {}});
    server = std::make_unique<hbone::Server>(*ctx, creds, *tls);
    pod_b->spec.uid = "uid-b";
    pod_b->spec.name_namespace = "b/server";
    pod_b->spec.identity = kIdB;
    pod_b->spec.ip4 = *parseIp4("127.0.0.3");

    auto a = ca.issue(kIdA);
    client_tls = SSL_CTX_new(TLS_client_method());
    BIO* cb = BIO_new_mem_buf(a->chain_pem.data(), static_cast<int>(a->chain_pem.size()));
    X509* leaf = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
    SSL_CTX_use_certificate(client_tls, leaf);
    while (X509* extra = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr))
      SSL_CTX_add_extra_chain_cert(client_tls, extra);  // owned by the context
    X509_free(leaf);
    BIO_free(cb);
    BIO* kb = BIO_new_mem_buf(a->key_pem.data(), static_cast<int>(a->key_pem.size()));
    EVP_PKEY* key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
    SSL_CTX_use_PrivateKey(client_tls, key);
    EVP_PKEY_free(key);
    BIO_free(kb);
    static const unsigned char kH2[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(client_tls, kH2, sizeof(kH2));
  }

  void step() {
    auto now = Clock::now();
    app->step();
    (void)ring->run(0);
    server->tick(now);
    server->fineTick(now);
  }
};

Rig& rig() {
  static Rig* r = new Rig();  // never destroyed: libFuzzer exits without unwinding
  return *r;
}

// Connects from 127.0.0.2 and hands the accepted end to the server.
UniqueFd connectPeer(Rig& r) {
  // The peer half-closes first, so its side of each connection stays in
  // TIME_WAIT for a minute: thousands of inputs a second would run one
  // address's ephemeral ports dry. Each input comes from the next address of
  // 127.2.0.0/16, the port chosen by connect() (IP_BIND_ADDRESS_NO_PORT) so
  // that it avoids a 4-tuple still in TIME_WAIT; a refusal tries the next.
  static uint32_t next = 0;
  sockaddr_in to = localOf(r.listener.get());
  UniqueFd fd;
  for (int attempt = 0; !fd; ++attempt) {
    if (attempt == 16) {
      std::fprintf(stderr, "fuzz_hbone: connect: %s\n", std::strerror(errno));
      die("connect");
    }
    next = next % 65534 + 1;
    UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int one = 1;
    setsockopt(s.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    sockaddr_in from = makeSockaddr(htonl((127u << 24) | (2u << 16) | next), 0);
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&from), sizeof(from)) == 0 &&
        ::connect(s.get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0)
      fd = std::move(s);
  }
  sockaddr_in peer{};
  socklen_t len = sizeof(peer);
  UniqueFd accepted(
      ::accept4(r.listener.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
  if (!accepted) die("accept");
  r.server->accept(r.pod_b, std::move(accepted), peer);
  return fd;
}

// Reads and drops what the server sent, without blocking.
void drain(int fd) {
  char buf[16384];
  while (::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
  }
}

// Sockets only: libFuzzer's symbolizer holds pipes of its own.
size_t openSockets() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec).native().starts_with("socket:")) ++n;
  }
  return n;
}

// A connection's sockets must all be closed once the server is idle and its
// ring has submitted the closes it queued (Ring::close): after each input the
// count of open ones is compared with the first.
void checkSockets() {
  static size_t baseline = 0;
  size_t now = openSockets();
  if (baseline == 0) baseline = now;
  if (now > baseline) {
    std::fprintf(stderr, "fuzz_hbone: %zu sockets open, %zu after the first input\n", now,
                 baseline);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Rig& r = rig();
  UniqueFd peer = connectPeer(r);
  auto deadline = Clock::now() + 10s;
#ifdef SLUICE_FUZZ_HBONE_TLS
  SSL* ssl = SSL_new(r.client_tls);
  SSL_set_fd(ssl, peer.get());
  ::fcntl(peer.get(), F_SETFL, O_NONBLOCK);
  bool up = false;
  int e = SSL_ERROR_NONE;
  while (Clock::now() < deadline) {
    int rc = SSL_connect(ssl);
    if (rc == 1) {
      up = true;
      break;
    }
    e = SSL_get_error(ssl, rc);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) break;
    r.step();
  }
  if (!up) {
    char why[256] = "";
    ERR_error_string_n(ERR_get_error(), why, sizeof(why));
    std::fprintf(stderr, "fuzz_hbone: SSL_connect: SSL_get_error %d, errno %s, %s\n", e,
                 std::strerror(errno), why);
    die("the TLS handshake with the server did not complete");
  }
  size_t off = 0;
  while (off < size && Clock::now() < deadline) {
    int n = SSL_write(ssl, data + off, static_cast<int>(std::min<size_t>(size - off, 16384)));
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    int e = SSL_get_error(ssl, n);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) break;  // the server closed
    char buf[16384];
    while (SSL_read(ssl, buf, sizeof(buf)) > 0) {
    }
    r.step();
  }
  // A few rounds for the streams to reach the app and its echo to come back
  // before the peer closes: its close ends every stream still open.
  for (int i = 0; i < 32; ++i) {
    char buf[16384];
    while (SSL_read(ssl, buf, sizeof(buf)) > 0) {
    }
    r.step();
  }
  SSL_shutdown(ssl);
  SSL_free(ssl);
#else
  size_t off = 0;
  while (off < size) {
    ssize_t n = ::send(peer.get(), data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN) break;  // the server closed
    drain(peer.get());
    r.step();
  }
#endif
  ::shutdown(peer.get(), SHUT_WR);
  while (!r.server->idle()) {
    if (Clock::now() > deadline) {
      std::fprintf(stderr, "fuzz_hbone: the server still holds the connection after 10 s\n");
      std::abort();
    }
    drain(peer.get());
    r.step();
  }
  peer.reset();
  r.app->closeAll();     // what it had not read to its end yet
  (void)r.ring->run(0);  // submits the closes the last step queued
  checkSockets();
  return 0;
}
