#include "ztunnel/proxy/engine_impl.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <random>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/log.h"
#include "sluice/common/x509.h"
#include "ztunnel/inpod/inpod.h"
#include "ztunnel/proxy/hbone.h"

namespace sluice::ztunnel::proxy {

namespace {

auto logger() { return log::get("ztunnel"); }

int64_t nowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

enum OpKind : int {
  kRecvUp,
  kRecvDown,
  kSendUp,
  kSendDown,
  kShutUp,
  kShutDown,
  kConnect,
  kTimeout,
  kOpCount
};
enum Dir : int { kUp = 0, kDown = 1 };  // up: client -> upstream; down: upstream -> client

const char* kindName(ListenerKind k) {
  switch (k) {
    case ListenerKind::kOutbound:
      return "outbound";
    case ListenerKind::kInbound:
      return "inbound";
    case ListenerKind::kHbone:
      return "hbone";
  }
  return "?";
}

}  // namespace

struct Listener final : uring::Operation {
  Worker* worker = nullptr;
  UniqueFd fd;
  std::shared_ptr<PodState> pod;
  ListenerKind kind = ListenerKind::kOutbound;
  bool armed = false;
  bool closing = false;
  // Accept failed for lack of file descriptors: re-armed at retry_at (by the
  // fine tick), the delay doubling while it keeps failing.
  std::chrono::steady_clock::time_point retry_at{};
  std::chrono::milliseconds backoff{0};
  void complete(const io_uring_cqe& cqe) override { worker->onAccept(*this, cqe); }
};

struct ConnOp final : uring::Operation {
  Conn* conn = nullptr;
  int kind = 0;
  void complete(const io_uring_cqe& cqe) override;
};

struct Direction {
  std::unique_ptr<char[]> buf;
  size_t len = 0;
  size_t off = 0;
  bool eof = false;        // the source returned EOF
  bool shut_sent = false;  // shutdown(destination, SHUT_WR) submitted
  bool shut_done = false;
  bool recv_inflight = false;
  bool send_inflight = false;
};

struct Conn {
  Worker* worker = nullptr;
  std::shared_ptr<PodState> pod;
  std::shared_ptr<PodState> target;  // local_handoff: the destination pod
  std::shared_ptr<Record> rec;
  UniqueFd client;
  UniqueFd upstream;
  sockaddr_in dst{};
  std::unique_ptr<ServiceRoute> route;  // connected to a Service VIP
  __kernel_timespec connect_timeout{};
  Direction dir[2];
  ConnOp ops[kOpCount];
  int inflight = 0;
  bool connected = false;
  bool closing = false;
  std::string reason;
};

void ConnOp::complete(const io_uring_cqe& cqe) { conn->worker->onConn(*conn, kind, cqe); }

void Worker::WakeOp::complete(const io_uring_cqe&) {
  w->drainCommands();
  if (!w->stopping_) w->armWake();
}

// ---------------------------------------------------------------- Registry

void Registry::add(const std::shared_ptr<Record>& r) {
  std::lock_guard lk(mu_);
  r->open = true;
  open_[r->id] = r;
}

ConnectionInfo Registry::toInfo(const Record& r, const char* state) {
  ConnectionInfo c;
  c.id = r.id;
  c.direction = r.direction;
  c.destination_service = r.service;
  c.pod = r.pod;
  c.source = r.source;
  c.destination = r.destination;
  c.path = r.path;
  c.source_principal = r.source_principal;
  c.destination_principal = r.destination_principal;
  c.mutual_tls = r.mutual_tls;
  c.bytes_sent = r.sent.load(std::memory_order_relaxed);
  c.bytes_received = r.received.load(std::memory_order_relaxed);
  c.start_unix_ms = r.start_unix_ms;
  c.duration_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - r.start)
                      .count();
  c.state = state;
  return c;
}

void Registry::close(const std::shared_ptr<Record>& r, const std::string& reason) {
  std::lock_guard lk(mu_);
  r->open = false;
  open_.erase(r->id);
  ConnectionInfo c = toInfo(*r, "closed");
  c.reason = reason;
  closed_.push_back(std::move(c));
  while (closed_.size() > kClosedHistory) closed_.pop_front();
}

std::vector<ConnectionInfo> Registry::snapshot() const {
  std::lock_guard lk(mu_);
  std::vector<ConnectionInfo> out(closed_.begin(), closed_.end());
  for (const auto& [id, r] : open_) out.push_back(toInfo(*r, "open"));
  return out;
}

// ---------------------------------------------------------------- Worker

namespace {
Balancer::Config balancerConfig(const EngineConfig& c) {
  Balancer::Config b;
  b.eject_after = std::max(1u, c.lb_eject_after);
  b.eject_for = c.lb_eject_for;
  return b;
}
}  // namespace

Worker::Worker(EngineImpl& engine, unsigned index)
    : balancer_(balancerConfig(engine.config()), std::random_device{}() ^ index),
      engine_(engine),
      index_(index) {}

Worker::~Worker() { stop(); }

Result<void> Worker::start() {
  wake_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC));
  if (!wake_fd_) return failErrno("eventfd failed");
  wake_op_.w = this;
  std::promise<Result<void>> ready;
  auto ready_future = ready.get_future();
  thread_ = std::jthread([this, &ready] {
    // SINGLE_ISSUER binds the ring to the thread that creates it.
    auto ring = uring::Ring::create(
        1024);  // CQ is twice this; enough for ~500 active connections per worker per batch
    if (!ring) {
      ready.set_value(tl::unexpected(ring.error()));
      return;
    }
    ring_ = std::move(*ring);
    if (engine_.hbone()) hbone_ = std::make_unique<HboneWorker>(*this, engine_, *ring_);
    armWake();
    ready.set_value({});
    loop();
  });
  auto r = ready_future.get();
  if (!r && thread_.joinable()) thread_.join();
  return r;
}

void Worker::stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  uint64_t one = 1;
  (void)!::write(wake_fd_.get(), &one, sizeof(one));
  thread_.join();
}

void Worker::post(std::function<void()> fn) {
  {
    std::lock_guard lk(commands_mu_);
    commands_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  (void)!::write(wake_fd_.get(), &one, sizeof(one));
}

void Worker::armWake() {
  io_uring_sqe* s = ring_->sqe(&wake_op_);
  io_uring_prep_read(s, wake_fd_.get(), &wake_op_.value, sizeof(wake_op_.value), 0);
}

void Worker::drainCommands() {
  std::vector<std::function<void()>> cmds;
  {
    std::lock_guard lk(commands_mu_);
    cmds.swap(commands_);
  }
  for (auto& c : cmds) c();
}

void Worker::loop() {
  while (!stopping_) {
    ring_->run(1000);
    auto now = std::chrono::steady_clock::now();
    if (now - last_tick_ >= std::chrono::seconds(1)) {
      last_tick_ = now;
      if (hbone_) hbone_->tick();
      balancer_.prune(now);
      // Connection buffers come and go in bursts; hand freed pages back so
      // the node's RSS follows the load instead of its peak.
      if (index_ == 0 && ++ticks_ % 5 == 0) malloc_trim(0);
    }
  }
  // Orderly teardown: wake every pending operation, let them complete (the
  // kernel must not write into buffers we free), then drop everything.
  for (auto& l : listeners_) ::shutdown(l->fd.get(), SHUT_RDWR);
  for (auto& [p, c] : conns_) closeConn(*c, true, "proxy_shutdown");
  if (hbone_) hbone_->shutdown();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while ((!conns_.empty() || (hbone_ && !hbone_->idle())) &&
         std::chrono::steady_clock::now() < deadline)
    ring_->run(50);
  drainCommands();
  hbone_.reset();
  ring_.reset();
  conns_.clear();
  listeners_.clear();
}

void Worker::addListener(UniqueFd fd, std::shared_ptr<PodState> pod, ListenerKind kind) {
  auto l = std::make_unique<Listener>();
  l->worker = this;
  l->fd = std::move(fd);
  l->pod = std::move(pod);
  l->kind = kind;
  armAccept(*l);
  listeners_.push_back(std::move(l));
}

void Worker::armAccept(Listener& l) {
  io_uring_sqe* s = ring_->sqe(&l);
  // Multishot: one SQE keeps accepting until an error or cancellation.
  io_uring_prep_multishot_accept(s, l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC);
  l.armed = true;
}

void Worker::removePod(const std::string& uid) {
  for (auto& l : listeners_) {
    if (l->pod->spec.uid != uid || l->closing) continue;
    l->closing = true;
    // shutdown() on a listening socket fails the pending accept, which ends
    // the multishot request; the listener is freed on that completion.
    ::shutdown(l->fd.get(), SHUT_RDWR);
  }
  // A listener backing off has no accept in flight: nothing will complete.
  listeners_.remove_if([](const std::unique_ptr<Listener>& l) { return l->closing && !l->armed; });
  for (auto& [p, c] : conns_)
    if (c->pod->spec.uid == uid || (c->target && c->target->spec.uid == uid))
      closeConn(*c, true, "pod_removed");
  if (hbone_) hbone_->removePod(uid);
}

void Worker::onAccept(Listener& l, const io_uring_cqe& cqe) {
  bool more = cqe.flags & IORING_CQE_F_MORE;
  if (cqe.res >= 0) {
    l.backoff = std::chrono::milliseconds(0);
    if (l.closing)
      ::close(cqe.res);
    else
      accepted(l, cqe.res);
  } else if (cqe.res != -ECANCELED && cqe.res != -EINVAL && !l.closing) {
    engine_.counters().accept_errors++;
    int err = -cqe.res;
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
      // Out of descriptors or memory: the connection stays in the backlog, so
      // an immediate re-arm fails again at once (a busy loop). Free what can
      // be freed (a pending handshake) and come back later.
      l.backoff =
          std::clamp(l.backoff * 2, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
      l.retry_at = std::chrono::steady_clock::now() + l.backoff;
      bool evicted = hbone_ && hbone_->evictOldestPending("accept failed: out of file descriptors");
      SLUICE_LOG_LIMITED(accept_log_, logger(), spdlog::level::warn,
                         "accept on {} listener of {} failed: {}; {}retrying in {} ms (raise the "
                         "agent's RLIMIT_NOFILE if this is legitimate load)",
                         kindName(l.kind), l.pod->spec.name_namespace, std::strerror(err),
                         evicted ? "closed the oldest pending handshake, " : "", l.backoff.count());
    } else {
      SLUICE_LOG_LIMITED(accept_log_, logger(), spdlog::level::warn,
                         "accept on {} listener of {} failed: {}", kindName(l.kind),
                         l.pod->spec.name_namespace, std::strerror(err));
    }
  }
  if (more) return;
  l.armed = false;
  if (l.closing || stopping_) {
    listeners_.remove_if([&](const std::unique_ptr<Listener>& x) { return x.get() == &l; });
    return;
  }
  if (l.retry_at > std::chrono::steady_clock::now()) {
    wantFineTick();
    return;
  }
  armAccept(l);
}

void Worker::fineTick() {
  if (stopping_) return;
  auto now = std::chrono::steady_clock::now();
  bool again = false;
  for (auto& l : listeners_) {
    if (l->armed || l->closing || l->retry_at == std::chrono::steady_clock::time_point{}) continue;
    if (now >= l->retry_at) {
      l->retry_at = {};
      armAccept(*l);
    } else {
      again = true;
    }
  }
  if (hbone_ && hbone_->fineTick(now)) again = true;
  if (again) wantFineTick();
}

void Worker::accepted(Listener& l, int fd) {
  UniqueFd client(fd);
  auto& stats = engine_.counters();
  // A 15008 connection is a tunnel; its streams count as connections.
  (l.kind == ListenerKind::kHbone ? stats.hbone_accepted : stats.accepted)++;
  PodState& pod = *l.pod;
  if (pod.removed) return;
  if (l.kind != ListenerKind::kHbone &&
      pod.connections.load() >= engine_.config().max_connections_per_pod) {
    stats.limit_rejected++;
    setLinger0(client.get());
    SLUICE_LOG_LIMITED(limit_log_, logger(), spdlog::level::warn,
                       "pod {}: connection limit {} reached; refusing a connection",
                       pod.spec.name_namespace, engine_.config().max_connections_per_pod);
    return;
  }
  sockaddr_in peer{}, local{};
  socklen_t len = sizeof(peer);
  getpeername(client.get(), reinterpret_cast<sockaddr*>(&peer), &len);
  len = sizeof(local);
  getsockname(client.get(), reinterpret_cast<sockaddr*>(&local), &len);
  if (l.kind == ListenerKind::kHbone) {
    hbone_->inbound(l.pod, std::move(client), peer);
    return;
  }
  int one = 1;
  setsockopt(client.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

  if (l.kind == ListenerKind::kOutbound) {
    auto orig = engine_.resolver().originalDst(pod.spec.netns_cookie, peer, local);
    if (!orig) {
      stats.no_original_dst++;
      logger()->debug("pod {}: no original destination for {}; closing", pod.spec.name_namespace,
                      formatEndpoint(peer));
      return;
    }
    // The app's socket is bound to loopback (it connected to 127.0.0.1:15001
    // after the rewrite); records and Forwarded show the pod's address.
    peer.sin_addr.s_addr = pod.spec.ip4;
    routeOutbound(l.pod, std::move(client), peer, *orig, nullptr);
    return;
  }
  // Inbound plaintext: tc bpf_sk_assign keeps the original destination as
  // the local address.
  sockaddr_in dst = local;
  if (ntohs(dst.sin_port) == SLUICE_INBOUND_PORT || ntohs(dst.sin_port) == SLUICE_HBONE_PORT) {
    stats.direct_refused++;
    setLinger0(client.get());
    SLUICE_LOG_LIMITED(refused_log_, logger(), spdlog::level::warn,
                       "pod {}: refused a direct connection from {} to the proxy port {}",
                       pod.spec.name_namespace, formatEndpoint(peer), formatEndpoint(dst));
    return;
  }
  auto upstream =
      inpod::upstreamSocket(pod.netns.get(), SLUICE_MARK_INBOUND_APP, peer.sin_addr.s_addr);
  if (!upstream) {
    stats.connect_failures++;
    SLUICE_LOG_LIMITED(socket_log_, logger(), spdlog::level::err,
                       "pod {}: cannot create upstream socket: {}", pod.spec.name_namespace,
                       upstream.error().describe());
    return;
  }
  startConn(l.pod, std::move(client), std::move(*upstream), peer, dst, true, nullptr, nullptr);
}

void Worker::routeOutbound(const std::shared_ptr<PodState>& pod_ptr, UniqueFd client,
                           const sockaddr_in& peer, sockaddr_in dst,
                           std::unique_ptr<ServiceRoute> route) {
  PodState& pod = *pod_ptr;
  auto& stats = engine_.counters();
  if (pod.removed || stopping_) {
    setLinger0(client.get());
    return;
  }
  MeshDirectory* directory = engine_.directory();
  if (directory && !directory->hasView()) {
    // No view yet (an agent just started): a meshed destination would look
    // unknown and go out in plaintext. Fail closed.
    stats.no_view++;
    SLUICE_LOG_LIMITED(no_view_log_, logger(), spdlog::level::warn,
                       "pod {}: no view of the mesh yet; refusing the connection to {}",
                       pod.spec.name_namespace, formatEndpoint(dst));
    setLinger0(client.get());
    return;
  }
  if (!route && directory) {
    if (auto svc = directory->service(dst.sin_addr.s_addr, dst.sin_port)) {
      route = std::make_unique<ServiceRoute>();
      route->service = std::move(svc);
      route->vip = dst;
      route->peer = peer;
    }
  }
  if (route) {
    auto now = std::chrono::steady_clock::now();
    auto ep = balancer_.pick(*route->service, route->tried, now);
    if (!ep) {
      stats.lb_no_endpoint++;
      logger()->warn("pod {}: no endpoint of service {} left for {} (tried {}); resetting",
                     pod.spec.name_namespace, route->service->name, formatEndpoint(route->vip),
                     route->tried.size());
      setLinger0(client.get());
      return;
    }
    stats.lb_picks++;
    route->tried.push_back(*ep);
    route->endpoint = *ep;
    route->attempt_start = now;
    route->reported = false;
    dst = *ep;
  }

  std::shared_ptr<PodState> handoff;
  Result<UniqueFd> upstream = fail("unset");
  auto local_pods = engine_.localPods();
  auto target = local_pods->find(dst.sin_addr.s_addr);
  std::optional<MeshWorkload> remote;
  if (target != local_pods->end() && !target->second->removed) {
    // Meshed destination on this node: hand the connection straight to the
    // destination pod, as its inbound side would (client pod IP as source,
    // inside its netns); the bytes never leave the kernel and take one
    // proxy hop instead of two.
    handoff = target->second;
    uint16_t port = ntohs(dst.sin_port);
    if (port == SLUICE_INBOUND_PORT || port == SLUICE_HBONE_PORT || port == SLUICE_OUTBOUND_PORT) {
      stats.direct_refused++;
      setLinger0(client.get());
      SLUICE_LOG_LIMITED(refused_log_, logger(), spdlog::level::warn,
                         "pod {}: refused a connection to the proxy port {} of pod {}",
                         pod.spec.name_namespace, formatEndpoint(dst),
                         handoff->spec.name_namespace);
      if (route) lbClosed(*route);
      return;
    }
    upstream = inpod::upstreamSocket(handoff->netns.get(), SLUICE_MARK_INBOUND_APP, pod.spec.ip4);
  } else if (hbone_ && directory && (remote = directory->meshed(dst.sin_addr.s_addr))) {
    // Meshed destination on another node: mutual TLS through a tunnel.
    hbone_->outbound(pod_ptr, std::move(client), peer, dst, *remote, std::move(route));
    return;
  } else {
    upstream = inpod::upstreamSocket(pod.netns.get(), SLUICE_MARK_MINE, 0);
  }
  if (!upstream) {
    stats.connect_failures++;
    SLUICE_LOG_LIMITED(socket_log_, logger(), spdlog::level::err,
                       "pod {}: cannot create upstream socket: {}", pod.spec.name_namespace,
                       upstream.error().describe());
    if (route) lbClosed(*route);
    return;
  }
  startConn(pod_ptr, std::move(client), std::move(*upstream), peer, dst, false, handoff,
            std::move(route));
}

void Worker::startConn(const std::shared_ptr<PodState>& pod_ptr, UniqueFd client, UniqueFd upstream,
                       const sockaddr_in& peer, const sockaddr_in& dst, bool inbound,
                       std::shared_ptr<PodState> handoff, std::unique_ptr<ServiceRoute> route) {
  PodState& pod = *pod_ptr;
  auto& stats = engine_.counters();
  auto c = std::make_unique<Conn>();
  c->worker = this;
  c->pod = pod_ptr;
  c->client = std::move(client);
  c->upstream = std::move(upstream);
  c->dst = dst;
  c->target = handoff;
  for (int k = 0; k < kOpCount; ++k) {
    c->ops[k].conn = c.get();
    c->ops[k].kind = k;
  }
  c->rec = engine_.openRecord(inbound ? "inbound" : "outbound", pod.spec.name_namespace,
                              formatEndpoint(peer), formatEndpoint(dst),
                              inbound   ? "inbound"
                              : handoff ? "local_handoff"
                                        : "passthrough");
  if (route) c->rec->service = route->service->name;
  c->route = std::move(route);
  if (handoff) {
    // Same node: the source identity is known from the listener's netns;
    // no TLS because the bytes never leave the kernel.
    c->rec->source_principal = pod.identity;
    c->rec->destination_principal = handoff->identity;
  }
  pod.connections++;
  stats.active++;

  auto ms = engine_.config().connect_timeout.count();
  c->connect_timeout.tv_sec = ms / 1000;
  c->connect_timeout.tv_nsec = (ms % 1000) * 1000000;
  io_uring_sqe* s = ring_->sqe(&c->ops[kConnect]);
  io_uring_prep_connect(s, c->upstream.get(), reinterpret_cast<sockaddr*>(&c->dst), sizeof(c->dst));
  s->flags |= IOSQE_IO_LINK;  // the next SQE (timeout) bounds this connect
  io_uring_sqe* t = ring_->sqe(&c->ops[kTimeout]);
  io_uring_prep_link_timeout(t, &c->connect_timeout, 0);
  c->inflight += 2;
  Conn* raw = c.get();
  conns_.emplace(raw, std::move(c));
}

void Worker::lbResult(ServiceRoute& route, bool ok) {
  if (route.reported) return;
  route.reported = true;
  auto now = std::chrono::steady_clock::now();
  auto latency = std::chrono::duration_cast<std::chrono::microseconds>(now - route.attempt_start);
  if (balancer_.result(route.endpoint, ok, latency, now)) {
    engine_.counters().lb_ejections++;
    logger()->warn("service {}: endpoint {} ejected after {} consecutive connect failures",
                   route.service->name, formatEndpoint(route.endpoint),
                   engine_.config().lb_eject_after);
  }
}

bool Worker::retryService(const std::shared_ptr<PodState>& pod, UniqueFd& client,
                          std::unique_ptr<ServiceRoute>& route, const std::string& why) {
  if (!route || !client) return false;
  lbResult(*route, false);
  if (route->tried.size() >= std::max(1u, engine_.config().lb_max_attempts) ||
      route->tried.size() >= route->service->endpoints.size()) {
    logger()->warn("service {}: connect to {} failed ({}); no attempts left", route->service->name,
                   formatEndpoint(route->endpoint), why);
    return false;
  }
  balancer_.closed(route->endpoint);
  engine_.counters().lb_retries++;
  logger()->info("service {}: connect to {} failed ({}); retrying on another endpoint",
                 route->service->name, formatEndpoint(route->endpoint), why);
  // Not from inside the failing connection's completion: run it next.
  auto shared_client = std::make_shared<UniqueFd>(std::move(client));
  auto shared_route = std::make_shared<std::unique_ptr<ServiceRoute>>(std::move(route));
  post([this, pod, shared_client, shared_route] {
    sockaddr_in peer = (*shared_route)->peer, vip = (*shared_route)->vip;
    routeOutbound(pod, std::move(*shared_client), peer, vip, std::move(*shared_route));
  });
  return true;
}

void Worker::onConn(Conn& c, int kind, const io_uring_cqe& cqe) {
  c.inflight--;
  int res = cqe.res;
  switch (kind) {
    case kTimeout:
      break;
    case kConnect:
      if (res < 0) {
        if (!c.closing) {
          engine_.counters().connect_failures++;
          std::string why = res == -ECANCELED
                                ? "connect_timeout"
                                : std::string("connect_error: ") + std::strerror(-res);
          // A Service connection moves to another endpoint; the app never
          // notices (nothing was read from it yet).
          if (c.route && retryService(c.pod, c.client, c.route, why)) why += " (retried)";
          closeConn(c, true, why);
        }
      } else if (!c.closing) {
        if (c.route) lbResult(*c.route, true);
        c.connected = true;
        pump(c, kUp);
        pump(c, kDown);
      }
      break;
    case kRecvUp:
    case kRecvDown: {
      Direction& d = c.dir[kind == kRecvUp ? kUp : kDown];
      d.recv_inflight = false;
      if (c.closing) break;
      if (res > 0) {
        d.len = static_cast<size_t>(res);
        d.off = 0;
        (kind == kRecvUp ? c.rec->sent : c.rec->received).fetch_add(res, std::memory_order_relaxed);
      } else if (res == 0) {
        d.eof = true;
        d.buf.reset();
      } else {
        closeConn(c, true,
                  res == -ECONNRESET ? "reset" : std::string("recv_error: ") + std::strerror(-res));
        break;
      }
      pump(c, kind == kRecvUp ? kUp : kDown);
      break;
    }
    case kSendUp:
    case kSendDown: {
      Direction& d = c.dir[kind == kSendUp ? kUp : kDown];
      d.send_inflight = false;
      if (c.closing) break;
      if (res <= 0) {
        closeConn(c, true,
                  res == -ECONNRESET || res == -EPIPE
                      ? "reset"
                      : std::string("send_error: ") + std::strerror(-res));
        break;
      }
      d.off += static_cast<size_t>(res);
      if (d.off >= d.len) d.len = d.off = 0;
      pump(c, kind == kSendUp ? kUp : kDown);
      break;
    }
    case kShutUp:
    case kShutDown: {
      Direction& d = c.dir[kind == kShutUp ? kUp : kDown];
      d.shut_done = true;
      if (!c.closing && c.dir[kUp].shut_done && c.dir[kDown].shut_done) closeConn(c, false, "eof");
      break;
    }
  }
  if (c.closing && c.inflight == 0) finish(c);
}

// Moves data one step along direction `which`: send what is buffered, else
// propagate EOF as shutdown(SHUT_WR), else receive more. At most one receive
// and one send per direction are in flight: the buffer bounds memory, and a
// slow reader stops us reading from the writer (backpressure).
void Worker::pump(Conn& c, int which) {
  Direction& d = c.dir[which];
  int src = which == kUp ? c.client.get() : c.upstream.get();
  int dst = which == kUp ? c.upstream.get() : c.client.get();
  if (d.recv_inflight || d.send_inflight || d.shut_sent) return;
  if (d.len > d.off) {
    io_uring_sqe* s = ring_->sqe(&c.ops[which == kUp ? kSendUp : kSendDown]);
    io_uring_prep_send(s, dst, d.buf.get() + d.off, d.len - d.off, MSG_NOSIGNAL);
    d.send_inflight = true;
    c.inflight++;
  } else if (d.eof) {
    io_uring_sqe* s = ring_->sqe(&c.ops[which == kUp ? kShutUp : kShutDown]);
    io_uring_prep_shutdown(s, dst, SHUT_WR);
    d.shut_sent = true;
    c.inflight++;
  } else {
    size_t cap = engine_.config().buffer_bytes;
    if (!d.buf) d.buf.reset(new char[cap]);
    io_uring_sqe* s = ring_->sqe(&c.ops[which == kUp ? kRecvUp : kRecvDown]);
    io_uring_prep_recv(s, src, d.buf.get(), cap, 0);
    d.recv_inflight = true;
    c.inflight++;
  }
}

void Worker::closeConn(Conn& c, bool reset, const std::string& reason) {
  if (c.closing) return;
  c.closing = true;
  c.reason = reason;
  if (reset) {
    // SO_LINGER {1, 0}: close() sends RST, so the peer learns of the reset.
    linger lg{1, 0};
    setsockopt(c.client.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    setsockopt(c.upstream.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  }
  // Cancel whatever is still in flight on either socket; the completions
  // (-ECANCELED) bring inflight to zero and finish() closes the fds. Not
  // shutdown(): that would send a FIN ahead of the RST.
  if (c.inflight > 0) {
    for (int fd : {c.client.get(), c.upstream.get()}) {
      io_uring_sqe* s = ring_->sqe(nullptr);
      io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL);
    }
  }
}

void Worker::finish(Conn& c) {
  auto& stats = engine_.counters();
  if (c.route) balancer_.closed(c.route->endpoint);
  stats.active--;
  stats.closed++;
  c.pod->connections--;
  engine_.closeRecord(c.rec, c.reason);
  conns_.erase(&c);  // closes both fds
}

// ---------------------------------------------------------------- Engine

EngineImpl::EngineImpl(const EngineConfig& config, OrigDstResolver& resolver,
                       CredentialSource* credentials, MeshDirectory* directory)
    : config_(config), resolver_(resolver), credentials_(credentials), directory_(directory) {}

EngineImpl::~EngineImpl() { stop(); }

std::string EngineImpl::identityOf(const PodSpec& spec) const {
  auto slash = spec.name_namespace.find('/');
  return x509::SpiffeId{config_.trust_domain, spec.name_namespace.substr(0, slash),
                        spec.service_account}
      .uri();
}

std::shared_ptr<Record> EngineImpl::openRecord(const char* direction, const std::string& pod,
                                               const std::string& source,
                                               const std::string& destination, const char* path) {
  auto rec = std::make_shared<Record>();
  rec->id = nextId();
  rec->direction = direction;
  rec->pod = pod;
  rec->source = source;
  rec->destination = destination;
  rec->path = path;
  rec->start_unix_ms = nowUnixMs();
  rec->start = std::chrono::steady_clock::now();
  registry_.add(rec);
  return rec;
}

void EngineImpl::closeRecord(const std::shared_ptr<Record>& rec, const std::string& reason) {
  registry_.close(rec, reason);
  if (!config_.access_log) return;
  auto dur = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - rec->start);
  log::get("access")->info(
      "{} pod={} src={} dst={} service={} path={} src_principal={} dst_principal={} mutual_tls={} "
      "sent={} "
      "received={} duration_ms={} reason={}",
      rec->direction, rec->pod, rec->source, rec->destination,
      rec->service.empty() ? "-" : rec->service, rec->path,
      rec->source_principal.empty() ? "-" : rec->source_principal,
      rec->destination_principal.empty() ? "-" : rec->destination_principal, rec->mutual_tls,
      rec->sent.load(), rec->received.load(), dur.count(), reason);
}

Result<void> EngineImpl::start() {
  if (credentials_ && !directory_)
    return fail("HBONE needs a mesh directory as well as a credential source");
  if (credentials_) {
    auto contexts = tls::Contexts::create(config_.trust_anchor_pem);
    if (!contexts) return fail("HBONE trust anchor: " + contexts.error().describe());
    tls_ = std::move(*contexts);
  }
  unsigned n =
      config_.workers ? config_.workers : std::max(1u, std::thread::hardware_concurrency());
  worker_count_ = n;
  for (unsigned i = 0; i < n; ++i) {
    auto w = std::make_unique<Worker>(*this, i);
    if (auto r = w->start(); !r) return r;
    workers_.push_back(std::move(w));
  }
  logger()->info("ztunnel engine started with {} worker(s)", n);
  return {};
}

Result<void> EngineImpl::addPod(const PodSpec& spec) {
  std::lock_guard lk(pods_mu_);
  if (stopped_) return fail("the proxy engine is stopped");
  if (pods_.count(spec.uid)) return {};
  auto pod = std::make_shared<PodState>();
  pod->spec = spec;
  int dup = fcntl(spec.netns_fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return failErrno("dup of the pod netns fd failed");
  pod->netns = UniqueFd(dup);
  pod->spec.netns_fd = dup;
  pod->identity = identityOf(spec);
  if (auto r = inpod::prepareNetns(dup); !r) return r;
  // Create every listener first so a failure leaves nothing behind.
  std::vector<std::pair<UniqueFd, ListenerKind>> fds;
  for (size_t i = 0; i < workers_.size(); ++i) {
    auto out = inpod::listenIn(dup, htonl(INADDR_LOOPBACK), SLUICE_OUTBOUND_PORT, false);
    if (!out)
      return fail(fmt::format("outbound listener 127.0.0.1:{} in pod {}: {}", SLUICE_OUTBOUND_PORT,
                              spec.name_namespace, out.error().describe()));
    auto in = inpod::listenIn(dup, spec.ip4, SLUICE_INBOUND_PORT, true);
    if (!in)
      return fail(fmt::format("inbound listener {}:{} in pod {}: {}", formatIp4(spec.ip4),
                              SLUICE_INBOUND_PORT, spec.name_namespace, in.error().describe()));
    fds.emplace_back(std::move(*out), ListenerKind::kOutbound);
    fds.emplace_back(std::move(*in), ListenerKind::kInbound);
    if (hbone()) {
      auto hb = inpod::listenIn(dup, spec.ip4, SLUICE_HBONE_PORT, false);
      if (!hb)
        return fail(fmt::format("HBONE listener {}:{} in pod {}: {}", formatIp4(spec.ip4),
                                SLUICE_HBONE_PORT, spec.name_namespace, hb.error().describe()));
      fds.emplace_back(std::move(*hb), ListenerKind::kHbone);
    }
  }
  size_t per_worker = fds.size() / workers_.size();
  for (size_t i = 0; i < fds.size(); ++i) {
    Worker* w = workers_[i / per_worker].get();
    auto fd = std::make_shared<UniqueFd>(std::move(fds[i].first));
    ListenerKind kind = fds[i].second;
    w->post([w, fd, pod, kind] { w->addListener(std::move(*fd), pod, kind); });
  }
  pods_[spec.uid] = pod;
  publishIndex();
  return {};
}

void EngineImpl::publishIndex() {
  auto index = std::make_shared<PodIndex>();
  for (const auto& [uid, p] : pods_) (*index)[p->spec.ip4] = p;
  by_ip_.store(std::move(index), std::memory_order_release);
}

void EngineImpl::removePod(const std::string& uid) {
  std::shared_ptr<PodState> pod;
  {
    std::lock_guard lk(pods_mu_);
    auto it = pods_.find(uid);
    if (it == pods_.end()) return;
    pod = it->second;
    pods_.erase(it);
    publishIndex();
  }
  pod->removed = true;
  // Wait until every worker has dropped the listeners: afterwards nothing
  // accepts for this pod any more.
  std::vector<std::future<void>> done;
  for (auto& w : workers_) {
    auto p = std::make_shared<std::promise<void>>();
    done.push_back(p->get_future());
    Worker* raw = w.get();
    raw->post([raw, uid, p] {
      raw->removePod(uid);
      p->set_value();
    });
  }
  for (auto& f : done) f.wait_for(std::chrono::seconds(5));
}

std::vector<ListenerInfo> EngineImpl::listeners() const {
  std::lock_guard lk(pods_mu_);
  std::vector<ListenerInfo> out;
  for (const auto& [uid, p] : pods_) {
    out.push_back({uid, p->spec.name_namespace, fmt::format("127.0.0.1:{}", SLUICE_OUTBOUND_PORT),
                   "outbound"});
    out.push_back({uid, p->spec.name_namespace,
                   fmt::format("{}:{}", formatIp4(p->spec.ip4), SLUICE_INBOUND_PORT), "inbound"});
    if (hbone())
      out.push_back({uid, p->spec.name_namespace,
                     fmt::format("{}:{}", formatIp4(p->spec.ip4), SLUICE_HBONE_PORT), "hbone"});
  }
  return out;
}

EngineStats EngineImpl::stats() const {
  EngineStats s;
  s.accepted = stats_.accepted;
  s.active = stats_.active;
  s.closed = stats_.closed;
  s.connect_failures = stats_.connect_failures;
  s.limit_rejected = stats_.limit_rejected;
  s.no_original_dst = stats_.no_original_dst;
  s.direct_refused = stats_.direct_refused;
  s.accept_errors = stats_.accept_errors;
  s.certificate_waits = stats_.certificate_waits;
  s.hbone_tunnels_opened = stats_.hbone_opened;
  s.hbone_tunnels_accepted = stats_.hbone_accepted;
  s.hbone_pending_evicted = stats_.hbone_pending_evicted;
  s.hbone_connect_retries = stats_.hbone_connect_retries;
  s.hbone_tunnels_active = stats_.hbone_active;
  s.hbone_handshake_failures = stats_.hbone_handshake_failures;
  s.hbone_timeouts = stats_.hbone_timeouts;
  s.hbone_bad_requests = stats_.hbone_bad_requests;
  s.hbone_refused = stats_.hbone_refused;
  s.no_certificate = stats_.no_certificate;
  s.no_view = stats_.no_view;
  s.lb_picks = stats_.lb_picks;
  s.lb_retries = stats_.lb_retries;
  s.lb_no_endpoint = stats_.lb_no_endpoint;
  s.lb_ejections = stats_.lb_ejections;
  return s;
}

void EngineImpl::stop() {
  {
    std::lock_guard lk(pods_mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  for (auto& w : workers_) w->stop();
  workers_.clear();
}

}  // namespace sluice::ztunnel::proxy

namespace sluice::ztunnel {

Result<std::unique_ptr<Engine>> createEngine(const EngineConfig& config, OrigDstResolver& resolver,
                                             CredentialSource* credentials,
                                             MeshDirectory* directory) {
  auto e = std::make_unique<proxy::EngineImpl>(config, resolver, credentials, directory);
  if (auto r = e->start(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<Engine>(std::move(e));
}

}  // namespace sluice::ztunnel
