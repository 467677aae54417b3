// Istio's HTTP metrics at the node, fed by ConnectionObserver::request()
// (the engine's HTTP inspection, docs/architecture.md "HTTP golden
// metrics"): istio_requests_total, istio_request_duration_milliseconds,
// istio_request_bytes and istio_response_bytes, with the TCP label set
// (request_protocol "http" or "grpc") plus response_code and
// grpc_response_status. Reporters as for TCP: source for an outbound
// connection, destination for an inbound one, both for a same-node handoff.
//
// Data path: a connection's series are found once per (protocol, status,
// grpc status) and kept with the connection; the next request with the same
// outcome only adds to the worker's cells. The first one looks the series up
// as TcpMetrics does: by its label values as views of the record and the
// workload view (hashed, never rendered) in the worker's own cache, without
// a lock or an allocation; only a label set the worker has not seen takes
// mu_ (the shared map, where the series is created with its rendered label
// text). A connection holds its series (HoldCount) until closed().
// Cardinality as TcpMetrics: idle series are evicted, a cap drops new ones.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agent/telemetry/exposition.h"
#include "agent/telemetry/hold_count.h"
#include "agent/telemetry/tcp_metrics.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

// Envoy's default histogram boundaries, which Istio uses for all three of its
// HTTP histograms (milliseconds for the duration, bytes for the sizes: Istio
// sets no override for them).
inline constexpr std::array<double, 19> kEnvoyBuckets = {
    0.5,  1,    5,     10,    25,    50,     100,    250,     500,    1000,
    2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000};
// The bucket `v` falls in: the first bound >= v, kEnvoyBuckets.size() for +Inf.
size_t bucketOf(double v);

struct HttpMetricsConfig {
  unsigned workers = 1;
  size_t max_series = 10000;
  std::chrono::milliseconds idle = std::chrono::minutes(10);
};

class HttpMetrics final : public ztunnel::ConnectionObserver {
 public:
  using Clock = std::chrono::steady_clock;
  // Labels are derived as `labels` derives the TCP ones (it must outlive this).
  HttpMetrics(HttpMetricsConfig config, const TcpMetrics& labels,
              std::function<Clock::time_point()> now = Clock::now);
  ~HttpMetrics() override;

  // ConnectionObserver (worker threads).
  void opened(unsigned, const ztunnel::ConnectionRecord&) override {}
  void transferred(unsigned, const ztunnel::ConnectionRecord&, uint64_t, uint64_t) override {}
  void request(unsigned worker, const ztunnel::ConnectionRecord& connection,
               const ztunnel::RequestRecord& request) override;
  void closed(unsigned worker, const ztunnel::ConnectionRecord& record) override;

  void write(TextWriter& out);  // any thread; drops idle series first
  size_t seriesCount() const;
  uint64_t seriesDropped() const { return cap_.dropped(); }
  // Distinct (protocol, status, grpc status) outcomes whose series one
  // connection keeps; a further one's series is found for each request.
  static constexpr size_t kMaxOutcomesPerConnection = 16;

 private:
  struct Series;
  struct Worker;
  // A series' labels: the TCP ones (request_protocol "http" or "grpc"), and
  // the outcome (protocol, response code, grpc status) for the other two.
  struct Key {
    TcpMetrics::LabelViews labels;
    uint64_t outcome;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  using SeriesMap = std::unordered_map<Key, std::shared_ptr<Series>, KeyHash>;
  // The series of `c` as `reporter` reports `r`, held (closed() releases
  // it), created if the cap allows; null when not. Worker `w`'s thread.
  std::shared_ptr<Series> hold(Worker& w, const ztunnel::ConnectionRecord& c, Reporter reporter,
                               const ztunnel::RequestRecord& r, const Peers& peers);
  void evictIdleLocked(Clock::time_point now);
  int64_t ticks(Clock::time_point t) const;

  HttpMetricsConfig config_;
  const TcpMetrics& labels_;
  std::function<Clock::time_point()> now_;
  Clock::time_point epoch_;
  std::vector<std::unique_ptr<Worker>> workers_;
  mutable std::mutex mu_;
  SeriesMap series_;  // by label values (views of the series' own values)
  SeriesCap cap_;     // under mu_ (its counters without)
};

// Both observers of the agent, called in order (the engine takes one).
class ObserverFanout final : public ztunnel::ConnectionObserver {
 public:
  explicit ObserverFanout(std::vector<ztunnel::ConnectionObserver*> observers)
      : observers_(std::move(observers)) {}
  void opened(unsigned w, const ztunnel::ConnectionRecord& r) override {
    for (auto* o : observers_) o->opened(w, r);
  }
  void transferred(unsigned w, const ztunnel::ConnectionRecord& r, uint64_t s,
                   uint64_t v) override {
    for (auto* o : observers_) o->transferred(w, r, s, v);
  }
  void request(unsigned w, const ztunnel::ConnectionRecord& c,
               const ztunnel::RequestRecord& r) override {
    for (auto* o : observers_) o->request(w, c, r);
  }
  void closed(unsigned w, const ztunnel::ConnectionRecord& r) override {
    for (auto* o : observers_) o->closed(w, r);
  }

 private:
  std::vector<ztunnel::ConnectionObserver*> observers_;
};

}  // namespace sluice::agent::telemetry
