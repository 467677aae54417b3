// Istio's standard TCP metrics, as ztunnel emits them, fed by the engine's
// ConnectionObserver: istio_tcp_connections_{opened,closed,failed}_total and
// istio_tcp_{sent,received}_bytes_total with Istio's labels
// (docs/architecture.md, "Metrics").
//
// Data path: opened() finds the connection's series (one, or two for a
// same-node handoff, which is reported by both ends) by its label values as
// views of the record and the workload view (hashed, never escaped or
// rendered), in the worker's own cache of series: no lock, no allocation in a
// steady state. Only a label set the worker has not seen takes mu_ (the
// shared map, where the series is created with its rendered label text).
// The worker's table of open connections reuses its nodes. transferred()
// adds to the worker's own cells of those series. A scrape sums the cells.
// A series is held (`open`) while a connection counts into it; eviction
// marks an unheld series dead in the same atomic, so a worker's cache hit
// on an evicted series fails and goes back to the shared map.
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

#include <array>
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
#include "agent/telemetry/hold_count.h"
#include "agent/telemetry/peers.h"
#include "agent/telemetry/workloads.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

struct TcpMetricsConfig {
  unsigned workers =
      1;  // observer slots (the engine's workers, +1 in the agent: an upgrade's replay)
  size_t max_series = 10000;
  std::chrono::milliseconds idle = std::chrono::minutes(10);
  std::string cluster_id = "Kubernetes";         // *_cluster of known workloads (Istio's default)
  std::string cluster_domain = "cluster.local";  // destination_service is <name>.<ns>.svc.<this>
};

enum class Reporter : uint8_t { kSource, kDestination };

// Istio's response_flags for how a connection ended: "-" (fine), "DENY",
// "CONNECT", "TLS_FAILURE", "H2_HANDSHAKE_FAILURE", "IDENTITY_ERROR" (no certificate).
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

  static constexpr size_t kLabels = 23;
  // Label values in labelNames() order, viewing their owner's strings.
  using LabelViews = std::array<std::string_view, kLabels>;
  struct ViewsHash {
    size_t operator()(const LabelViews& v) const;
  };
  // The workloads at both ends of `record` (views of them are valid while it lives).
  Peers peersOf(const ztunnel::ConnectionRecord& record) const;
  // labelValues() without a copy: views of `record`, `peers`' workloads and
  // `service` (a scratch string, where the service FQDN is built).
  LabelViews labelViews(const ztunnel::ConnectionRecord& record, Reporter reporter,
                        const Peers& peers, std::string& service) const;

  size_t seriesCount() const;
  uint64_t seriesDropped() const { return cap_.dropped(); }
  uint64_t seriesEvicted() const { return cap_.evicted(); }

 private:
  struct Series;
  struct Worker;
  using SeriesMap = std::unordered_map<LabelViews, std::shared_ptr<Series>, ViewsHash>;
  // The series of `key`, held (the caller releases it), created if the cap
  // allows; null when not. Worker `w`'s thread.
  std::shared_ptr<Series> hold(Worker& w, const LabelViews& key);
  // Under mu_: the series of `key`, created if the cap allows; null when not.
  std::shared_ptr<Series> findOrCreateLocked(const LabelViews& key);
  void evictIdleLocked(Clock::time_point now);
  int64_t ticks(Clock::time_point t) const;

  TcpMetricsConfig config_;
  const WorkloadIndex* workloads_;
  std::function<Clock::time_point()> now_;
  Clock::time_point epoch_;
  std::vector<std::unique_ptr<Worker>> workers_;

  mutable std::mutex mu_;
  // By label values (views of the series' own values).
  SeriesMap series_;
  std::vector<std::shared_ptr<Series>> added_;  // created since the last write()
  bool removed_ = false;                        // some series evicted since then

  // write() only (one at a time): every series in label order, kept between
  // scrapes and merged with the new ones, so that a scrape neither sorts
  // 10,000 label strings nor holds mu_ (which opened() needs) while it renders.
  std::mutex render_mu_;
  std::vector<std::shared_ptr<Series>> sorted_;
  Clock::time_point last_scrape_eviction_{};
  SeriesCap cap_;  // under mu_ (its counters without)
};

}  // namespace sluice::agent::telemetry
