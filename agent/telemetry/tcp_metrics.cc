#include "agent/telemetry/tcp_metrics.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cassert>
#include <cstring>

#include "agent/telemetry/peers.h"
#include "sluice/common/addr.h"

namespace sluice::agent::telemetry {

namespace {

using ztunnel::CloseReason;
using ztunnel::ConnectionRecord;

// Positions in labelNames(). Each end has 8 labels from its first one
// (fillPeer): workload, canonical service, canonical revision, namespace,
// principal, app, version, cluster.
enum LabelIndex : size_t {
  kReporter = 0,
  kSourceWorkload = 1,
  kDestinationService = 9,
  kDestinationServiceNamespace = 10,
  kDestinationServiceName = 11,
  kDestinationWorkload = 12,
  kRequestProtocol = 20,
  kResponseFlags = 21,
  kSecurityPolicy = 22,
  kLabelCount = 23,
};

constexpr const char* kUnknown = "unknown";

// The 8 labels of one end, from `first`: workload, canonical service and
// revision, namespace, principal, app, version, cluster. Istio's app/version
// labels carry the canonical service and revision, not the raw pod labels.
template <typename Values>
void fillPeer(Values& v, size_t first, const WorkloadInfo* w, std::string_view principal) {
  if (w) {
    v[first + 0] = w->workload;
    v[first + 1] = w->canonical_service;
    v[first + 2] = w->canonical_revision;
    v[first + 3] = w->namespace_;
    v[first + 5] = w->canonical_service;
    v[first + 6] = w->canonical_revision;
    v[first + 7] = w->cluster;
  }
  v[first + 4] = principal;
}

}  // namespace

const char* responseFlags(const ConnectionRecord& r) {
  switch (r.reason) {
    case CloseReason::kDenied:
      return "DENY";
    case CloseReason::kRefused:  // the destination's node answered the CONNECT with this status
      // Its authorization refused this client: DENY on both reporters.
      return ztunnel::refusedByPolicy(r.reason_detail) ? "DENY" : "CONNECT";
    case CloseReason::kNoTunnel:  // detail: why the tunnel closed before carrying the stream
      if (r.reason_detail.starts_with("tls_") || r.reason_detail == "peer_refused")
        return "TLS_FAILURE";
      if (r.reason_detail.starts_with("h2_")) return "H2_HANDSHAKE_FAILURE";
      return "CONNECT";
    case CloseReason::kConnectTimeout:
    case CloseReason::kConnectError:
    case CloseReason::kSocketError:
    case CloseReason::kNotThisPod:
    case CloseReason::kBadRequest:
    case CloseReason::kConnectionLimit:
    case CloseReason::kNoEndpoint:  // ztunnel: "no healthy upstream"
      return "CONNECT";
    case CloseReason::kNoCertificate:  // this node had no identity to present (ztunnel's flag)
      return "IDENTITY_ERROR";
    default:
      return "-";
  }
}

// One worker's counts for a series, alone on its cache line: a worker adds
// to its own cell only, a scrape reads them all.
struct alignas(64) Cell {
  std::atomic<uint64_t> opened{0}, closed{0}, failed{0};
  std::atomic<uint64_t> sent{0};      // server -> client (istio_tcp_sent_bytes_total)
  std::atomic<uint64_t> received{0};  // client -> server (istio_tcp_received_bytes_total)
};

struct TcpMetrics::Series {
  Series(const LabelViews& v, unsigned workers)
      : values(v.begin(), v.end()),
        key(views(values)),
        rendered(render(values)),
        cells(std::make_unique<Cell[]>(workers)),
        workers(workers) {}
  static LabelViews views(const std::vector<std::string>& values) {
    LabelViews v;
    std::copy(values.begin(), values.end(), v.begin());
    return v;
  }
  static std::string render(const std::vector<std::string>& values) {
    std::vector<Label> labels;
    labels.reserve(values.size());
    for (size_t i = 0; i < values.size(); ++i) labels.emplace_back(labelNames()[i], values[i]);
    return renderLabels(labels);
  }
  uint64_t total(std::atomic<uint64_t> Cell::*field) const {
    uint64_t sum = 0;
    for (unsigned i = 0; i < workers; ++i) sum += (cells[i].*field).load(std::memory_order_relaxed);
    return sum;
  }

  const std::vector<std::string> values;  // never resized: `key` views them
  const LabelViews key;
  const std::string rendered;  // {reporter="source",...}, rendered once
  std::unique_ptr<Cell[]> cells;
  const unsigned workers;
  HoldCount held;                       // the open connections counting into it
  std::atomic<int64_t> last_active{0};  // ticks() of the last open or close
};

struct alignas(64) TcpMetrics::Worker {
  struct Conn {
    std::shared_ptr<Series> series[2];  // by reporter; null: not reported (or over the cap)
  };
  using Conns = std::unordered_map<uint64_t, Conn>;
  Conns conns;                          // open connections of this worker, by record id
  std::vector<Conns::node_type> spare;  // nodes of closed connections, reused by opened()
  SeriesCache<LabelViews, Series, ViewsHash> cache;  // series this worker has held
  std::string service;                               // scratch: the destination_service FQDN
};

size_t TcpMetrics::ViewsHash::operator()(const LabelViews& v) const {
  size_t h = 0;
  for (auto s : v) h = (h ^ std::hash<std::string_view>{}(s)) * 0x100000001b3ULL;
  return h;
}

TcpMetrics::TcpMetrics(TcpMetricsConfig config, const WorkloadIndex* workloads,
                       std::function<Clock::time_point()> now)
    : config_(std::move(config)),
      workloads_(workloads),
      now_(std::move(now)),
      epoch_(now_()),
      cap_(config_.max_series) {
  config_.workers = std::max(1u, config_.workers);
  for (unsigned i = 0; i < config_.workers; ++i) workers_.push_back(std::make_unique<Worker>());
}

TcpMetrics::~TcpMetrics() = default;

int64_t TcpMetrics::ticks(Clock::time_point t) const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t - epoch_).count();
}

const std::vector<std::string_view>& TcpMetrics::labelNames() {
  static const std::vector<std::string_view> names = {
      "reporter",
      "source_workload",
      "source_canonical_service",
      "source_canonical_revision",
      "source_workload_namespace",
      "source_principal",
      "source_app",
      "source_version",
      "source_cluster",
      "destination_service",
      "destination_service_namespace",
      "destination_service_name",
      "destination_workload",
      "destination_canonical_service",
      "destination_canonical_revision",
      "destination_workload_namespace",
      "destination_principal",
      "destination_app",
      "destination_version",
      "destination_cluster",
      "request_protocol",
      "response_flags",
      "connection_security_policy",
  };
  return names;
}

TcpMetrics::LabelViews TcpMetrics::labelViews(const ConnectionRecord& r, Reporter reporter,
                                              const Peers& peers, std::string& service) const {
  const WorkloadInfo* src = peers.source();
  const WorkloadInfo* dst = peers.destination();

  LabelViews v{};
  v[kReporter] = reporter == Reporter::kSource ? "source" : "destination";
  fillPeer(v, kSourceWorkload, src, r.source_principal);
  // A same-node handoff dialled by address: its destination names the
  // Service the engine guessed (an inbound record's destination_service is
  // that guess already).
  std::string_view dest_service =
      r.destination_service.empty() && reporter == Reporter::kDestination ? r.inbound_service
                                                                          : r.destination_service;
  if (auto slash = dest_service.find('/'); slash != std::string_view::npos) {
    // <name>.<namespace>.svc.<domain>; the name and namespace labels view it.
    std::string_view ns = dest_service.substr(0, slash), name = dest_service.substr(slash + 1);
    service.assign(name).append(".").append(ns).append(".svc.").append(config_.cluster_domain);
    std::string_view fqdn = service;
    v[kDestinationService] = fqdn;
    v[kDestinationServiceName] = fqdn.substr(0, name.size());
    v[kDestinationServiceNamespace] = fqdn.substr(name.size() + 1, ns.size());
  }
  fillPeer(v, kDestinationWorkload, dst, r.destination_principal);
  v[kRequestProtocol] = "tcp";
  v[kResponseFlags] = "-";
  v[kSecurityPolicy] = r.mutual_tls ? "mutual_tls" : kUnknown;
  for (auto& s : v)
    if (s.empty()) s = kUnknown;
  return v;
}

Peers TcpMetrics::peersOf(const ConnectionRecord& r) const {
  return Peers(workloads_ ? workloads_->current() : nullptr, r, config_.cluster_id);
}

std::vector<std::string> TcpMetrics::labelValues(const ConnectionRecord& r,
                                                 Reporter reporter) const {
  Peers peers = peersOf(r);
  std::string service;
  auto v = labelViews(r, reporter, peers, service);
  return {v.begin(), v.end()};
}

std::shared_ptr<TcpMetrics::Series> TcpMetrics::findOrCreateLocked(const LabelViews& key) {
  if (auto it = series_.find(key); it != series_.end()) return it->second;
  if (!cap_.admit(series_, now_, [this](Clock::time_point now) { evictIdleLocked(now); }))
    return nullptr;
  auto s = std::make_shared<Series>(key, config_.workers);
  series_.emplace(s->key, s);  // the key views the series' own values
  added_.push_back(s);
  return s;
}

std::shared_ptr<TcpMetrics::Series> TcpMetrics::hold(Worker& w, const LabelViews& key) {
  if (auto s = w.cache.hold(key, cap_.evicted())) return s;
  std::shared_ptr<Series> s;
  {
    std::lock_guard lk(mu_);
    s = findOrCreateLocked(key);
    if (!s) return nullptr;
    // Under mu_, a series in series_ is alive: eviction (under mu_ too) sees the hold.
    [[maybe_unused]] bool held = s->held.tryHold();
    assert(held);
  }
  w.cache.add(s);
  return s;
}

void TcpMetrics::opened(unsigned worker, const ConnectionRecord& record) {
  assert(worker < workers_.size());
  if (worker >= workers_.size()) return;
  Reporter reporters[2] = {};
  size_t n = 0;
  if (record.path == ztunnel::Path::kLocalHandoff) {
    // One proxy hop serves both ends: report it as each would.
    reporters[n++] = Reporter::kSource;
    reporters[n++] = Reporter::kDestination;
  } else {
    reporters[n++] = record.direction == ztunnel::Direction::kOutbound ? Reporter::kSource
                                                                       : Reporter::kDestination;
  }
  Worker& w = *workers_[worker];
  Worker::Conn conn;
  int64_t now = ticks(now_());
  Peers peers = peersOf(record);
  for (size_t i = 0; i < n; ++i) {
    auto s = hold(w, labelViews(record, reporters[i], peers, w.service));
    if (!s) continue;
    s->last_active.store(now, std::memory_order_relaxed);
    // An upgrade's adopted connection was counted opened by the predecessor.
    if (!record.adopted) s->cells[worker].opened.fetch_add(1, std::memory_order_relaxed);
    conn.series[i] = std::move(s);
  }
  if (auto it = w.conns.find(record.id); it != w.conns.end()) {
    for (auto& s : it->second.series)
      if (s) s->held.release();
    it->second = std::move(conn);
  } else if (!w.spare.empty()) {
    auto node = std::move(w.spare.back());
    w.spare.pop_back();
    node.key() = record.id;
    node.mapped() = std::move(conn);
    w.conns.insert(std::move(node));
  } else {
    w.conns.emplace(record.id, std::move(conn));
  }
}

void TcpMetrics::transferred(unsigned worker, const ConnectionRecord& record, uint64_t sent,
                             uint64_t received) {
  if (worker >= workers_.size()) return;
  auto& conns = workers_[worker]->conns;
  auto it = conns.find(record.id);
  if (it == conns.end()) return;
  // The record's "sent" is client -> destination: Istio's received bytes
  // (the request direction), and its "received" Istio's sent bytes.
  for (const auto& s : it->second.series) {
    if (!s) continue;
    Cell& c = s->cells[worker];
    if (sent) c.received.fetch_add(sent, std::memory_order_relaxed);
    if (received) c.sent.fetch_add(received, std::memory_order_relaxed);
  }
}

void TcpMetrics::closed(unsigned worker, const ConnectionRecord& record) {
  if (worker >= workers_.size()) return;
  Worker& w = *workers_[worker];
  auto it = w.conns.find(record.id);
  if (it == w.conns.end()) return;
  const char* flags = responseFlags(record);
  bool failed = std::strcmp(flags, "-") != 0;
  // Handed over in an upgrade: still open, and the successor counts its close.
  const bool counted = record.reason != CloseReason::kHandedOver;
  int64_t now = ticks(now_());
  for (auto& s : it->second.series) {
    if (!s) continue;
    if (!counted) {
    } else if (!failed) {
      s->cells[worker].closed.fetch_add(1, std::memory_order_relaxed);
    } else {
      // As ztunnel: opened (and bytes) under "-", the close and the failure
      // under the flags the connection ended with.
      auto key = s->key;
      key[kResponseFlags] = flags;
      if (auto f = hold(w, key)) {
        f->cells[worker].closed.fetch_add(1, std::memory_order_relaxed);
        f->cells[worker].failed.fetch_add(1, std::memory_order_relaxed);
        f->last_active.store(now, std::memory_order_relaxed);
        f->held.release();
      }
    }
    s->last_active.store(now, std::memory_order_relaxed);
    s->held.release();
    s.reset();
  }
  constexpr size_t kSpareNodes = 64;
  if (w.spare.size() < kSpareNodes)
    w.spare.push_back(w.conns.extract(it));
  else
    w.conns.erase(it);
}

void TcpMetrics::evictIdleLocked(Clock::time_point now) {
  if (cap_.evictIdle(series_, ticks(now) - config_.idle.count()) > 0) removed_ = true;
}

void TcpMetrics::evictIdle() {
  std::lock_guard lk(mu_);
  evictIdleLocked(now_());
}

size_t TcpMetrics::seriesCount() const {
  std::lock_guard lk(mu_);
  return series_.size();
}

void TcpMetrics::write(TextWriter& out) {
  std::lock_guard render(render_mu_);
  std::vector<std::shared_ptr<Series>> fresh;
  bool removed;
  {
    // Under mu_ only what changed since the last scrape: formatting
    // thousands of series must not hold up connections opening on workers.
    std::lock_guard lk(mu_);
    // The idle scan walks every series under mu_: at most once a second.
    if (auto now = now_(); now - last_scrape_eviction_ >= std::chrono::seconds(1)) {
      last_scrape_eviction_ = now;
      evictIdleLocked(now);
    }
    fresh.swap(added_);
    removed = std::exchange(removed_, false);
  }
  auto byLabels = [](const auto& a, const auto& b) { return a->rendered < b->rendered; };
  if (!fresh.empty()) {
    std::sort(fresh.begin(), fresh.end(), byLabels);
    auto middle = sorted_.insert(sorted_.end(), fresh.begin(), fresh.end());
    std::inplace_merge(sorted_.begin(), middle, sorted_.end(), byLabels);
  }
  if (removed) std::erase_if(sorted_, [](const auto& s) { return s->held.dead(); });
  const auto& snap = sorted_;
  struct Family {
    const char* name;
    const char* help;
    std::atomic<uint64_t> Cell::*field;
    bool only_nonzero;  // created by ztunnel at the first failure only
  };
  static constexpr Family kFamilies[] = {
      {"istio_tcp_connections_opened_total", "The total number of TCP connections opened",
       &Cell::opened, false},
      {"istio_tcp_connections_closed_total", "The total number of TCP connections closed",
       &Cell::closed, false},
      {"istio_tcp_connections_failed_total", "The total number of TCP connections that failed",
       &Cell::failed, true},
      {"istio_tcp_sent_bytes_total",
       "The size of total bytes sent during response in case of a TCP connection", &Cell::sent,
       false},
      {"istio_tcp_received_bytes_total",
       "The size of total bytes received during request in case of a TCP connection",
       &Cell::received, false},
  };
  for (const auto& f : kFamilies) {
    out.family(f.name, MetricType::kCounter, f.help);
    for (const auto& s : snap) {
      uint64_t v = s->total(f.field);
      if (v == 0 && f.only_nonzero) continue;
      out.sample(f.name, s->rendered, v);
    }
  }
  out.family("sluice_telemetry_series", MetricType::kGauge,
             "Label sets of the istio_tcp_* metrics held now");
  out.sample("sluice_telemetry_series", "", static_cast<uint64_t>(snap.size()));
  out.family("sluice_telemetry_series_dropped_total", MetricType::kCounter,
             "Label sets not created because the series cap was reached (their counts are lost)");
  out.sample("sluice_telemetry_series_dropped_total", "", seriesDropped());
  out.family("sluice_telemetry_series_evicted_total", MetricType::kCounter,
             "Label sets dropped after being idle (no open connection, no change)");
  out.sample("sluice_telemetry_series_evicted_total", "", seriesEvicted());
}

}  // namespace sluice::agent::telemetry
