#include "ztunnel/proxy/worker.h"

#include <fcntl.h>
#include <malloc.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <future>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/log.h"
#include "ztunnel/hbone/client.h"
#include "ztunnel/hbone/server.h"
#include "ztunnel/proxy/cpu_wait.h"
#include "ztunnel/proxy/plain.h"
#include "ztunnel/proxy/router.h"

namespace sluice::ztunnel::proxy {

namespace {
auto logger() { return log::get("ztunnel"); }

// Where a connection accepted on 127.0.0.1:15001 or [::1]:15001 was going.
std::optional<SockAddr> originalDst(OrigDstResolver& resolver, const PodState& pod,
                                    const sockaddr_storage& peer, const sockaddr_storage& local) {
  if (peer.ss_family == AF_INET6 && local.ss_family == AF_INET6) {
    auto dst =
        resolver.originalDst6(pod.spec.netns_cookie, reinterpret_cast<const sockaddr_in6&>(peer),
                              reinterpret_cast<const sockaddr_in6&>(local));
    if (!dst) return std::nullopt;
    return SockAddr(*dst);
  }
  if (peer.ss_family != AF_INET || local.ss_family != AF_INET) return std::nullopt;
  auto dst = resolver.originalDst(pod.spec.netns_cookie, reinterpret_cast<const sockaddr_in&>(peer),
                                  reinterpret_cast<const sockaddr_in&>(local));
  if (!dst) return std::nullopt;
  return SockAddr(*dst);
}
constexpr std::chrono::milliseconds kFineTick{10};
// The busy poll runs while the worker waited for a CPU less than this share
// of the last kPollGatePeriod (measured: 3-6% at one connection with idle
// CPUs, 28-40% when wrk -c32, nginx and the agent contend for two cores).
constexpr std::chrono::milliseconds kPollGatePeriod{100};
constexpr double kPollGateWait = 0.10;
}  // namespace

// Everything that lives on the worker thread, in dependency order: each part
// only knows the ones declared before it.
struct Worker::Parts {
  WorkerContext ctx;
  PlainUpstream plain{ctx};
  std::unique_ptr<hbone::Client> client;
  std::unique_ptr<hbone::Server> server;
  Router router;

  Parts(const EngineShared& s, uring::Ring& ring, unsigned index, std::function<void()> fine)
      : ctx{s.config,        ring,        s.records,    index,
            s.workers,       s.sockets,   s.authorizer, SLUICE_HBONE_PORT,
            std::move(fine), s.directory, s.splice},
        client(s.tls ? std::make_unique<hbone::Client>(ctx, *s.credentials, *s.tls) : nullptr),
        server(s.tls ? std::make_unique<hbone::Server>(ctx, *s.credentials, *s.tls) : nullptr),
        router(ctx, s.local_pods, s.directory, plain, client.get()) {}
};

Worker::Worker(const EngineShared& shared, unsigned index) : shared_(shared), index_(index) {}

Worker::~Worker() { stop(); }

Result<void> Worker::start() {
  wake_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC));
  if (!wake_fd_) return failErrno("eventfd failed");
  std::promise<Result<void>> ready;
  auto ready_future = ready.get_future();
  thread_ = std::jthread([this, &ready] {
    // SINGLE_ISSUER binds the ring to the thread that creates it. 256 SQEs
    // per submit (a larger batch is submitted in parts: makeRoom); 2048 CQEs,
    // enough for ~1,000 active connections per worker per batch. 48 KiB per
    // worker (1024 SQEs: 100 KiB, all resident).
    auto ring = uring::Ring::create(256, 2048);
    if (!ring) {
      ready.set_value(tl::unexpected(ring.error()));
      return;
    }
    ring_ = std::move(*ring);
    if (shared_.config.busy_poll.count() > 0) {
      cpu_wait_ = std::make_unique<CpuWait>();  // watches this thread
      if (!cpu_wait_->available())
        logger()->warn(
            "worker {}: busy polling stays off: /proc/thread-self/schedstat is not readable, so "
            "the worker cannot tell whether the CPUs are contended (kernel without "
            "CONFIG_SCHED_INFO?); --busy-poll-us=0 silences this",
            index_);
      if (!cpu_wait_->available()) cpu_wait_.reset();  // never gated on: the ring stays at 0
    }
    parts_ = std::make_unique<Parts>(shared_, *ring_, index_,
                                     [this] { fine_timer_.arm(*ring_, kFineTick); });
    wake_.read(*ring_, wake_fd_.get(), &wake_value_, sizeof(wake_value_));
    ready.set_value({});
    log::batchThisThread();  // an access-log line per connection: one write per round
    loop();
    log::flushThread();
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

void Worker::onWake(const io_uring_cqe&) {
  drainCommands();
  if (!stopping_) wake_.read(*ring_, wake_fd_.get(), &wake_value_, sizeof(wake_value_));
}

void Worker::drainCommands() {
  std::vector<std::function<void()>> cmds;
  {
    std::lock_guard lk(commands_mu_);
    cmds.swap(commands_);
  }
  for (auto& c : cmds) c();
}

void Worker::reap() {
  parts_->plain.reap();
  listeners_.remove_if([](const std::unique_ptr<Listener>& l) { return l->done(); });
}

bool Worker::idle() const {
  return parts_->plain.idle() && parts_->router.idle() &&
         (!parts_->client || parts_->client->idle()) && (!parts_->server || parts_->server->idle());
}

void Worker::loop() {
  while (!stopping_) {
    if (auto r = ring_->run(1000); !r)
      SLUICE_LOG_LIMITED(ring_log_, logger(), spdlog::level::err, "worker {}: io_uring: {}", index_,
                         r.error().describe());
    reap();
    auto now = std::chrono::steady_clock::now();
    if (cpu_wait_ && now - last_poll_gate_ >= kPollGatePeriod) gateBusyPoll(now);
    if (now - last_tick_ >= std::chrono::seconds(1)) tick(now);
    log::flushThread();  // what this round logged, before the next wait
  }
  // Orderly teardown: wake every pending operation, let them complete (the
  // kernel must not write into buffers we free), then drop everything.
  for (auto& l : listeners_) l->close();
  backing_off_.clear();
  parts_->router.shutdown();
  parts_->plain.shutdown();
  if (parts_->client) parts_->client->shutdown();
  if (parts_->server) parts_->server->shutdown();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while ((!idle() || !listeners_.empty()) && std::chrono::steady_clock::now() < deadline) {
    (void)ring_->run(50);
    reap();
    log::flushThread();
  }
  drainCommands();
  parts_.reset();
  ring_.reset();
  listeners_.clear();
}

void Worker::tick(std::chrono::steady_clock::time_point now) {
  last_tick_ = now;
  if (parts_->client) parts_->client->tick(now);
  if (parts_->server) parts_->server->tick(now);
  parts_->router.tick(now);
  parts_->plain.tick();
  auto& ctx = parts_->ctx;
  log::flushAll({&ctx.denied_log, &ctx.refused_log, &ctx.goaway_log, &ring_log_, &limit_log_}, now);
  for (auto& l : listeners_) l->flushLog(now);
  // The ring's own counts, added to the engine's counters as they grew.
  auto add = [&](Counter c, uint64_t now_value, uint64_t& seen) {
    parts_->ctx.counters().add(c, now_value - seen);
    seen = now_value;
  };
  if (uint64_t errors = ring_->errors(); errors != ring_errors_seen_) {
    logger()->error(
        "worker {}: the kernel refused {} io_uring submissions (they failed with "
        "EAGAIN); is the node out of memory?",
        index_, errors - ring_errors_seen_);
    add(Counter::kRingErrors, errors, ring_errors_seen_);
  }
  add(Counter::kBusyPollHits, ring_->busyPollHits(), poll_hits_seen_);
  add(Counter::kBusyPollMisses, ring_->busyPollMisses(), poll_misses_seen_);
  // Connection buffers come and go in bursts; hand freed pages back so the
  // node's RSS follows the load instead of its peak.
  if (index_ == 0 && ++ticks_ % 5 == 0) malloc_trim(0);
}

// Busy polling only pays with a CPU to spare: while this worker had to wait
// for one, polling would take it from the apps (and keep the scheduler from
// moving a waiting task to the polling CPU), so the worker sleeps instead.
void Worker::gateBusyPoll(std::chrono::steady_clock::time_point now) {
  last_poll_gate_ = now;
  double waited = cpu_wait_->sample(now);
  bool poll = waited >= 0 && waited < kPollGateWait;
  ring_->setBusyPoll(poll ? shared_.config.busy_poll : std::chrono::microseconds(0));
}

void Worker::fineTick() {
  if (stopping_) return;
  auto now = std::chrono::steady_clock::now();
  std::erase_if(backing_off_, [now](Listener* l) { return !l->retry(now); });
  bool again = !backing_off_.empty();
  if (parts_->client && parts_->client->fineTick(now)) again = true;
  if (parts_->server && parts_->server->fineTick(now)) again = true;
  if (again) fine_timer_.arm(*ring_, kFineTick);
}

void Worker::addListener(UniqueFd fd, std::shared_ptr<PodState> pod, ListenerKind kind) {
  auto l = std::make_unique<Listener>(parts_->ctx, *this, std::move(fd), std::move(pod), kind);
  l->arm();
  listeners_.push_back(std::move(l));
}

void Worker::removePod(const std::string& uid) {
  for (auto& l : listeners_)
    if (l->pod()->spec.uid == uid) {
      l->close();
      std::erase(backing_off_, l.get());
    }
  parts_->plain.removePod(uid);
  if (parts_->client) parts_->client->removePod(uid);
  if (parts_->server) parts_->server->removePod(uid);
  reap();
}

void Worker::reauthorize() {
  for (const auto& live : shared_.records.openInbound(index_)) {
    if (!live->owner || live->closed) continue;
    auto why = parts_->ctx.denied(*live, /*recheck=*/true);
    if (!why) continue;
    live->owner->abort(CloseReason::kDenied, std::move(*why));
  }
  reap();
}

size_t Worker::resetOpen(uint64_t id, const std::string& pod, const std::string& detail) {
  size_t n = 0;
  for (const auto& live : shared_.records.openOn(index_)) {
    if (!live->owner || live->closed) continue;
    bool match = id != 0 ? live->rec.id == id
                         : !pod.empty() && (live->rec.pod == pod || live->dest_pod == pod);
    if (!match) continue;
    live->owner->abort(CloseReason::kReset, detail);
    ++n;
  }
  reap();
  return n;
}

void Worker::countSpliced() { parts_->plain.countSpliced(); }

void Worker::exportListeners(std::vector<ListenerFd>& out) const {
  for (const auto& l : listeners_) {
    if (l->done()) continue;
    int dup = fcntl(l->fd(), F_DUPFD_CLOEXEC, 0);
    if (dup < 0) {
      logger()->error("worker {}: cannot duplicate a {} listener of {}: {}", index_,
                      toString(l->kind()), l->pod()->spec.name_namespace, std::strerror(errno));
      continue;
    }
    out.push_back({l->pod()->spec.uid, toString(l->kind()), UniqueFd(dup)});
  }
}

void Worker::stopAccepting() {
  for (auto& l : listeners_) l->stopAccepting();
  backing_off_.clear();
}

size_t Worker::acceptsInFlight() const {
  size_t n = 0;
  for (const auto& l : listeners_) n += !l->done();
  return n;
}

void Worker::goAway() {
  if (parts_->client) parts_->client->goAway();
  if (parts_->server) parts_->server->goAway();
}

size_t Worker::freezePlain() { return parts_->plain.freeze(); }

size_t Worker::takeFrozen(std::vector<ConnectionFd>& out) {
  reap();
  for (auto& c : parts_->plain.frozen()) out.push_back(std::move(c));
  parts_->plain.frozen().clear();
  return parts_->plain.freezing();
}

void Worker::adoptPlain(ConnectionFd c, std::shared_ptr<PodState> pod,
                        std::shared_ptr<PodState> target) {
  parts_->plain.adopt(std::move(c), std::move(pod), std::move(target));
}

size_t Worker::abortOpen(const std::string& detail) {
  size_t n = 0;
  for (const auto& live : shared_.records.openOn(index_)) {
    if (!live->owner || live->closed) continue;
    live->owner->abort(CloseReason::kProxyShutdown, detail);
    ++n;
  }
  reap();
  return n;
}

bool Worker::outOfDescriptors(Listener&) {
  return parts_->server &&
         parts_->server->evictOldestPending("accept failed: out of file descriptors");
}

void Worker::backingOff(Listener& l) {
  if (std::find(backing_off_.begin(), backing_off_.end(), &l) == backing_off_.end())
    backing_off_.push_back(&l);
  fine_timer_.arm(*ring_, kFineTick);
}

void Worker::accepted(Listener& l, UniqueFd client) {
  auto& counters = parts_->ctx.counters();
  // A 15008 connection is a tunnel; its streams count as connections.
  const ListenerKind role = roleOf(l.kind());
  counters.add(role == ListenerKind::kHbone ? Counter::kTunnelsAccepted : Counter::kAccepted);
  const auto& pod = l.pod();
  if (pod->removed) return;
  if (parts_->ctx.withinDescriptorReserve(
          client.get(), pod->spec.name_namespace,
          role == ListenerKind::kHbone ? "an HBONE tunnel" : "a connection")) {
    if (role != ListenerKind::kHbone) setLinger0(client.get());
    return;
  }
  const unsigned limit = shared_.config.max_connections_per_pod;
  if (role != ListenerKind::kHbone && pod->connections.load() >= limit) {
    counters.add(Counter::kLimitRejected);
    setLinger0(client.get());
    SLUICE_LOG_LIMITED(limit_log_, logger(), spdlog::level::warn,
                       "pod {}: connection limit {} reached; refusing a connection",
                       pod->spec.name_namespace, limit);
    return;
  }
  // An app's connection (not a tunnel) is born with SO_LINGER {1, 0}: if
  // the agent dies, the kernel's close of its sockets resets the apps rather
  // than ending their streams as if complete. An orderly end turns it off
  // first (Ring::close).
  if (role != ListenerKind::kHbone) setLinger0(client.get());
  // One syscall per connection here: the peer's address. TCP_NODELAY
  // comes from the listener; the local address is the listener's own
  // except on the transparent inbound listener.
  sockaddr_storage peer_raw{};
  socklen_t peer_len = sizeof(peer_raw);
  getpeername(client.get(), reinterpret_cast<sockaddr*>(&peer_raw), &peer_len);
  SockAddr peer = SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&peer_raw), peer_len);
  if (role == ListenerKind::kHbone) {
    parts_->server->accept(pod, std::move(client), peer);
    return;
  }
  if (role == ListenerKind::kInbound) {
    // Inbound plaintext: tc bpf_sk_assign keeps the original destination as
    // the local address.
    sockaddr_storage local_raw{};
    socklen_t local_len = sizeof(local_raw);
    getsockname(client.get(), reinterpret_cast<sockaddr*>(&local_raw), &local_len);
    SockAddr local = SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&local_raw), local_len);
    parts_->router.inbound(pod, std::move(client), peer, local);
    return;
  }
  auto orig = originalDst(shared_.resolver, *pod, peer_raw, l.local());
  if (!orig) {
    counters.add(Counter::kNoOriginalDst);
    logger()->debug("pod {}: no original destination for {}; closing", pod->spec.name_namespace,
                    formatEndpoint(peer));
    return;
  }
  // The app's socket is bound to loopback (it connected to 127.0.0.1:15001
  // or [::1]:15001 after the rewrite); records and Forwarded show the pod's
  // address of the destination's family.
  peer = SockAddr(orig->isV6() ? pod->spec.ip6 : IpAddr::v4(pod->spec.ip4), peer.port());
  parts_->router.outbound(std::make_unique<Attempt>(pod, std::move(client), peer, *orig));
}

}  // namespace sluice::ztunnel::proxy
