// Root-only: the engine's side of an agent upgrade — a successor engine
// adopts a pod's listening sockets (Engine::exportListeners /
// adoptListeners), the predecessor stops accepting and goes away, and not
// one connection of a client connecting in a loop meanwhile fails; the
// predecessor's drain closes what outlives its deadline, with the reason;
// a relaying plaintext connection is frozen, exported and adopted with its
// buffered bytes and half-close, and no byte is lost or duplicated.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/engine_pod.h"

namespace {

// Answers each connection's byte and closes it; `hold` keeps them open.
class EchoServer {
 public:
  EchoServer(Pod& pod, uint16_t port, bool hold = false)
      : fd_(pod.listen(port, 1024)), hold_(hold) {
    thread_ = std::thread([this] {
      while (!stop_) {
        pollfd p{fd_.get(), POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!c) continue;
        char b;
        timeval tv{5, 0};
        setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (::recv(c.get(), &b, 1, 0) == 1) (void)!::send(c.get(), &b, 1, MSG_NOSIGNAL);
        if (hold_) held_.push_back(std::move(c));
      }
    });
  }
  ~EchoServer() {
    stop_ = true;
    thread_.join();
  }

 private:
  UniqueFd fd_;
  bool hold_;
  std::vector<UniqueFd> held_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A client connecting through the pod's outbound listener over and over,
// one byte there and back each time; counts what worked and what did not.
class Load {
 public:
  explicit Load(Pod& pod) {
    thread_ = std::thread([this, &pod] {
      while (!stop_) {
        (oneConnection(pod) ? ok : failed)++;
      }
    });
  }
  ~Load() { finish(); }
  void finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::atomic<int> ok{0}, failed{0};
  std::mutex mu;
  std::string last_error;

 private:
  bool oneConnection(Pod& pod) {
    auto s = socketInNetns(pod.ns.fd(), AF_INET, SOCK_STREAM, 0);
    if (!s) return error("socket");
    timeval tv{5, 0};
    setsockopt(s->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    auto sa = makeSockaddr(htonl(INADDR_LOOPBACK), SLUICE_OUTBOUND_PORT);
    if (::connect(s->get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0)
      return error("connect");
    char b = 'x';
    if (::send(s->get(), &b, 1, MSG_NOSIGNAL) != 1) return error("send");
    char r = 0;
    if (::recv(s->get(), &r, 1, 0) != 1 || r != 'x') return error("recv");
    return true;
  }
  bool error(const char* what) {
    std::lock_guard lk(mu);
    last_error = std::string(what) + ": " + std::strerror(errno);
    return false;
  }
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct Successor {
  FakeResolver resolver;
  std::unique_ptr<ztunnel::Engine> engine;
  // Adopts what `from` exports, then enrolls the pod (as a restarted agent's
  // restore() does).
  Successor(Pod& pod, ztunnel::Engine& from, const sockaddr_in& dst,
            ztunnel::EngineHooks hooks = {}) {
    resolver.dst = dst;
    ztunnel::EngineConfig cfg;
    cfg.workers = 2;
    auto e = ztunnel::createEngine(cfg, resolver, nullptr, nullptr, hooks);
    REQUIRE(e.has_value());
    engine = std::move(*e);
    auto exported = from.exportListeners();
    CHECK(exported.size() == 4);  // outbound + inbound, one per worker
    engine->adoptListeners(std::move(exported));
    auto r = engine->addPod(pod.spec());
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
    engine->adoptListeners({});
  }
};

// The listening sockets on `port` in the pod: the same ones all along, so
// their number never changes.
void checkListening(Pod& pod, uint16_t port, int n) {
  pod.ns.sh("test \"$(ss -Hltn 'sport = :" + std::to_string(port) + "' | wc -l)\" -eq " +
            std::to_string(n));
}

// Remembers closed records.
class Closed final : public ztunnel::ConnectionObserver {
 public:
  void opened(unsigned, const ztunnel::ConnectionRecord&) override {}
  void transferred(unsigned, const ztunnel::ConnectionRecord&, uint64_t, uint64_t) override {}
  void closed(unsigned, const ztunnel::ConnectionRecord& r) override {
    std::lock_guard lk(mu);
    records.push_back(r);
  }
  std::mutex mu;
  std::vector<ztunnel::ConnectionRecord> records;
};

// What the engine registers for inbound steering: each listener's address
// and socket (its inode), or a refusal when `refuse` is set.
class Steering final : public ztunnel::InboundSteering {
 public:
  Result<void> inboundListener(const SockAddr& addr, int fd) override {
    if (refuse) return fail("the steering map is full");
    struct stat st {};
    REQUIRE(::fstat(fd, &st) == 0);
    std::lock_guard lk(mu);
    seen.emplace(addr.str(), st.st_ino);
    return {};
  }
  bool refuse = false;
  std::mutex mu;
  std::set<std::pair<std::string, ino_t>> seen;
};

// The byte at offset i of the stream the test sends.
char patternAt(uint64_t i) { return static_cast<char>(i % 251); }

std::string recvSome(int fd, size_t n) {
  std::string out;
  char buf[4096];
  while (out.size() < n) {
    ssize_t k = ::recv(fd, buf, std::min(sizeof(buf), n - out.size()), 0);
    if (k <= 0) break;
    out.append(buf, static_cast<size_t>(k));
  }
  return out;
}

}  // namespace

TEST_SUITE("engine upgrade") {
  TEST_CASE("inbound listeners are registered for steering - a successor registers the same ones") {
    Pod pod(true);
    Steering first, second;
    Running old(pod, {}, ztunnel::EngineHooks{.steering = &first});
    // One IPv4 and one IPv6 inbound listener per worker, nothing else.
    REQUIRE(first.seen.size() == 4);
    size_t v4 = 0;
    for (const auto& [addr, ino] : first.seen) {
      CHECK((addr == "10.77.3.5:15006" || addr == std::string("[") + kPodIp6 + "]:15006"));
      v4 += addr == "10.77.3.5:15006";
    }
    CHECK(v4 == 2);
    auto exported = old.engine->exportListeners();
    ztunnel::EngineConfig cfg;
    cfg.workers = 2;
    auto r = ztunnel::createEngine(cfg, old.resolver, nullptr, nullptr,
                                   ztunnel::EngineHooks{.steering = &second});
    REQUIRE(r.has_value());
    auto successor = std::move(*r);
    successor->adoptListeners(std::move(exported));
    REQUIRE(successor->addPod(pod.spec()).has_value());
    CHECK(second.seen == first.seen);  // the very same sockets
    successor->stop();
    old.engine->stop();
  }

  TEST_CASE("a listener the steering refuses fails the pod's addPod, leaving nothing behind") {
    Pod pod;
    Steering refusing;
    refusing.refuse = true;
    FakeResolver resolver;
    ztunnel::EngineConfig cfg;
    cfg.workers = 2;
    auto e = ztunnel::createEngine(cfg, resolver, nullptr, nullptr,
                                   ztunnel::EngineHooks{.steering = &refusing});
    REQUIRE(e.has_value());
    auto r = (*e)->addPod(pod.spec());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().describe().find("the steering map is full") != std::string::npos);
    CHECK((*e)->listeners().empty());
    checkListening(pod, SLUICE_INBOUND_PORT, 0);
    (*e)->stop();
  }

  TEST_CASE("two handovers in a row under load: the same sockets, not one connection fails") {
    Pod pod;
    const auto dst = makeSockaddr(*parseIp4("10.77.3.5"), 9000);
    EchoServer echo(pod, 9000);
    auto first = std::make_unique<Running>(pod);
    first->resolver.dst = dst;
    checkListening(pod, SLUICE_OUTBOUND_PORT, 2);
    Load load(pod);
    REQUIRE(eventually([&] { return load.ok.load() > 50; }));

    auto second = std::make_unique<Successor>(pod, *first->engine, dst);
    CHECK(second->engine->listeners().size() == 2);
    checkListening(pod, SLUICE_OUTBOUND_PORT, 2);  // adopted, none made
    first->engine->stopAccepting();
    auto accepted = second->engine->stats()[ztunnel::Counter::kAccepted];
    int before = load.ok;
    REQUIRE(eventually([&] { return load.ok.load() > before + 50; }));
    CHECK(second->engine->stats()[ztunnel::Counter::kAccepted] > accepted);
    // The old process drains what it accepted (as the agent does), then exits:
    // its sockets are the successor's.
    CHECK(first->engine->drain(10s) == 0);
    first.reset();
    before = load.ok;
    REQUIRE(eventually([&] { return load.ok.load() > before + 50; }));

    // The successor hands over in turn.
    auto third = std::make_unique<Successor>(pod, *second->engine, dst);
    second->engine->stopAccepting();
    CHECK(second->engine->drain(10s) == 0);
    second.reset();
    before = load.ok;
    REQUIRE(eventually([&] { return load.ok.load() > before + 50; }));
    checkListening(pod, SLUICE_OUTBOUND_PORT, 2);
    load.finish();
    std::lock_guard lk(load.mu);
    CHECK_MESSAGE(load.failed.load() == 0, load.last_error);
  }

  TEST_CASE("drain: what ends in time ends, what outlives the deadline is closed with the reason") {
    Pod pod;
    EchoServer held(pod, 9001, /*hold=*/true);
    Closed closed;
    Running run(pod, {}, {.observer = &closed});
    run.resolver.dst = makeSockaddr(*parseIp4("10.77.3.5"), 9001);
    UniqueFd c = pod.connectProxy();
    char b = 'y';
    REQUIRE(::send(c.get(), &b, 1, MSG_NOSIGNAL) == 1);
    REQUIRE(::recv(c.get(), &b, 1, 0) == 1);
    REQUIRE(run.engine->stats()[ztunnel::Counter::kActive] == 1);
    run.engine->stopAccepting();
    CHECK(run.engine->drain(1s) == 1);
    CHECK(::recv(c.get(), &b, 1, 0) <= 0);  // closed under the client
    std::lock_guard lk(closed.mu);
    REQUIRE(closed.records.size() == 1);
    CHECK(std::string(toString(closed.records[0].reason)) == "proxy_shutdown");
    CHECK(closed.records[0].reasonText().find("drain deadline of 1 s passed") != std::string::npos);
    CHECK(run.engine->drain(1s) == 0);  // nothing open
  }

  TEST_CASE("a relaying plaintext connection moves to the successor: no byte lost, FIN kept") {
    Pod pod;
    const auto dst = makeSockaddr(*parseIp4("10.77.3.5"), 9002);
    UniqueFd server_listen = pod.listen(9002);
    Closed closed_first;
    auto first = std::make_unique<Running>(pod, ztunnel::EngineConfig{},
                                           ztunnel::EngineHooks{.observer = &closed_first});
    first->resolver.dst = dst;
    UniqueFd c = pod.connectProxy();
    pollfd p{server_listen.get(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);
    UniqueFd s(::accept4(server_listen.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(s);
    timeval tv{10, 0};
    setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    REQUIRE(::send(c.get(), "ping", 4, MSG_NOSIGNAL) == 4);
    CHECK(recvSome(s.get(), 4) == "ping");
    REQUIRE(::send(s.get(), "pong", 4, MSG_NOSIGNAL) == 4);
    CHECK(recvSome(c.get(), 4) == "pong");

    // The client writes until every buffer on the way is full (the server
    // reads nothing), so the relay holds bytes it has read but not written;
    // then it half-closes.
    int flags = fcntl(c.get(), F_GETFL);
    fcntl(c.get(), F_SETFL, flags | O_NONBLOCK);
    uint64_t sent = 0;
    std::string chunk(64 * 1024, '\0');
    for (int idle = 0; idle < 20;) {
      for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = patternAt(sent + i);
      ssize_t n = ::send(c.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<uint64_t>(n);
        idle = 0;
      } else {
        REQUIRE(errno == EAGAIN);
        ++idle;  // the relay may still be reading: a few tries 10 ms apart
        std::this_thread::sleep_for(10ms);
      }
    }
    fcntl(c.get(), F_SETFL, flags);
    REQUIRE(::shutdown(c.get(), SHUT_WR) == 0);

    auto second = std::make_unique<Successor>(pod, *first->engine, dst);
    first->engine->stopAccepting();
    auto frozen = first->engine->exportConnections();
    REQUIRE(frozen.size() == 1);
    CHECK(frozen[0].to_upstream.size() > 0);  // read from the client, not yet written
    CHECK(frozen[0].to_client.empty());
    CHECK(frozen[0].record.pod == "test/pod");
    CHECK(frozen[0].record.bytes_received == 4);
    CHECK_FALSE(frozen[0].upstream_shut);
    CHECK_FALSE(frozen[0].client_shut);
    {
      std::lock_guard lk(closed_first.mu);
      REQUIRE(closed_first.records.size() == 1);
      CHECK(std::string(toString(closed_first.records[0].reason)) == "handed_over");
    }
    CHECK(first->engine->stats()[ztunnel::Counter::kActive] == 0);
    CHECK(second->engine->adoptConnections(std::move(frozen)) == 1);
    CHECK(first->engine->drain(1s) == 0);  // nothing of it left to close
    first.reset();                         // its process goes away: the connection does not

    // Everything the client sent arrives once and in order, then its FIN.
    std::string got = recvSome(s.get(), 4 + sent + 1);
    REQUIRE(got.size() == sent);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < sent; ++i)
      if (got[i] != patternAt(i)) ++bad;
    CHECK(bad == 0);
    char b;
    CHECK(::recv(s.get(), &b, 1, 0) == 0);
    // The other direction still flows, and its FIN too.
    REQUIRE(::send(s.get(), "after the upgrade", 17, MSG_NOSIGNAL) == 17);
    CHECK(recvSome(c.get(), 17) == "after the upgrade");
    REQUIRE(::shutdown(s.get(), SHUT_WR) == 0);
    CHECK(::recv(c.get(), &b, 1, 0) == 0);

    REQUIRE(eventually([&] { return second->engine->stats()[ztunnel::Counter::kActive] == 0; }));
    auto records = second->engine->connections();
    REQUIRE(records.size() == 1);
    CHECK(records[0].adopted);
    CHECK(std::string(toString(records[0].reason)) == "eof");
    CHECK(records[0].bytes_sent == 4 + sent);
    CHECK(records[0].bytes_received == 4 + 17);
  }

  TEST_CASE("a stopped engine refuses handed-over connections and answers control calls") {
    Pod pod;
    auto running = std::make_unique<Running>(pod);
    running->engine->stop();
    // A frozen connection of an enrolled pod, as a predecessor hands it over:
    // the stopped engine has no worker to take it.
    int a[2], b[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
    UniqueFd peer_a(a[1]), peer_b(b[1]);
    std::vector<ztunnel::ConnectionFd> handed(1);
    handed[0].pod_uid = pod.spec().uid;
    handed[0].client = UniqueFd(a[0]);
    handed[0].upstream = UniqueFd(b[0]);
    CHECK(running->engine->adoptConnections(std::move(handed)) == 0);
    // The control plane's calls return (no worker to wait for).
    CHECK(running->engine->resetConnections(1, "") == 0);
    running->engine->reauthorize();
    running->engine->countSpliced();
    CHECK(running->engine->exportListeners().empty());
    CHECK_FALSE(running->engine->addPod(pod.spec()).has_value());
  }
}
