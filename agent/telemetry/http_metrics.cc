#include "agent/telemetry/http_metrics.h"

#include <algorithm>
#include <cassert>

#include "agent/telemetry/peers.h"

namespace sluice::agent::telemetry {

namespace {

using ztunnel::AppProtocol;
using ztunnel::ConnectionRecord;
using ztunnel::RequestRecord;

constexpr size_t kBuckets = kEnvoyBuckets.size() + 1;  // + Inf
constexpr size_t kRequestProtocolLabel = 20;           // in TcpMetrics::labelNames()
constexpr size_t kResponseFlagsLabel = 21;

// One worker's counts for a series (only that worker writes it).
struct alignas(64) Cell {
  std::atomic<uint64_t> duration[kBuckets]{}, request_bytes[kBuckets]{}, response_bytes[kBuckets]{};
  std::atomic<uint64_t> duration_us{0}, request_sum{0}, response_sum{0};
};

void bump(std::atomic<uint64_t>& a, uint64_t n) {
  a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// What distinguishes the series of one connection from each other: what
// the labels show of a request. request_protocol is "http" for HTTP/1.1 and
// HTTP/2 alike (Istio), so those two share a series; gRPC has its own.
uint64_t outcomeKey(const RequestRecord& r) {
  uint64_t grpc = r.protocol == AppProtocol::kGrpc;
  return (grpc << 48) | (uint64_t(uint32_t(r.status) & 0xffff) << 32) | uint32_t(r.grpc_status);
}

}  // namespace

size_t bucketOf(double v) {
  return std::lower_bound(kEnvoyBuckets.begin(), kEnvoyBuckets.end(), v) - kEnvoyBuckets.begin();
}

size_t HttpMetrics::KeyHash::operator()(const Key& k) const {
  return TcpMetrics::ViewsHash{}(k.labels) ^ (k.outcome * 0x9e3779b97f4a7c15ULL);
}

struct HttpMetrics::Series {
  Series(const Key& k, const RequestRecord& r, unsigned workers)
      : values(k.labels.begin(), k.labels.end()),
        key{views(values), k.outcome},
        rendered(render(values, r)),
        cells(std::make_unique<Cell[]>(workers)),
        workers(workers) {}
  static TcpMetrics::LabelViews views(const std::vector<std::string>& values) {
    TcpMetrics::LabelViews v;
    std::copy(values.begin(), values.end(), v.begin());
    return v;
  }
  static std::string render(const std::vector<std::string>& values, const RequestRecord& r) {
    std::vector<Label> labels;
    labels.reserve(values.size() + 2);
    const auto& names = TcpMetrics::labelNames();
    for (size_t i = 0; i < values.size(); ++i) labels.emplace_back(names[i], values[i]);
    std::string code = std::to_string(r.status);  // Label views its value: keep them here
    std::string grpc = r.grpc_status >= 0 ? std::to_string(r.grpc_status) : "";
    labels.emplace_back("response_code", code);
    labels.emplace_back("grpc_response_status", grpc);
    return renderLabels(labels);
  }
  void sum(std::atomic<uint64_t> (Cell::*field)[kBuckets], uint64_t out[kBuckets]) const {
    for (unsigned w = 0; w < workers; ++w)
      for (size_t b = 0; b < kBuckets; ++b)
        out[b] += (cells[w].*field)[b].load(std::memory_order_relaxed);
  }
  uint64_t total(std::atomic<uint64_t> Cell::*field) const {
    uint64_t s = 0;
    for (unsigned w = 0; w < workers; ++w) s += (cells[w].*field).load(std::memory_order_relaxed);
    return s;
  }
  const std::vector<std::string> values;  // never resized: `key` views them
  const Key key;
  const std::string rendered;  // {reporter="source",...,grpc_response_status=""}, rendered once
  std::unique_ptr<Cell[]> cells;
  const unsigned workers;
  HoldCount held;                       // the open connections counting into it
  std::atomic<int64_t> last_active{0};  // ticks() of the last request
};

struct alignas(64) HttpMetrics::Worker {
  struct Conn {
    struct Entry {
      uint64_t key;
      std::shared_ptr<Series> series[2];  // by reporter, held; null: not reported (or over the cap)
    };
    std::vector<Entry> outcomes;  // a handful: 200, 503, ... (kMaxOutcomesPerConnection)
  };
  std::unordered_map<uint64_t, Conn> conns;  // by connection id
  SeriesCache<Key, Series, KeyHash> cache;   // series this worker has held
  std::string service;                       // scratch: the destination_service FQDN
};

HttpMetrics::HttpMetrics(HttpMetricsConfig config, const TcpMetrics& labels,
                         std::function<Clock::time_point()> now)
    : config_(config),
      labels_(labels),
      now_(std::move(now)),
      epoch_(now_()),
      cap_(config_.max_series) {
  config_.workers = std::max(1u, config_.workers);
  for (unsigned i = 0; i < config_.workers; ++i) workers_.push_back(std::make_unique<Worker>());
}

HttpMetrics::~HttpMetrics() = default;

int64_t HttpMetrics::ticks(Clock::time_point t) const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t - epoch_).count();
}

std::shared_ptr<HttpMetrics::Series> HttpMetrics::hold(Worker& w, const ConnectionRecord& c,
                                                       Reporter reporter, const RequestRecord& r,
                                                       const Peers& peers) {
  Key key{labels_.labelViews(c, reporter, peers, w.service), outcomeKey(r)};
  key.labels[kRequestProtocolLabel] = r.protocol == AppProtocol::kGrpc ? "grpc" : "http";
  // No response: the connection's failure, if it failed (a denied CONNECT:
  // DENY, as its TCP series).
  if (r.status == 0) key.labels[kResponseFlagsLabel] = responseFlags(c);
  if (auto s = w.cache.hold(key, cap_.evicted())) return s;
  std::shared_ptr<Series> s;
  {
    std::lock_guard lk(mu_);
    if (auto it = series_.find(key); it != series_.end()) {
      s = it->second;
    } else {
      if (!cap_.admit(series_, now_, [this](Clock::time_point now) { evictIdleLocked(now); }))
        return nullptr;
      s = std::make_shared<Series>(key, r, config_.workers);
      series_.emplace(s->key, s);  // the key views the series' own values
    }
    // Under mu_, a series in series_ is alive: eviction (under mu_ too) sees the hold.
    [[maybe_unused]] bool held = s->held.tryHold();
    assert(held);
  }
  w.cache.add(s);
  return s;
}

void HttpMetrics::request(unsigned worker, const ConnectionRecord& c, const RequestRecord& r) {
  if (worker >= workers_.size()) return;
  Worker& w = *workers_[worker];
  auto& conn = w.conns[c.id];
  uint64_t key = outcomeKey(r);
  auto it = std::find_if(conn.outcomes.begin(), conn.outcomes.end(),
                         [&](const auto& e) { return e.key == key; });
  // An outcome beyond the connection's kMaxOutcomesPerConnection, or one
  // whose series the cap refused: held for this request alone (a peer that
  // answers each request differently neither grows the list nor loses
  // counts; a refused series is asked for again next time).
  Worker::Conn::Entry single;
  const Worker::Conn::Entry* entry = it == conn.outcomes.end() ? nullptr : &*it;
  if (!entry) {
    Worker::Conn::Entry e{key, {}};
    bool handoff = c.path == ztunnel::Path::kLocalHandoff;
    bool outbound = c.direction == ztunnel::Direction::kOutbound;
    Peers peers = labels_.peersOf(c);
    if (handoff || outbound) e.series[0] = hold(w, c, Reporter::kSource, r, peers);
    if (handoff || !outbound) e.series[1] = hold(w, c, Reporter::kDestination, r, peers);
    if ((e.series[0] || e.series[1]) && conn.outcomes.size() < kMaxOutcomesPerConnection) {
      conn.outcomes.push_back(std::move(e));
      entry = &conn.outcomes.back();
    } else {
      single = std::move(e);
      entry = &single;
    }
  }
  int64_t now = ticks(now_());
  double ms = static_cast<double>(r.duration_us) / 1000.0;
  for (const auto& s : entry->series) {
    if (!s) continue;
    Cell& cell = s->cells[worker];
    bump(cell.duration[bucketOf(ms)], 1);
    bump(cell.request_bytes[bucketOf(static_cast<double>(r.request_bytes))], 1);
    bump(cell.response_bytes[bucketOf(static_cast<double>(r.response_bytes))], 1);
    bump(cell.duration_us, static_cast<uint64_t>(std::max<int64_t>(r.duration_us, 0)));
    bump(cell.request_sum, r.request_bytes);
    bump(cell.response_sum, r.response_bytes);
    s->last_active.store(now, std::memory_order_relaxed);
  }
  for (const auto& s : single.series)
    if (s) s->held.release();
}

void HttpMetrics::closed(unsigned worker, const ConnectionRecord& record) {
  if (worker >= workers_.size()) return;
  auto& conns = workers_[worker]->conns;
  auto it = conns.find(record.id);
  if (it == conns.end()) return;
  for (auto& e : it->second.outcomes)
    for (auto& s : e.series)
      if (s) s->held.release();
  conns.erase(it);
}

void HttpMetrics::evictIdleLocked(Clock::time_point now) {
  cap_.evictIdle(series_, ticks(now) - config_.idle.count());
}

size_t HttpMetrics::seriesCount() const {
  std::lock_guard lk(mu_);
  return series_.size();
}

void HttpMetrics::write(TextWriter& out) {
  std::vector<std::shared_ptr<Series>> snap;
  {
    std::lock_guard lk(mu_);
    evictIdleLocked(now_());
    for (const auto& [key, s] : series_) snap.push_back(s);
  }
  std::sort(snap.begin(), snap.end(),
            [](const auto& a, const auto& b) { return a->rendered < b->rendered; });
  out.family("istio_requests_total", MetricType::kCounter, "The total number of requests");
  for (const auto& s : snap) {
    uint64_t counts[kBuckets] = {};
    s->sum(&Cell::duration, counts);
    uint64_t n = 0;
    for (uint64_t c : counts) n += c;
    out.sample("istio_requests_total", s->rendered, n);
  }
  struct Family {
    const char* name;
    const char* help;
    std::atomic<uint64_t> (Cell::*buckets)[kBuckets];
    std::atomic<uint64_t> Cell::*sum;
    double scale;  // sum's unit -> the family's
  };
  static constexpr Family kFamilies[] = {
      {"istio_request_duration_milliseconds", "Request duration in milliseconds", &Cell::duration,
       &Cell::duration_us, 1e-3},
      {"istio_request_bytes", "Request body size in bytes", &Cell::request_bytes,
       &Cell::request_sum, 1},
      {"istio_response_bytes", "Response body size in bytes", &Cell::response_bytes,
       &Cell::response_sum, 1},
  };
  for (const auto& f : kFamilies) {
    out.family(f.name, MetricType::kHistogram, f.help);
    for (const auto& s : snap) {
      uint64_t counts[kBuckets] = {};
      s->sum(f.buckets, counts);
      out.histogram(f.name, s->rendered, kEnvoyBuckets, counts,
                    static_cast<double>(s->total(f.sum)) * f.scale);
    }
  }
  out.family("sluice_telemetry_http_series", MetricType::kGauge,
             "Label sets of the istio_request* metrics held now");
  out.sample("sluice_telemetry_http_series", "", static_cast<uint64_t>(snap.size()));
  out.family("sluice_telemetry_http_series_dropped_total", MetricType::kCounter,
             "HTTP label sets not created because the series cap was reached");
  out.sample("sluice_telemetry_http_series_dropped_total", "", seriesDropped());
}

}  // namespace sluice::agent::telemetry
