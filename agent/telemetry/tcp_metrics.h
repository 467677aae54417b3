// Istio's standard TCP metrics, as ztunnel emits them, fed by the engine's
// ConnectionObserver: istio_tcp_connections_{opened,closed,failed}_total and
// istio_tcp_{sent,received}_bytes_total with Istio's labels
// (docs/architecture.md, "Metrics").
//
// Data path: opened() finds or creates the connection's series (one, or two
// for a same-node handoff, which is reported by both ends) under a mutex and
// remembers them in the worker's own table of open connections;
// transferred() then takes no lock and allocates nothing: it adds to the
// worker's own cells of those series. A scrape sums the cells.
//
// Scrape: write() takes mu_ only to evict idle series and collect the ones
// created since the last scrape; the label-ordered list of series lives on
// between scrapes (render_mu_), and the samples are appended from each
// series' pre-rendered label text.
//
// Cardinality: a series without open connections and untouched for
// `idle` is dropped at the next scrape (idle scans: at most one a second) (or when the cap is
// reached); beyond `max_series` new series are not created and counted in
// sluice_telemetry_series_dropped_total.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agent/telemetry/exposition.h"
#include "agent/telemetry/workloads.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

struct TcpMetricsConfig {
  unsigned workers = 1;  // the engine's worker count: observer calls carry an index below it
  size_t max_series = 10000;
  std::chrono::milliseconds idle = std::chrono::minutes(10);
  std::string cluster_id = "Kubernetes";         // *_cluster of known workloads (Istio's default)
  std::string cluster_domain = "cluster.local";  // destination_service is <name>.<ns>.svc.<this>
};

enum class Reporter : uint8_t { kSource, kDestination };

// Istio's response_flags for how a connection ended: "-" (fine), "DENY",
// "CONNECT", "TLS_FAILURE", "H2_HANDSHAKE_FAILURE".
const char* responseFlags(const ztunnel::ConnectionRecord& record);

class TcpMetrics final : public ztunnel::ConnectionObserver {
 public:
  using Clock = std::chrono::steady_clock;
  // `workloads` may be null (every peer then is "unknown" but this node's own
  // pod, named from the record). `now` is for tests.
  TcpMetrics(TcpMetricsConfig config, const WorkloadIndex* workloads,
             std::function<Clock::time_point()> now = Clock::now);
  ~TcpMetrics() override;

  // ConnectionObserver (worker threads).
  void opened(unsigned worker, const ztunnel::ConnectionRecord& record) override;
  void transferred(unsigned worker, const ztunnel::ConnectionRecord& record, uint64_t sent,
                   uint64_t received) override;
  void closed(unsigned worker, const ztunnel::ConnectionRecord& record) override;

  // Drops idle series, then writes every family. Any thread.
  void write(TextWriter& out);
  void evictIdle();

  // The label names, in Istio's order (CommonTrafficLabels).
  static const std::vector<std::string_view>& labelNames();
  // The label values of `record` as `reporter` reports it, response_flags "-".
  std::vector<std::string> labelValues(const ztunnel::ConnectionRecord& record,
                                       Reporter reporter) const;

  size_t seriesCount() const;
  uint64_t seriesDropped() const { return dropped_.load(std::memory_order_relaxed); }
  uint64_t seriesEvicted() const { return evicted_.load(std::memory_order_relaxed); }

 private:
  struct Series;
  struct Worker;
  // Under mu_: the series of `values` (`rendered`: their text), created if
  // the cap allows; null when not.
  std::shared_ptr<Series> findOrCreateLocked(std::vector<std::string> values, std::string rendered);
  void evictIdleLocked(Clock::time_point now);
  int64_t ticks(Clock::time_point t) const;

  TcpMetricsConfig config_;
  const WorkloadIndex* workloads_;
  std::function<Clock::time_point()> now_;
  Clock::time_point epoch_;
  std::vector<std::unique_ptr<Worker>> workers_;

  mutable std::mutex mu_;
  // By rendered labels (a view of the series' own text).
  std::unordered_map<std::string_view, std::shared_ptr<Series>> series_;
  std::vector<std::shared_ptr<Series>> added_;  // created since the last write()
  bool removed_ = false;                        // some series evicted since then

  // write() only (one at a time): every series in label order, kept between
  // scrapes and merged with the new ones, so that a scrape neither sorts
  // 10,000 label strings nor holds mu_ (which opened() needs) while it renders.
  std::mutex render_mu_;
  std::vector<std::shared_ptr<Series>> sorted_;
  Clock::time_point last_cap_eviction_{};
  Clock::time_point last_scrape_eviction_{};
  std::atomic<uint64_t> dropped_{0}, evicted_{0};
};

}  // namespace sluice::agent::telemetry
