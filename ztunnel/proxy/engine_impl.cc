#include "ztunnel/proxy/engine_impl.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/log.h"
#include "sluice/common/netns.h"
#include "ztunnel/inpod/inpod.h"

namespace sluice::ztunnel::proxy {

namespace {
auto logger() { return log::get("ztunnel"); }
constexpr int kHboneBacklog = 128;  // per worker's 15008 listener
constexpr ListenerKind kAllKinds[] = {ListenerKind::kOutbound, ListenerKind::kInbound,
                                      ListenerKind::kHbone,    ListenerKind::kOutbound6,
                                      ListenerKind::kInbound6, ListenerKind::kHbone6};

// 127.0.0.1:15001 / [::1]:15001, <pod-ip>:15006, <pod-ip>:15008.
SockAddr listenAddress(const PodSpec& spec, ListenerKind kind) {
  const bool v6 = isIpv6(kind);
  switch (roleOf(kind)) {
    case ListenerKind::kOutbound:
      return v6 ? SockAddr(IpAddr::v6(in6addr_loopback), SLUICE_OUTBOUND_PORT)
                : SockAddr(IpAddr::v4(htonl(INADDR_LOOPBACK)), SLUICE_OUTBOUND_PORT);
    case ListenerKind::kInbound:
      return SockAddr(v6 ? spec.ip6 : IpAddr::v4(spec.ip4), SLUICE_INBOUND_PORT);
    default:
      return SockAddr(v6 ? spec.ip6 : IpAddr::v4(spec.ip4), SLUICE_HBONE_PORT);
  }
}
}  // namespace

// A listener of `kind` for this pod: one per family it has an address of;
// HBONE ones when mTLS is on.
bool EngineImpl::wanted(const PodSpec& spec, ListenerKind kind) const {
  if (roleOf(kind) == ListenerKind::kHbone && !hbone()) return false;
  return isIpv6(kind) ? !spec.ip6.empty() : spec.ip4 != 0;
}

Result<void> NetnsSockets::init() {
  auto home = threadNetns();
  if (!home) return tl::unexpected(home.error());
  home_ = std::move(*home);
  return {};
}

Result<Upstream> NetnsSockets::upstream(const PodState& pod, uint32_t mark, int family,
                                        const IpAddr& bind, bool may_defer) {
  if (!bind.empty() && bind.family() != family)
    return fail(
        fmt::format("cannot bind an upstream socket of family {} to {}", family, bind.str()));
  if (!bind.empty() && pod.plainSource(bind)) return clearOfClients(pod, mark, family, bind);
  auto s = take(pod, family);
  if (!s) return tl::unexpected(s.error());
  if (may_defer && uring::socketSetupSupported())
    return Upstream{std::move(*s), {true, mark, bind.empty() ? SockAddr() : SockAddr(bind, 0)}};
  if (auto ready = inpod::prepareUpstream(*s, mark, family, bind); !ready)
    return tl::unexpected(ready.error());
  return Upstream{std::move(*s), {}};
}

Result<UniqueFd> NetnsSockets::take(const PodState& pod, int family) {
  return pod.stash.take(
      family, SocketStash::Clock::now(), [&](int fam, size_t n, std::vector<UniqueFd>& out) {
        return socketsInNetns(pod.netns.get(), home_, fam, SOCK_STREAM, 0, n, out);
      });
}

// The kernel picks the port of a bind to `bind` (port 0) among those no
// socket of the netns has bound, and the proxy's accepted plaintext sockets
// are bound to the pod's address: a client's own port is on offer. Each
// port it offers is checked; a refused socket stays bound until a port is
// found, so the kernel offers another each time.
Result<Upstream> NetnsSockets::clearOfClients(const PodState& pod, uint32_t mark, int family,
                                              const IpAddr& bind) {
  constexpr unsigned kTries = 16;
  std::vector<UniqueFd> refused;
  for (unsigned i = 0; i < kTries; ++i) {
    auto s = take(pod, family);
    if (!s) return tl::unexpected(s.error());
    if (auto ready = inpod::prepareUpstream(*s, mark, family, bind); !ready)
      return tl::unexpected(ready.error());
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (::getsockname(s->get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0)
      return failErrno("getsockname of a bound upstream socket failed");
    auto local = SockAddr::fromRaw(reinterpret_cast<sockaddr*>(&ss), len);
    if (!pod.plainClient(local)) return Upstream{std::move(*s), {}};
    refused.push_back(std::move(*s));
  }
  return fail(fmt::format(
      "no source port for a connection from {}: the {} ports the kernel offered are each held by "
      "a plaintext connection of that client to the pod",
      bind.str(), kTries));
}

// ---------------------------------------------------------------- Engine

EngineImpl::EngineImpl(const EngineConfig& config, OrigDstResolver& resolver,
                       CredentialSource* credentials, MeshDirectory* directory, EngineHooks hooks)
    : config_(config),
      resolver_(resolver),
      credentials_(credentials),
      directory_(directory),
      hooks_(hooks),
      records_(config.access_log, hooks.observer) {}

EngineImpl::~EngineImpl() { stop(); }

Result<void> EngineImpl::start() {
  if (credentials_ && !directory_)
    return fail("HBONE needs a mesh directory as well as a credential source");
  if (credentials_) {
    auto contexts = tls::Contexts::create(config_.trust_anchor_pem);
    if (!contexts) return fail("HBONE trust anchor: " + contexts.error().describe());
    tls_ = std::move(*contexts);
  }
  if (auto r = sockets_.init(); !r) return r;
  unsigned n = config_.workers ? config_.workers : defaultWorkers();
  shared_ = std::make_unique<EngineShared>(
      EngineShared{config_, records_, resolver_, sockets_, by_ip_, n, directory_, credentials_,
                   tls_.get(), hooks_.authorizer, hooks_.splice});
  for (unsigned i = 0; i < n; ++i) {
    auto w = std::make_unique<Worker>(*shared_, i);
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
  if (spec.identity.empty())
    return fail(
        fmt::format("pod {}: no SPIFFE ID in its spec (PodSpec.identity)", spec.name_namespace));
  auto pod = std::make_shared<PodState>();
  pod->spec = spec;
  int dup = fcntl(spec.netns_fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return failErrno("dup of the pod netns fd failed");
  pod->netns = UniqueFd(dup);
  pod->spec.netns_fd = dup;
  const bool ipv6 = !spec.ip6.empty();
  if (spec.ip4 == 0 && !ipv6)
    return fail(fmt::format("pod {}: no IP address in its spec", spec.name_namespace));
  if (auto r = inpod::prepareNetns(dup, ipv6); !r) return r;
  // The predecessor's sockets for this pod (an upgrade) first; every
  // listener missing is created before any is handed to a worker, so a
  // failure leaves nothing behind.
  std::vector<std::pair<UniqueFd, ListenerKind>> fds;
  if (auto it = adopted_.find(spec.uid); it != adopted_.end()) {
    for (auto& [fd, kind] : it->second)
      if (wanted(spec, kind)) fds.emplace_back(std::move(fd), kind);
    adopted_.erase(it);
  }
  auto have = [&fds](ListenerKind kind) {
    return std::any_of(fds.begin(), fds.end(), [kind](const auto& f) { return f.second == kind; });
  };
  std::vector<ListenerKind> make;
  for (auto kind : kAllKinds)
    if (wanted(spec, kind) && !have(kind)) make.push_back(kind);
  for (size_t i = 0; i < workers_.size(); ++i) {
    for (auto kind : make) {
      // A short 15008 queue: a tunnel carries many connections, so 15008
      // sees few legitimate new ones, and every connection accepted in one
      // batch holds a descriptor beyond the pending-handshake bound until
      // the oldest are evicted (a flood of idle connections is bounded by it).
      ListenerKind role = roleOf(kind);
      SockAddr addr = listenAddress(spec, kind);
      auto l = inpod::listenIn(dup, addr, role == ListenerKind::kInbound,
                               role == ListenerKind::kHbone ? kHboneBacklog : 4096);
      if (!l)
        return fail(fmt::format("{} listener {} in pod {}: {}", toString(kind), addr.str(),
                                spec.name_namespace, l.error().describe()));
      fds.emplace_back(std::move(*l), kind);
    }
  }
  if (hooks_.steering) {
    for (const auto& [sock, kind] : fds) {
      if (roleOf(kind) != ListenerKind::kInbound) continue;
      SockAddr addr = listenAddress(spec, kind);
      if (auto r = hooks_.steering->inboundListener(addr, sock.get()); !r)
        return fail(fmt::format("{} listener {} in pod {}: {}", toString(kind), addr.str(),
                                spec.name_namespace, r.error().describe()));
    }
  }
  // The n-th listener of each kind goes to worker n (mod workers).
  std::map<ListenerKind, size_t> next;
  for (auto& [sock, kind] : fds) {
    Worker* w = workers_[next[kind]++ % workers_.size()].get();
    auto fd = std::make_shared<UniqueFd>(std::move(sock));  // std::function copies
    ListenerKind k = kind;
    w->post([w, fd, pod, k] { w->addListener(std::move(*fd), pod, k); });
  }
  pods_[spec.uid] = pod;
  publishIndex();
  return {};
}

void EngineImpl::publishIndex() {
  auto index = std::make_shared<PodIndex>();
  for (const auto& [uid, p] : pods_) {
    if (p->spec.ip4 != 0) (*index)[IpAddr::v4(p->spec.ip4)] = p;
    if (!p->spec.ip6.empty()) (*index)[p->spec.ip6] = p;
  }
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
  pod->stash.clear();  // its sockets would hold the netns
  // Wait until every worker has dropped the listeners: afterwards nothing
  // accepts for this pod any more.
  onEveryWorker([&uid](Worker& w) { w.removePod(uid); });
}

void EngineImpl::reauthorize() {
  if (!hooks_.authorizer) return;
  onEveryWorker([](Worker& w) { w.reauthorize(); });
}

size_t EngineImpl::resetConnections(uint64_t id, const std::string& pod) {
  if (id == 0 && pod.empty()) return 0;
  std::atomic<size_t> n{0};
  onEveryWorker([&](Worker& w) { n += w.resetOpen(id, pod, "by an operator (admin API)"); });
  return n.load();
}

void EngineImpl::countSpliced() const {
  if (!hooks_.splice) return;
  onEveryWorker([](Worker& w) { w.countSpliced(); });
}

std::vector<ListenerFd> EngineImpl::exportListeners() {
  std::mutex mu;
  std::vector<ListenerFd> out;
  onEveryWorker([&](Worker& w) {
    std::vector<ListenerFd> mine;
    w.exportListeners(mine);
    std::lock_guard lk(mu);
    for (auto& l : mine) out.push_back(std::move(l));
  });
  return out;
}

void EngineImpl::adoptListeners(std::vector<ListenerFd> listeners) {
  std::lock_guard lk(pods_mu_);
  adopted_.clear();
  for (auto& l : listeners) {
    auto kind = listenerKindOf(l.kind);
    if (!kind || !l.fd) {
      logger()->warn("ignoring a handed-over listener of pod {} of unknown kind '{}'", l.pod_uid,
                     l.kind);
      continue;
    }
    adopted_[l.pod_uid].emplace_back(std::move(l.fd), *kind);
  }
}

void EngineImpl::stopAccepting() {
  onEveryWorker([](Worker& w) { w.stopAccepting(); });
  // The cancels complete on the workers' rings: until a listener's multishot
  // accept has ended, it can still hand this process a connection. Return
  // once none can, so that drain() sees every connection this process will
  // ever serve (one accepted after drain() found nothing open would be cut
  // when the process exits).
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (;;) {
    std::atomic<size_t> busy{0};
    onEveryWorker([&busy](Worker& w) { busy += w.acceptsInFlight(); });
    if (busy == 0) return;
    if (std::chrono::steady_clock::now() >= until) {
      logger()->warn("stop accepting: {} accept(s) not cancelled after 2 s", busy.load());
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

size_t EngineImpl::drain(std::chrono::milliseconds deadline) {
  auto until = std::chrono::steady_clock::now() + deadline;
  onEveryWorker([](Worker& w) { w.goAway(); });
  auto open = [this] {
    auto s = stats();
    return s[Counter::kActive] + s[Counter::kTunnelsActive];
  };
  while (open() > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::atomic<size_t> closed{0};
  std::string detail =
      fmt::format("drain deadline of {} s passed (agent upgrade)",
                  std::chrono::duration_cast<std::chrono::seconds>(deadline).count());
  onEveryWorker([&](Worker& w) { closed += w.abortOpen(detail); });
  if (closed > 0)
    logger()->warn("drain: {} connection(s) still open after {} ms; closed them", closed.load(),
                   deadline.count());
  return closed;
}

std::vector<ConnectionFd> EngineImpl::exportConnections() {
  std::atomic<size_t> frozen{0};
  onEveryWorker([&](Worker& w) { frozen += w.freezePlain(); });
  // Cancelled requests complete at once; a few seconds bound a stuck ring.
  std::mutex mu;
  std::vector<ConnectionFd> out;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (true) {
    std::atomic<size_t> left{0};
    onEveryWorker([&](Worker& w) {
      std::vector<ConnectionFd> mine;
      left += w.takeFrozen(mine);
      std::lock_guard lk(mu);
      for (auto& c : mine) out.push_back(std::move(c));
    });
    if (left == 0 || std::chrono::steady_clock::now() >= until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (out.size() != frozen)
    logger()->warn("upgrade: {} of {} plaintext connection(s) could not be frozen cleanly",
                   frozen - out.size(), frozen.load());
  return out;
}

size_t EngineImpl::adoptConnections(std::vector<ConnectionFd> connections) {
  std::lock_guard lk(pods_mu_);
  if (stopped_) {
    logger()->warn("upgrade: closing {} handed-over connection(s): the proxy engine is stopped",
                   connections.size());
    return 0;
  }
  size_t taken = 0, next = 0;
  for (auto& c : connections) {
    auto it = pods_.find(c.pod_uid);
    if (it == pods_.end() || !c.client || !c.upstream) {
      logger()->warn("upgrade: closing a handed-over connection of pod {} ({}): not enrolled here",
                     c.record.pod, c.pod_uid);
      continue;
    }
    std::shared_ptr<PodState> target;
    if (!c.target_uid.empty()) {
      auto t = pods_.find(c.target_uid);
      if (t == pods_.end()) {
        logger()->warn("upgrade: closing a handed-over connection to pod {}: not enrolled here",
                       c.target_uid);
        continue;
      }
      target = t->second;
    }
    Worker* w = workers_[next++ % workers_.size()].get();
    auto conn = std::make_shared<ConnectionFd>(std::move(c));  // std::function copies
    auto pod = it->second;
    w->post([w, conn, pod, target] { w->adoptPlain(std::move(*conn), pod, target); });
    ++taken;
  }
  return taken;
}

void EngineImpl::onEveryWorker(const std::function<void(Worker&)>& fn) const {
  std::shared_lock lk(workers_mu_);
  std::vector<std::future<void>> done;
  for (auto& w : workers_) {
    auto p = std::make_shared<std::promise<void>>();
    done.push_back(p->get_future());
    Worker* raw = w.get();
    raw->post([raw, p, fn] {
      fn(*raw);
      p->set_value();
    });
  }
  for (auto& f : done) f.wait_for(std::chrono::seconds(5));
}

std::vector<ListenerInfo> EngineImpl::listeners() const {
  std::lock_guard lk(pods_mu_);
  std::vector<ListenerInfo> out;
  for (const auto& [uid, p] : pods_) {
    for (auto kind : kAllKinds)
      if (wanted(p->spec, kind))
        out.push_back(
            {uid, p->spec.name_namespace, listenAddress(p->spec, kind).str(), toString(kind)});
  }
  return out;
}

void EngineImpl::stop() {
  {
    std::lock_guard lk(pods_mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  std::unique_lock lk(workers_mu_);
  for (auto& w : workers_) w->stop();
  workers_.clear();
}

}  // namespace sluice::ztunnel::proxy

namespace sluice::ztunnel {

unsigned defaultWorkers() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  int cpus = ::sched_getaffinity(0, sizeof(allowed), &allowed) == 0
                 ? CPU_COUNT(&allowed)
                 : static_cast<int>(std::thread::hardware_concurrency());
  return static_cast<unsigned>(std::max(1, cpus / 2));
}

bool idleWaitCountsAsIowait() {
  static const bool counted = [] {
    auto ring = uring::Ring::create(2);
    return !ring || !(*ring)->waitsWithoutIowait();
  }();
  return counted;
}

Result<std::unique_ptr<Engine>> createEngine(const EngineConfig& config, OrigDstResolver& resolver,
                                             CredentialSource* credentials,
                                             MeshDirectory* directory, EngineHooks hooks) {
  auto e = std::make_unique<proxy::EngineImpl>(config, resolver, credentials, directory, hooks);
  if (auto r = e->start(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<Engine>(std::move(e));
}

}  // namespace sluice::ztunnel
