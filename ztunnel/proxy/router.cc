#include "ztunnel/proxy/router.h"

#include <arpa/inet.h>

#include <algorithm>
#include <random>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/log.h"

namespace sluice::ztunnel::proxy {

namespace {

auto logger() { return log::get("ztunnel"); }

Balancer::Config balancerConfig(const EngineConfig& c) {
  Balancer::Config b;
  b.eject_after = std::max(1u, c.lb_eject_after);
  b.eject_for = c.lb_eject_for;
  return b;
}

bool isProxyPort(uint16_t port) {
  return port == SLUICE_INBOUND_PORT || port == SLUICE_HBONE_PORT || port == SLUICE_OUTBOUND_PORT;
}

}  // namespace

Router::Router(WorkerContext& ctx, const PodIndexRef& local_pods, MeshDirectory* directory,
               PlainUpstream& plain, hbone::Client* hbone)
    : ctx_(ctx),
      local_pods_(local_pods),
      directory_(directory),
      plain_(plain),
      hbone_(hbone),
      balancer_(balancerConfig(ctx.config), std::random_device{}() ^ ctx.worker) {}

std::shared_ptr<LiveRecord> Router::record(Direction d, Path p, const PodState& pod,
                                           const SockAddr& source, const SockAddr& dst) {
  auto live = std::make_shared<LiveRecord>();
  live->worker = ctx_.worker;
  live->rec.direction = d;
  live->rec.path = p;
  live->rec.pod = pod.spec.name_namespace;
  live->rec.source = formatEndpoint(source);
  live->rec.destination = formatEndpoint(dst);
  live->source = source;
  live->destination = dst;
  return live;
}

bool Router::deny(const std::shared_ptr<LiveRecord>& live) {
  auto why = ctx_.denied(*live);
  if (!why) return false;
  ctx_.records.open(live);
  ctx_.records.close(*live, CloseReason::kDenied, std::move(*why));
  return true;
}

std::optional<Upstream> Router::upstreamSocket(const PodState& in, uint32_t mark, int family,
                                               const IpAddr& bind) {
  auto sock = ctx_.sockets.upstream(in, mark, family, bind, true);
  if (sock) appSocketLinger0(*sock);
  if (sock) return std::move(*sock);
  ctx_.counters().add(Counter::kConnectFailures);
  SLUICE_LOG_LIMITED(socket_log_, logger(), spdlog::level::err,
                     "pod {}: cannot create an upstream socket: {}", in.spec.name_namespace,
                     sock.error().describe());
  return std::nullopt;
}

void Router::outbound(std::unique_ptr<Attempt> a) { route(std::move(a)); }

void Router::route(std::unique_ptr<Attempt> a) {
  PodState& pod = *a->pod;
  auto reset = [&] { setLinger0(a->client.get()); };
  if (pod.removed || stopping_) return reset();
  if (directory_ && !directory_->hasView()) {
    // No view yet (an agent just started): a meshed destination would look
    // unknown and go out in plaintext. Fail closed.
    ctx_.counters().add(Counter::kNoView);
    SLUICE_LOG_LIMITED(no_view_log_, logger(), spdlog::level::warn,
                       "pod {}: no view of the mesh yet; refusing the connection to {}",
                       pod.spec.name_namespace, formatEndpoint(a->dst));
    return reset();
  }
  if (!a->isService() && directory_) {
    if (auto svc = directory_->service(a->dst.ip(), a->dst.portNet()))
      a->setService(this, std::move(svc), a->dst);
    else if (auto headless = directory_->headlessService(a->dst.ip(), a->dst.portNet()))
      a->setHeadless(std::move(*headless));
  }
  if (a->isService()) {
    auto ep = balancer_.pick(*a->service(), a->tried(), std::chrono::steady_clock::now());
    if (!ep) {
      ctx_.counters().add(Counter::kLbNoEndpoint);
      SLUICE_LOG_LIMITED(no_endpoint_log_, logger(), spdlog::level::warn,
                         "pod {}: no endpoint of service {} left for {} (tried {}); resetting",
                         pod.spec.name_namespace, a->serviceName(), formatEndpoint(a->vip()),
                         a->tried().size());
      // Its record and access-log line: the connection the app made ends here.
      auto live = record(Direction::kOutbound, Path::kNone, pod, a->peer, a->vip());
      live->rec.destination_service = a->serviceName();
      live->rec.source_principal = pod.spec.identity;
      ctx_.records.open(live);
      ctx_.records.close(*live, CloseReason::kNoEndpoint,
                         a->tried().empty()
                             ? "no ready endpoint"
                             : fmt::format("no endpoint left after {} tried", a->tried().size()));
      return reset();
    }
    ctx_.counters().add(Counter::kLbPicks);
    a->pick(*ep);
  }
  const SockAddr dst = a->dst;

  auto local = local_pods_.load(std::memory_order_acquire);
  if (auto it = local->find(dst.ip()); it != local->end() && !it->second->removed) {
    // Meshed destination on this node: hand the connection straight to the
    // destination pod, as its inbound side would (client pod IP as source,
    // inside its netns); the bytes never leave the kernel and take one
    // proxy hop instead of two. The source identity is known from the
    // listener's netns; no TLS because the bytes never leave the node.
    const auto& target = it->second;
    if (isProxyPort(dst.port())) {
      ctx_.counters().add(Counter::kDirectRefused);
      SLUICE_LOG_LIMITED(refused_log_, logger(), spdlog::level::warn,
                         "pod {}: refused a connection to the proxy port {} of pod {}",
                         pod.spec.name_namespace, formatEndpoint(dst), target->spec.name_namespace);
      return reset();
    }
    auto live = record(Direction::kOutbound, Path::kLocalHandoff, pod, a->peer, dst);
    live->rec.destination_service = a->serviceName();
    if (live->rec.destination_service.empty()) live->rec.inbound_service = ctx_.inboundService(dst);
    live->rec.source_principal = pod.spec.identity;
    live->rec.destination_principal = target->spec.identity;
    live->dest_pod_uid = target->spec.uid;
    live->dest_pod = target->spec.name_namespace;
    if (deny(live)) return reset();
    // The client's address of the destination's family (a.peer is the
    // source pod's address of that family).
    auto upstream = upstreamSocket(*target, SLUICE_MARK_INBOUND_APP, dst.family(), a->peer.ip());
    if (!upstream) return reset();
    UniqueFd client = std::move(a->client);
    auto source = a->pod;  // (arguments are evaluated in any order: not a-> next to move(a))
    plain_.open(std::move(live), std::move(source), target, std::move(client), std::move(*upstream),
                dst, std::move(a));
    return;
  }
  if (hbone_ && directory_) {
    if (auto remote = directory_->meshed(dst.ip())) {
      // Meshed destination on another node: mutual TLS through a tunnel.
      hbone_->open(std::move(a), *remote);
      return;
    }
  }
  auto upstream = upstreamSocket(pod, SLUICE_MARK_MINE, dst.family(), {});
  if (!upstream) return reset();
  auto live = record(Direction::kOutbound, Path::kPassthrough, pod, a->peer, dst);
  live->rec.destination_service = a->serviceName();
  UniqueFd client = std::move(a->client);
  auto source = a->pod;
  plain_.open(std::move(live), std::move(source), nullptr, std::move(client), std::move(*upstream),
              dst, std::move(a));
}

void Router::inbound(const std::shared_ptr<PodState>& pod, UniqueFd client, const SockAddr& peer,
                     const SockAddr& dst) {
  if (isProxyPort(dst.port())) {
    ctx_.counters().add(Counter::kDirectRefused);
    setLinger0(client.get());
    SLUICE_LOG_LIMITED(refused_log_, logger(), spdlog::level::warn,
                       "pod {}: refused a direct connection from {} to the proxy port {}",
                       pod->spec.name_namespace, formatEndpoint(peer), formatEndpoint(dst));
    return;
  }
  const unsigned limit = ctx_.config.max_connections_per_pod;
  auto share = SourceShare::take(pod, peer.ip(), sourceShare(limit), peer.port());
  if (!share) {
    ctx_.counters().add(Counter::kLimitRejected);
    setLinger0(client.get());
    SLUICE_LOG_LIMITED(share_log_, logger(), spdlog::level::warn,
                       "pod {}: {} holds {} inbound connections, half its connection limit {}; "
                       "refusing another from it (its other peers are still taken)",
                       pod->spec.name_namespace, peer.ip().str(), sourceShare(limit), limit);
    return;
  }
  auto live = record(Direction::kInbound, Path::kInbound, *pod, peer, dst);
  live->rec.destination_service = ctx_.inboundService(dst);
  live->rec.destination_principal = pod->spec.identity;
  live->dest_pod_uid = pod->spec.uid;
  live->dest_pod = pod->spec.name_namespace;
  if (deny(live)) {
    setLinger0(client.get());
    return;
  }
  auto upstream = upstreamSocket(*pod, SLUICE_MARK_INBOUND_APP, dst.family(), peer.ip());
  if (!upstream) return;
  plain_.open(std::move(live), pod, nullptr, std::move(client), std::move(*upstream), dst, nullptr,
              std::move(share));
}

// --- AttemptSink ---

void Router::attemptResult(Attempt& a, bool ok) {
  auto now = std::chrono::steady_clock::now();
  auto latency = std::chrono::duration_cast<std::chrono::microseconds>(now - a.attemptStart());
  if (balancer_.result(a.dst, ok, latency, now)) {
    ctx_.counters().add(Counter::kLbEjections);
    SLUICE_LOG_LIMITED(eject_log_, logger(), spdlog::level::warn,
                       "service {}: endpoint {} ejected after {} consecutive connect failures",
                       a.serviceName(), formatEndpoint(a.dst), ctx_.config.lb_eject_after);
  }
}

void Router::attemptReleased(Attempt& a) { balancer_.closed(a.dst); }

bool Router::attemptRetry(std::unique_ptr<Attempt>& a, std::string_view why) {
  if (stopping_ || a->tried().size() >= std::max(1u, ctx_.config.lb_max_attempts) ||
      a->tried().size() >= a->service()->endpoints.size()) {
    SLUICE_LOG_LIMITED(no_attempts_log_, logger(), spdlog::level::warn,
                       "service {}: connect to {} failed ({}); no attempts left", a->serviceName(),
                       formatEndpoint(a->dst), why);
    return false;
  }
  balancer_.closed(a->dst);
  a->unpick();
  ctx_.counters().add(Counter::kLbRetries);
  SLUICE_LOG_LIMITED(retry_log_, logger(), spdlog::level::info,
                     "service {}: connect to {} failed ({}); retrying on another endpoint",
                     a->serviceName(), formatEndpoint(a->dst), why);
  // Not from inside the failing connection's completion: on the next one.
  deferred_.push_back(std::move(a));
  if (!soon_.busy()) soon_.soon(ctx_.ring);
  return true;
}

void Router::runDeferred(const io_uring_cqe&) {
  auto due = std::move(deferred_);
  deferred_.clear();
  for (auto& a : due) route(std::move(a));
}

void Router::shutdown() {
  stopping_ = true;
  for (auto& a : deferred_) setLinger0(a->client.get());
  deferred_.clear();
}

}  // namespace sluice::ztunnel::proxy
