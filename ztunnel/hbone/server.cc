#include "ztunnel/hbone/server.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <list>
#include <optional>
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

// The client's address from `Forwarded: for="ip:port"` (RFC 7239).
std::optional<SockAddr> forwardedFor(std::string_view v) {
  auto p = v.find("for=");
  if (p == std::string_view::npos) return std::nullopt;
  v.remove_prefix(p + 4);
  if (!v.empty() && v.front() == '"') {
    v.remove_prefix(1);
    v = v.substr(0, v.find('"'));
  } else {
    v = v.substr(0, v.find_first_of(";, "));
  }
  return SockAddr::parse(v);  // "ip:port", "[v6]:port"
}

// One of the pod's own addresses (a CONNECT for another is refused).
bool ownAddress(const PodSpec& pod, const IpAddr& ip) {
  return (ip.isV4() && ip.v4net() == pod.ip4 && pod.ip4 != 0) || (ip.isV6() && ip == pod.ip6);
}

}  // namespace

struct Server::Impl final : StreamOwner {
  // One inbound tunnel with what the server side keeps about it.
  struct Link final : TunnelOwner {
    Link(Impl& i, std::shared_ptr<proxy::PodState> pod, const SockAddr& peer)
        : impl(i), tunnel(i.env, *this, true, std::move(pod), peer) {}
    Impl& impl;
    Tunnel tunnel;
    // In Impl::pending (no CONNECT yet), for the bound on those.
    bool pending = false;
    std::list<Link*>::iterator pending_at;
    bool awaiting_credential = false;  // bytes arrived before the pod's certificate

    std::shared_ptr<const WorkloadCredential> tunnelCredential(Tunnel&) override {
      return impl.credentialFor(*this);
    }
    StreamEnd* tunnelRequest(Tunnel&, int32_t id) override { return impl.newStream(*this, id); }
    void tunnelClosing(Tunnel&) override { impl.closing(*this); }
    void tunnelFinished(Tunnel&) override { impl.owned.scheduleReap(); }
  };

  Impl(proxy::WorkerContext& c, CredentialSource& cr, tls::Contexts& t)
      : ctx(c), creds(cr), env(c, t) {}

  proxy::WorkerContext& ctx;
  CredentialSource& creds;
  TunnelEnv env;
  Owned<Link> owned{ctx.ring};
  std::list<Link*> pending;       // tunnels without a CONNECT yet, oldest first
  std::vector<Link*> cert_links;  // tunnels waiting for their pod's certificate
  log::Limiter bad_request_log, refused_log, limit_log, pending_log, connect_log, share_log;

  std::shared_ptr<const WorkloadCredential> credentialFor(Link& l) {
    auto cred = creds.credential(l.tunnel.pod()->spec.identity);
    if (!cred && !l.awaiting_credential) {
      l.awaiting_credential = true;
      cert_links.push_back(&l);
      ctx.counters().add(Counter::kCertificateWaits);
      if (ctx.want_fine_tick) ctx.want_fine_tick();
    }
    return cred;
  }

  Stream* newStream(Link& l, int32_t id) {
    Stream* s = owned.add(std::make_unique<Stream>(ctx, *this, &l.tunnel, l.tunnel.pod(), true));
    s->setId(id);
    return s;
  }

  void streamFinished(Stream& s) override { owned.scheduleReap(s); }
  Tunnel* findTunnel(uint64_t id) override { return owned.tunnel(id); }

  // A request arrived on one of this pod's tunnels: check, authorize, and
  // connect to the app.
  void streamRequest(Stream& s) override {
    Tunnel& t = *s.tunnel();
    dropPending(static_cast<Link&>(t.owner()));
    proxy::PodState& pod = *t.pod();
    // The app's own port comes from Forwarded; the IP is the one TCP vouches
    // for (the tunnel leaves from the source pod's address).
    SockAddr source = t.remote();
    if (auto f = forwardedFor(s.forwarded); f && f->ip() == t.remote().ip()) source = *f;
    auto target = SockAddr::parse(s.authority);  // "ip:port", "[v6]:port"
    auto live = std::make_shared<proxy::LiveRecord>();
    ConnectionRecord& r = live->rec;
    r.direction = Direction::kInbound;
    r.path = Path::kHbone;
    r.pod = pod.spec.name_namespace;
    r.source = formatEndpoint(source);
    r.destination = s.authority;
    if (target) r.destination_service = ctx.inboundService(*target);
    r.source_principal = t.peerIdentity();
    r.destination_principal = pod.spec.identity;
    r.mutual_tls = true;
    live->dest_pod_uid = pod.spec.uid;
    live->dest_pod = pod.spec.name_namespace;
    live->source = source;
    if (target) live->destination = *target;
    s.openRecord(live);

    if (s.method != "CONNECT") {
      ctx.counters().add(Counter::kBadRequests);
      SLUICE_LOG_LIMITED(bad_request_log, logger(), spdlog::level::warn,
                         "tunnel {} from {} ({}): {} is not CONNECT; closing the tunnel", t.id(),
                         formatEndpoint(t.remote()), t.peerIdentity(), s.method);
      s.close(true, CloseReason::kBadRequest);
      t.terminate(NGHTTP2_PROTOCOL_ERROR, "bad_request");
      return;
    }
    uint16_t port = target ? target->port() : 0;
    if (!target || !ownAddress(pod.spec, target->ip()) || port == 0 || port == SLUICE_HBONE_PORT ||
        port == ctx.hbone_port || port == SLUICE_INBOUND_PORT || port == SLUICE_OUTBOUND_PORT) {
      ctx.counters().add(Counter::kRefused);
      SLUICE_LOG_LIMITED(refused_log, logger(), spdlog::level::warn,
                         "pod {}: refused CONNECT {} from {} ({}): not a port of this pod",
                         pod.spec.name_namespace, s.authority, t.peerIdentity(),
                         formatEndpoint(t.remote()));
      s.refuse(401, CloseReason::kNotThisPod);
      return;
    }
    // This stream counts already (Stream's constructor): the others are
    // connections - 1.
    if (pod.connections.load() > ctx.config.max_connections_per_pod) {
      ctx.counters().add(Counter::kLimitRejected);
      SLUICE_LOG_LIMITED(limit_log, logger(), spdlog::level::warn,
                         "pod {}: connection limit {} reached; refusing CONNECT from {}",
                         pod.spec.name_namespace, ctx.config.max_connections_per_pod,
                         t.peerIdentity());
      s.refuse(503, CloseReason::kConnectionLimit);
      return;
    }
    const unsigned share_of = proxy::sourceShare(ctx.config.max_connections_per_pod);
    auto share = proxy::SourceShare::take(t.pod(), source.ip(), share_of);
    if (!share) {
      ctx.counters().add(Counter::kLimitRejected);
      SLUICE_LOG_LIMITED(share_log, logger(), spdlog::level::warn,
                         "pod {}: {} ({}) holds {} inbound connections, half its connection "
                         "limit {}; refusing another CONNECT from it",
                         pod.spec.name_namespace, source.ip().str(), t.peerIdentity(), share_of,
                         ctx.config.max_connections_per_pod);
      s.refuse(503, CloseReason::kConnectionLimit);
      return;
    }
    s.holdShare(std::move(share));
    if (auto why = ctx.denied(*live)) {
      s.refuse(401, CloseReason::kDenied, std::move(*why));
      return;
    }
    // The app sees the client's address: the tunnel comes from the source
    // pod's IP (its socket lives in the source pod's netns), which TCP vouches for.
    auto sock =
        ctx.sockets.upstream(pod, SLUICE_MARK_INBOUND_APP, target->family(), t.remote().ip(), true);
    if (!sock) {
      SLUICE_LOG_LIMITED(connect_log, logger(), spdlog::level::err,
                         "pod {}: cannot create an upstream socket: {}", pod.spec.name_namespace,
                         sock.error().describe());
      s.refuse(503, CloseReason::kSocketError, sock.error().describe());
      return;
    }
    if (ctx.withinDescriptorReserve(sock->fd.get(), pod.spec.name_namespace, "a CONNECT")) {
      s.refuse(503, CloseReason::kConnectionLimit, "descriptor reserve");
      return;
    }
    proxy::appSocketLinger0(*sock);
    live->owner = &s;  // the authorization hook may reset it later
    s.connectApp(std::move(*sock), *target);
  }

  // --- pending handshakes ---
  // Inbound tunnels that have not sent a CONNECT yet are bounded per pod and
  // per node (each worker enforces its share): beyond a bound the oldest one
  // goes, so a flood of idle or stalled handshakes cannot exhaust descriptors
  // or memory, and a legitimate handshake, which completes in milliseconds,
  // is never the oldest for long.
  void makeRoomForHandshake(const proxy::PodState& pod) {
    unsigned workers = std::max(1u, ctx.workers);
    size_t node_limit = std::max(1u, ctx.config.hbone_max_pending_handshakes / workers);
    size_t pod_limit = std::max(1u, ctx.config.hbone_max_pending_handshakes_per_pod / workers);
    size_t of_pod = 0;
    Link* oldest_of_pod = nullptr;
    for (Link* l : pending) {
      if (l->tunnel.pod().get() != &pod) continue;
      if (!oldest_of_pod) oldest_of_pod = l;
      ++of_pod;
    }
    if (of_pod >= pod_limit)
      evict(*oldest_of_pod, "the pod's bound on pending handshakes is reached");
    else if (pending.size() >= node_limit)
      evict(*pending.front(), "the node's bound on pending handshakes is reached");
  }

  void evict(Link& l, const char* why) {
    ctx.counters().add(Counter::kPendingEvicted);
    auto age =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - l.tunnel.created());
    SLUICE_LOG_LIMITED(pending_log, logger(), spdlog::level::warn,
                       "pod {}: closed the pending HBONE handshake from {} ({} ms old): {}",
                       l.tunnel.pod()->spec.name_namespace, formatEndpoint(l.tunnel.remote()),
                       age.count(), why);
    l.tunnel.abortNow("evicted");
  }

  void dropPending(Link& l) {
    if (!l.pending) return;
    pending.erase(l.pending_at);
    l.pending = false;
  }

  void closing(Link& l) {
    dropPending(l);
    std::erase(cert_links, &l);
    l.awaiting_credential = false;
  }
};

Server::Server(proxy::WorkerContext& ctx, CredentialSource& credentials, tls::Contexts& tls)
    : impl_(std::make_unique<Impl>(ctx, credentials, tls)) {}

Server::~Server() = default;

void Server::accept(const std::shared_ptr<proxy::PodState>& pod, UniqueFd fd,
                    const SockAddr& peer) {
  Impl& m = *impl_;
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  m.makeRoomForHandshake(*pod);
  Impl::Link* l = m.owned.add(std::make_unique<Impl::Link>(m, pod, peer));
  l->pending = true;
  l->pending_at = m.pending.insert(m.pending.end(), l);
  l->tunnel.accept(std::move(fd));
}

bool Server::evictOldestPending(const char* why) {
  Impl& m = *impl_;
  for (Impl::Link* l : m.pending) {
    if (l->tunnel.flushingClose()) continue;  // already closing
    m.evict(*l, why);
    return true;
  }
  return false;
}

void Server::removePod(const std::string& uid) { impl_->owned.closePod(uid); }

void Server::shutdown() { impl_->owned.closeAll(); }

void Server::goAway() { impl_->owned.goAway(); }

size_t Server::receiveBufferBytes() const { return impl_->owned.receiveBufferBytes(); }

bool Server::idle() const {
  const Impl& m = *impl_;
  return m.owned.idle();
}

void Server::tick(Clock::time_point now) {
  Impl& m = *impl_;
  m.owned.eachLink([&](Impl::Link& l) { l.tunnel.tick(now, 0); });
  m.owned.eachStream([](Stream& s) { s.tick(); });
  log::flushAll({&m.bad_request_log, &m.refused_log, &m.limit_log, &m.pending_log, &m.connect_log,
                 &m.share_log, &m.env.peer_log, &m.env.handshake_log, &m.env.timeout_log},
                now);
}

bool Server::fineTick(Clock::time_point) {
  Impl& m = *impl_;
  auto waiting = std::move(m.cert_links);
  m.cert_links.clear();
  for (Impl::Link* l : waiting) {
    if (l->tunnel.closed() || !l->awaiting_credential) continue;
    auto cred = m.creds.credential(l->tunnel.pod()->spec.identity);
    if (!cred) {
      m.cert_links.push_back(l);
      continue;
    }
    l->awaiting_credential = false;
    l->tunnel.startTls(std::move(cred));
  }
  return !m.cert_links.empty();
}

}  // namespace sluice::ztunnel::hbone
