#include "ztunnel/proxy/records.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstddef>

#include "sluice/common/log.h"
#include "ztunnel/proxy/context.h"

namespace sluice::ztunnel {

const char* toString(Direction d) { return d == Direction::kInbound ? "inbound" : "outbound"; }

const char* toString(AppProtocol p) {
  switch (p) {
    case AppProtocol::kTcp:
      return "tcp";
    case AppProtocol::kHttp1:
      return "http/1.1";
    case AppProtocol::kHttp2:
      return "http/2";
    case AppProtocol::kGrpc:
      return "grpc";
  }
  return "?";
}

const char* toString(Path p) {
  switch (p) {
    case Path::kPassthrough:
      return "passthrough";
    case Path::kLocalHandoff:
      return "local_handoff";
    case Path::kHbone:
      return "hbone";
    case Path::kInbound:
      return "inbound";
    case Path::kNone:
      return "none";
  }
  return "?";
}

const char* toString(ConnState s) { return s == ConnState::kOpen ? "open" : "closed"; }

const char* toString(CloseReason r) {
  switch (r) {
    case CloseReason::kNone:
      return "";
    case CloseReason::kEof:
      return "eof";
    case CloseReason::kReset:
      return "reset";
    case CloseReason::kConnectTimeout:
      return "connect_timeout";
    case CloseReason::kConnectError:
      return "connect_error";
    case CloseReason::kRecvError:
      return "recv_error";
    case CloseReason::kSendError:
      return "send_error";
    case CloseReason::kSocketError:
      return "socket_error";
    case CloseReason::kNoTunnel:
      return "no_tunnel";
    case CloseReason::kTunnelClosed:
      return "tunnel_closed";
    case CloseReason::kStreamReset:
      return "stream_reset";
    case CloseReason::kStreamClosedEarly:
      return "stream_closed_early";
    case CloseReason::kRefused:
      return "refused";
    case CloseReason::kNotThisPod:
      return "refused_not_this_pod";
    case CloseReason::kBadRequest:
      return "bad_request";
    case CloseReason::kConnectionLimit:
      return "connection_limit";
    case CloseReason::kDenied:
      return "denied";
    case CloseReason::kPodRemoved:
      return "pod_removed";
    case CloseReason::kProxyShutdown:
      return "proxy_shutdown";
    case CloseReason::kHandedOver:
      return "handed_over";
    case CloseReason::kNoCertificate:
      return "no_certificate";
    case CloseReason::kNoEndpoint:
      return "no_endpoint";
  }
  return "?";
}

std::string ConnectionRecord::reasonText() const {
  std::string s = toString(reason);
  if (!reason_detail.empty()) s += ": " + reason_detail;
  if (retried) s += " (retried)";
  return s;
}

namespace {
constexpr CounterInfo kCounters[] = {
    {"proxy", "accepted", "app connections accepted (15001, 15006, CONNECT streams on 15008)"},
    {"proxy", "active", "app connections open now", CounterKind::kGauge},
    {"proxy", "closed", "app connections closed"},
    {"proxy", "connect_failures", "upstream connects that failed or timed out"},
    {"proxy", "limit_rejected",
     "connections refused by a connection limit: the pod's, a source's share of it, or the agent's "
     "descriptor reserve"},
    {"proxy", "no_original_dst", "outbound connections without an original destination"},
    {"proxy", "direct_refused", "connections addressed to a proxy port itself"},
    {"proxy", "accept_errors", "accepts that failed (descriptor exhaustion: backed off)"},
    {"proxy", "certificate_waits", "connections that waited for their pod's certificate"},
    {"proxy", "no_certificate", "connections reset: the pod's certificate did not come"},
    {"proxy", "no_view", "outbound connections refused: no view of the mesh yet"},
    {"proxy", "ring_errors", "io_uring submissions the kernel refused (failed with EAGAIN)"},
    {"proxy", "denied", "inbound connections refused or reset by the authorization hook"},
    {"hbone", "tunnels_opened", "tunnels opened, outbound and inbound"},
    {"hbone", "tunnels_accepted", "TCP connections accepted on 15008"},
    {"hbone", "pending_evicted", "inbound handshakes closed to stay within the pending bound"},
    {"hbone", "connect_retries", "tunnel dials retried after 15008 refused"},
    {"hbone", "tunnels_active", "tunnels open now", CounterKind::kGauge},
    {"hbone", "handshake_failures", "TLS refused: bad or absent certificate, wrong peer"},
    {"hbone", "timeouts", "handshake or first CONNECT not within the deadline"},
    {"hbone", "bad_requests",
     "HTTP/2 protocol errors, floods nghttp2 ended (rapid reset) and requests that are not "
     "CONNECT"},
    {"hbone", "refused", "CONNECTs refused: not an address of the destination pod"},
    {"hbone", "outbound_handshake_refused",
     "connections reset: a new tunnel would exceed the outbound handshake bound"},
    {"hbone", "peer_tunnel_refused",
     "connections reset: the pod's tunnels to that destination are all full, at their bound"},
    {"lb", "picks", "endpoint choices for Service connections"},
    {"lb", "retries", "Service connects retried on another endpoint"},
    {"lb", "no_endpoint", "Service connections with no endpoint left"},
    {"lb", "ejections", "endpoints ejected after consecutive connect failures"},
    {"proxy", "spliced", "same-node connections whose app sockets were joined (splice armed)"},
    {"proxy", "splice_fallbacks",
     "same-node connections that could not be spliced (a hop on loopback TCP): proxied"},
    {"proxy", "busy_poll_hits", "busy polls that found work before the worker would have slept"},
    {"proxy", "busy_poll_misses",
     "busy polls that found nothing within --busy-poll-us (the worker then slept)"},
};
static_assert(std::size(kCounters) == static_cast<size_t>(Counter::kCount),
              "every Counter needs a row in kCounters");
}  // namespace

const CounterInfo& describe(Counter c) { return kCounters[static_cast<size_t>(c)]; }

namespace proxy {

void setLinger0(int fd) {
  linger lg{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

std::string peekPending(int fd) {
  char buf[kPeekMax];
  ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

void appSocketLinger0(Upstream& sock) {
  if (sock.setup.pending)
    sock.setup.linger0 = true;
  else
    setLinger0(sock.fd.get());
}

EngineStats Counters::snapshot() const {
  EngineStats s;
  for (size_t i = 0; i < s.values.size(); ++i) s.values[i] = v_[i].load(std::memory_order_relaxed);
  return s;
}

namespace {
int64_t nowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

Records::Records(bool access_log, ConnectionObserver* observer)
    : access_log_(access_log ? log::get("access") : nullptr), observer_(observer) {}

ConnectionRecord Records::view(const LiveRecord& live) {
  ConnectionRecord r = live.rec;
  r.bytes_sent = live.sent.load(std::memory_order_relaxed);
  r.bytes_received = live.received.load(std::memory_order_relaxed);
  r.duration_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - live.start)
                      .count();
  return r;
}

void Records::open(const std::shared_ptr<LiveRecord>& live) {
  live->rec.id = nextId();
  live->rec.state = ConnState::kOpen;
  int64_t now = nowUnixMs();
  live->start = std::chrono::steady_clock::now();
  if (live->rec.adopted && live->rec.start_unix_ms > 0 && live->rec.start_unix_ms <= now)
    live->start -= std::chrono::milliseconds(now - live->rec.start_unix_ms);
  else
    live->rec.start_unix_ms = now;
  {
    std::lock_guard lk(mu_);
    live->slot = open_.size();
    open_.push_back(live);
  }
  if (!live->may_retry) announce(*live);
}

void Records::close(LiveRecord& live, CloseReason reason, std::string detail, bool retried) {
  if (live.closed) return;
  live.closed = true;
  live.owner = nullptr;
  // live.rec becomes the final record in place (no copy of it beyond the
  // history slot, whose strings' storage is reused): from here on only
  // read, by snapshotOf (under the mutex) and the observer below.
  ConnectionRecord& r = live.rec;
  {
    std::lock_guard lk(mu_);
    r.state = ConnState::kClosed;
    r.reason = reason;
    r.reason_detail = std::move(detail);
    r.retried = retried;
    r.bytes_sent = live.sent.load(std::memory_order_relaxed);
    r.bytes_received = live.received.load(std::memory_order_relaxed);
    r.duration_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - live.start)
                        .count();
    if (live.slot < open_.size()) {
      auto& last = open_.back();
      last->slot = live.slot;
      open_[live.slot] = std::move(last);
      open_.pop_back();
      live.slot = SIZE_MAX;
    }
    if (closed_.size() < kClosedHistory)
      closed_.push_back(r);
    else
      closed_[closed_next_] = r;
    closed_next_ = (closed_next_ + 1) % kClosedHistory;
  }
  // A retried attempt was never announced: its connection goes on elsewhere.
  if (!retried) announce(live);
  if (observer_ && live.announced) observer_->closed(live.worker, r);
  if (!access_log_) return;
  access_log_->info(
      "{} pod={} src={} dst={} service={} path={} src_principal={} dst_principal={} mutual_tls={} "
      "sent={} received={} duration_ms={} reason={}{}",
      toString(r.direction), r.pod, r.source, r.destination,
      r.service().empty() ? "-" : r.service(), toString(r.path),
      r.source_principal.empty() ? "-" : r.source_principal,
      r.destination_principal.empty() ? "-" : r.destination_principal, r.mutual_tls, r.bytes_sent,
      r.bytes_received, r.duration_ms, r.reasonText(), r.adopted ? " adopted=true" : "");
}

std::vector<ConnectionRecord> Records::snapshot() const {
  std::lock_guard lk(mu_);
  std::vector<ConnectionRecord> out;
  out.reserve(closed_.size() + open_.size());
  size_t oldest = closed_.size() < kClosedHistory ? 0 : closed_next_;
  for (size_t i = 0; i < closed_.size(); ++i) out.push_back(closed_[(oldest + i) % closed_.size()]);
  size_t first_open = out.size();
  for (const auto& live : open_) out.push_back(view(*live));
  std::sort(out.begin() + static_cast<std::ptrdiff_t>(first_open), out.end(),
            [](const ConnectionRecord& a, const ConnectionRecord& b) { return a.id < b.id; });
  return out;
}

std::vector<std::shared_ptr<LiveRecord>> Records::openInbound(unsigned worker) const {
  std::lock_guard lk(mu_);
  std::vector<std::shared_ptr<LiveRecord>> out;
  for (const auto& live : open_)
    if (live->worker == worker && !live->dest_pod_uid.empty()) out.push_back(live);
  return out;
}

std::vector<std::shared_ptr<LiveRecord>> Records::openOn(unsigned worker) const {
  std::lock_guard lk(mu_);
  std::vector<std::shared_ptr<LiveRecord>> out;
  for (const auto& live : open_)
    if (live->worker == worker) out.push_back(live);
  return out;
}

InboundRequest inboundRequestOf(const LiveRecord& live) {
  InboundRequest r;
  r.path = live.rec.path;
  r.pod_uid = live.dest_pod_uid;
  r.pod = live.dest_pod;
  r.pod_principal = live.rec.destination_principal;
  r.source = live.source;
  r.destination = live.destination;
  r.source_principal = live.rec.source_principal;
  r.mutual_tls = live.rec.mutual_tls;
  return r;
}

}  // namespace proxy
}  // namespace sluice::ztunnel
