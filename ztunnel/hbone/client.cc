#include "ztunnel/hbone/client.h"

#include <algorithm>
#include <cstring>
#include <list>
#include <unordered_map>
#include <vector>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/log.h"
#include "ztunnel/hbone/owned.h"
#include "ztunnel/hbone/stream.h"
#include "ztunnel/hbone/tunnel.h"

namespace sluice::ztunnel::hbone {

namespace {
auto logger() { return log::get("hbone"); }
}  // namespace

struct Client::Impl final : StreamOwner {
  // One outbound tunnel with what the pool keeps about it.
  struct Link final : TunnelOwner {
    Link(Impl& i, std::shared_ptr<proxy::PodState> pod, const SockAddr& remote)
        : impl(i), tunnel(i.env, *this, false, std::move(pod), remote) {}
    Impl& impl;
    Tunnel tunnel;
    std::string key;               // in the pool under this key (empty: not pooled)
    std::vector<Stream*> waiting;  // accepted, waiting for the handshake
    // 15008 refused: redialled at redial_at, the delay doubling
    Clock::time_point redial_at{};
    std::chrono::milliseconds backoff{0};
    bool redialing = false;
    bool handshaking = false;  // counted in Impl::handshakes until ready or closed

    void tunnelDialFailed(Tunnel&, int res) override { impl.dialFailed(*this, res); }
    void tunnelReady(Tunnel&) override { impl.ready(*this); }
    void tunnelDraining(Tunnel&) override { impl.unpool(*this); }
    void tunnelClosing(Tunnel&) override { impl.closing(*this); }
    void tunnelFinished(Tunnel&) override { impl.owned.scheduleReap(); }
  };
  // An outbound connection waiting for its pod's first certificate.
  struct CertWaiter {
    std::unique_ptr<proxy::Attempt> attempt;
    MeshWorkload target;
    Clock::time_point deadline;
  };

  Impl(proxy::WorkerContext& c, CredentialSource& cr, tls::Contexts& t)
      : ctx(c), creds(cr), env(c, t) {}

  proxy::WorkerContext& ctx;
  CredentialSource& creds;
  TunnelEnv env;
  Owned<Link> owned{ctx.ring};
  std::unordered_map<std::string, std::vector<Link*>> pool;
  std::string key_scratch;  // pooled(): the key being looked up
  std::vector<CertWaiter> waiters;
  std::vector<Link*> redials;
  // Tunnels dialled and not ready yet, in all and per source pod.
  size_t handshakes = 0;
  std::unordered_map<const proxy::PodState*, size_t> pod_handshakes;
  log::Limiter cert_log, connect_log, bound_log;

  // Why pooled() gave no tunnel.
  enum class NoTunnel : uint8_t { kNoSocket, kHandshakes, kPeerTunnels };

  // --- streams ---
  void openStream(std::unique_ptr<proxy::Attempt> attempt, const MeshWorkload& target,
                  const std::shared_ptr<const WorkloadCredential>& cred) {
    auto pod = attempt->pod;
    NoTunnel why = NoTunnel::kNoSocket;
    Link* l = pooled(pod, target, attempt->dst, cred, why);
    if (!l) {
      if (why == NoTunnel::kNoSocket) ctx.counters().add(Counter::kConnectFailures);
      const char* detail = why == NoTunnel::kNoSocket ? "no tunnel" : "tunnel bound";
      if (proxy::Attempt::retry(attempt, detail)) return;
      refuse(*attempt, target, CloseReason::kNoTunnel, detail);
      return;
    }
    Stream* s = owned.add(std::make_unique<Stream>(ctx, *this, &l->tunnel, pod, false));
    auto live = recordOf(*attempt, target);
    s->setAttempt(std::move(attempt));
    s->openRecord(std::move(live));
    if (l->tunnel.ready()) {
      if (s->submit()) l->tunnel.progressSoon();
    } else {
      l->waiting.push_back(s);
    }
  }

  Tunnel* findTunnel(uint64_t id) override { return owned.tunnel(id); }

  void streamFinished(Stream& s) override {
    if (Tunnel* t = s.tunnel()) std::erase(static_cast<Link&>(t->owner()).waiting, &s);
    s.setTunnel(nullptr);
    owned.scheduleReap(s);
  }

  // --- tunnels ---
  Link* pooled(const std::shared_ptr<proxy::PodState>& pod, const MeshWorkload& target,
               const SockAddr& dst, const std::shared_ptr<const WorkloadCredential>& cred,
               NoTunnel& why) {
    // The pool key, built in a buffer kept for it (no allocation per
    // connection once it has grown).
    std::string& key = key_scratch;
    key.clear();
    key.append(pod->spec.uid).append(1, '|').append(target.identity).append(1, '|');
    key += dst.ip().str();
    size_t pooled_now = 0;
    if (auto it = pool.find(key); it != pool.end()) {
      pooled_now = it->second.size();
      Link* found = nullptr;
      // Renewed certificate: new streams go to a new tunnel; these are
      // drained after the walk (draining takes a tunnel out of the pool).
      std::vector<Link*> stale;
      for (Link* l : it->second) {
        Tunnel& t = l->tunnel;
        if (t.draining() || t.closed()) continue;
        if (t.credential() != cred) {
          stale.push_back(l);
          continue;
        }
        if (t.streams() + l->waiting.size() < ctx.config.hbone_max_streams) {
          found = l;
          break;
        }
      }
      for (Link* l : stale) l->tunnel.drain();
      if (found) return found;
    }
    if (!withinBounds(*pod, target, dst, pooled_now, why)) return nullptr;

    Link* l = owned.add(std::make_unique<Link>(*this, pod, SockAddr(dst.ip(), ctx.hbone_port)));
    auto sock = ctx.sockets.upstream(*pod, SLUICE_MARK_MINE, dst.family(), {}, false);
    if (!sock) {
      SLUICE_LOG_LIMITED(connect_log, logger(), spdlog::level::err,
                         "pod {}: cannot create a tunnel socket: {}", pod->spec.name_namespace,
                         sock.error().describe());
      l->tunnel.close("socket_error");
      return nullptr;
    }
    l->key = key;
    pool[key].push_back(l);
    l->handshaking = true;
    ++handshakes;
    ++pod_handshakes[pod.get()];
    l->tunnel.dial(std::move(sock->fd), cred, target.identity);
    return l;
  }

  // A new tunnel from `pod` to `target` (which has `pooled_now` tunnels from
  // it, all full) stays within this worker's share of the bounds; else the
  // refusal is counted and logged (rate limited) and `why` says which.
  bool withinBounds(const proxy::PodState& pod, const MeshWorkload& target, const SockAddr& dst,
                    size_t pooled_now, NoTunnel& why) {
    auto share = [&](unsigned bound) { return std::max(1u, bound / std::max(1u, ctx.workers)); };
    const char* what = nullptr;
    const char* flag = nullptr;
    const char* per = nullptr;
    unsigned bound = 0;
    if (pooled_now >= share(ctx.config.hbone_max_tunnels_per_peer)) {
      why = NoTunnel::kPeerTunnels;
      what = "its tunnels to this destination are all full and at the bound";
      flag = "--max-tunnels-per-peer";
      per = "pod and destination";
      bound = ctx.config.hbone_max_tunnels_per_peer;
    } else if (auto it = pod_handshakes.find(&pod);
               it != pod_handshakes.end() &&
               it->second >= share(ctx.config.hbone_max_outbound_handshakes_per_pod)) {
      why = NoTunnel::kHandshakes;
      what = "the pod's bound on outbound tunnel handshakes is reached";
      flag = "--max-outbound-handshakes (a pod gets a quarter)";
      per = "pod";
      bound = ctx.config.hbone_max_outbound_handshakes_per_pod;
    } else if (handshakes >= share(ctx.config.hbone_max_outbound_handshakes)) {
      why = NoTunnel::kHandshakes;
      what = "the node's bound on outbound tunnel handshakes is reached";
      flag = "--max-outbound-handshakes";
      per = "node";
      bound = ctx.config.hbone_max_outbound_handshakes;
    } else {
      return true;
    }
    ctx.counters().add(why == NoTunnel::kPeerTunnels ? Counter::kPeerTunnelRefused
                                                     : Counter::kOutboundHandshakeRefused);
    SLUICE_LOG_LIMITED(bound_log, logger(), spdlog::level::warn,
                       "pod {}: reset a connection to {} ({}): {} ({} per {}, each of {} "
                       "workers its share; {} raises it)",
                       pod.spec.name_namespace, formatEndpoint(dst), target.identity, what, bound,
                       per, std::max(1u, ctx.workers), flag);
    return false;
  }

  void endHandshake(Link& l) {
    if (!l.handshaking) return;
    l.handshaking = false;
    --handshakes;
    auto it = pod_handshakes.find(l.tunnel.pod().get());
    if (it != pod_handshakes.end() && --it->second == 0) pod_handshakes.erase(it);
  }

  void unpool(Link& l) {
    if (l.key.empty()) return;
    auto it = pool.find(l.key);
    if (it != pool.end()) {
      std::erase(it->second, &l);
      if (it->second.empty()) pool.erase(it);
    }
    l.key.clear();
  }

  void ready(Link& l) {
    endHandshake(l);
    auto waiting = std::move(l.waiting);
    l.waiting.clear();
    for (Stream* s : waiting) s->submit();  // the tunnel writes once this returns
  }

  void dialFailed(Link& l, int res) {
    if (res == -ECONNREFUSED) {
      // A Service connection tries another endpoint at once rather than
      // wait for this one.
      auto waiting = l.waiting;
      for (Stream* s : waiting) {
        if (!s->isService()) continue;
        std::erase(l.waiting, s);
        s->setTunnel(nullptr);
        s->fail(CloseReason::kConnectError, "15008 refused");
      }
    }
    if (res == -ECONNREFUSED && !l.waiting.empty()) {
      // Nothing listens on 15008 yet: the destination was enrolled a moment
      // ago and its node is still creating its listeners. Redial shortly.
      auto now = Clock::now();
      auto backoff =
          std::clamp(l.backoff * 2, std::chrono::milliseconds(10), std::chrono::milliseconds(200));
      if (now + backoff < l.tunnel.created() + ctx.config.hbone_refused_retry) {
        ctx.counters().add(Counter::kConnectRetries);
        l.backoff = backoff;
        l.redial_at = now + backoff;
        l.redialing = true;
        redials.push_back(&l);
        if (ctx.want_fine_tick) ctx.want_fine_tick();
        return;
      }
    }
    ctx.counters().add(Counter::kConnectFailures);
    bool timeout = res == -ETIMEDOUT;
    SLUICE_LOG_LIMITED(connect_log, logger(), spdlog::level::warn,
                       "tunnel {} to {}: connect failed: {}", l.tunnel.id(),
                       formatEndpoint(l.tunnel.remote()),
                       timeout ? "timed out" : std::strerror(-res));
    l.tunnel.close(timeout ? "connect_timeout" : "connect_error");
  }

  void closing(Link& l) {
    endHandshake(l);
    unpool(l);
    std::erase(redials, &l);
    auto waiting = std::move(l.waiting);
    l.waiting.clear();
    for (Stream* s : waiting) {
      s->setTunnel(nullptr);
      s->fail(CloseReason::kNoTunnel, l.tunnel.reason());
    }
  }

  void redial(Link& l) {
    l.redialing = false;
    if (l.waiting.empty()) {
      l.tunnel.close("connect_error");
      return;
    }
    auto sock = ctx.sockets.upstream(*l.tunnel.pod(), SLUICE_MARK_MINE, l.tunnel.remote().family(),
                                     {}, false);
    if (!sock) {
      l.tunnel.close("socket_error");
      return;
    }
    l.tunnel.redial(std::move(sock->fd));
  }

  // The record of an app connection to `target` through a tunnel.
  static std::shared_ptr<proxy::LiveRecord> recordOf(const proxy::Attempt& a,
                                                     const MeshWorkload& target) {
    auto live = std::make_shared<proxy::LiveRecord>();
    ConnectionRecord& r = live->rec;
    r.direction = Direction::kOutbound;
    r.path = Path::kHbone;
    r.pod = a.pod->spec.name_namespace;
    r.source = formatEndpoint(a.peer);
    r.destination = formatEndpoint(a.dst);
    r.destination_service = a.serviceName();
    r.source_principal = a.pod->spec.identity;
    r.destination_principal = target.identity;
    r.mutual_tls = true;
    live->source = a.peer;
    live->destination = a.dst;
    return live;
  }

  // An app connection that never reached a stream: reset, with its record
  // (connections, the access log, the metrics' failed connections).
  void refuse(proxy::Attempt& a, const MeshWorkload& target, CloseReason reason,
              std::string detail) {
    auto live = recordOf(a, target);
    live->worker = ctx.worker;
    ctx.records.open(live);
    ctx.records.close(*live, reason, std::move(detail));
    proxy::setLinger0(a.client.get());
  }

  void dropWaiter(CertWaiter& w, CloseReason reason, std::string detail = {}) {
    w.attempt->pod->connections--;
    refuse(*w.attempt, w.target, reason, std::move(detail));
  }
};

Client::Client(proxy::WorkerContext& ctx, CredentialSource& credentials, tls::Contexts& tls)
    : impl_(std::make_unique<Impl>(ctx, credentials, tls)) {}

Client::~Client() = default;

void Client::open(std::unique_ptr<proxy::Attempt> attempt, const MeshWorkload& target) {
  Impl& m = *impl_;
  auto pod = attempt->pod;
  if (auto cred = m.creds.credential(pod->spec.identity)) {
    m.openStream(std::move(attempt), target, cred);
    return;
  }
  // Enrolled a moment ago, or the agent just started: the pod's certificate
  // is on its way. The app's connection waits for it (bounded).
  m.ctx.counters().add(Counter::kCertificateWaits);
  pod->connections++;  // a waiting connection counts against the pod's limit
  m.waiters.push_back(
      Impl::CertWaiter{std::move(attempt), target, Clock::now() + m.ctx.config.certificate_wait});
  if (m.ctx.want_fine_tick) m.ctx.want_fine_tick();
}

void Client::removePod(const std::string& uid) {
  Impl& m = *impl_;
  std::erase_if(m.waiters, [&](Impl::CertWaiter& w) {
    if (w.attempt->pod->spec.uid != uid) return false;
    m.dropWaiter(w, CloseReason::kPodRemoved);
    return true;
  });
  m.owned.closePod(uid);
}

void Client::shutdown() {
  Impl& m = *impl_;
  auto waiters = std::move(m.waiters);
  m.waiters.clear();
  for (auto& w : waiters) m.dropWaiter(w, CloseReason::kProxyShutdown);
  m.owned.closeAll();
}

void Client::goAway() { impl_->owned.goAway(); }

size_t Client::receiveBufferBytes() const { return impl_->owned.receiveBufferBytes(); }

bool Client::idle() const {
  const Impl& m = *impl_;
  return m.owned.idle() && m.waiters.empty();
}

void Client::tick(Clock::time_point now) {
  Impl& m = *impl_;
  log::flushAll({&m.cert_log, &m.connect_log, &m.bound_log, &m.env.peer_log, &m.env.handshake_log,
                 &m.env.timeout_log},
                now);
  m.owned.eachLink([&](Impl::Link& l) {
    Tunnel& t = l.tunnel;
    if (t.ready() && !t.draining() && !t.flushingClose() &&
        t.credential() != m.creds.credential(t.pod()->spec.identity))
      t.drain();  // the certificate was renewed
    t.tick(now, l.waiting.size());
  });
  m.owned.eachStream([](Stream& s) { s.tick(); });
}

bool Client::fineTick(Clock::time_point now) {
  Impl& m = *impl_;
  if (!m.waiters.empty()) {
    auto waiters = std::move(m.waiters);
    m.waiters.clear();
    for (auto& w : waiters) {
      auto& pod = w.attempt->pod;
      auto cred = pod->removed ? nullptr : m.creds.credential(pod->spec.identity);
      if (cred) {
        pod->connections--;  // leaves the queue
        m.openStream(std::move(w.attempt), w.target, cred);
        continue;
      }
      if (!pod->removed && now < w.deadline) {
        m.waiters.push_back(std::move(w));
        continue;
      }
      if (pod->removed) {
        m.dropWaiter(w, CloseReason::kPodRemoved);
        continue;
      }
      m.ctx.counters().add(Counter::kNoCertificate);
      SLUICE_LOG_LIMITED(m.cert_log, logger(), spdlog::level::warn,
                         "pod {}: no certificate for {} after {} ms; resetting a connection to "
                         "{} (is the control plane's CA reachable? see 'sluicectl certs')",
                         pod->spec.name_namespace, pod->spec.identity,
                         m.ctx.config.certificate_wait.count(), formatEndpoint(w.attempt->dst));
      m.dropWaiter(
          w, CloseReason::kNoCertificate,
          fmt::format("{} after {} ms", pod->spec.identity, m.ctx.config.certificate_wait.count()));
    }
  }
  if (!m.redials.empty()) {
    auto due = std::move(m.redials);
    m.redials.clear();
    for (Impl::Link* l : due) {
      if (l->tunnel.state() != Tunnel::State::kConnecting || !l->redialing) continue;
      if (now < l->redial_at)
        m.redials.push_back(l);
      else
        m.redial(*l);
    }
  }
  return !m.waiters.empty() || !m.redials.empty();
}

}  // namespace sluice::ztunnel::hbone
