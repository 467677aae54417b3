// In-memory windows of this node's traffic, per local pod and direction, over
// the last minute: what `sluicectl stat` shows without a Prometheus
// (requests, successes, a latency histogram, TCP connections opened and open).
//
// Time is cut into `slots` slots of `slot` (10 x 6 s): each event lands in
// the current slot, a slot is cleared when its turn comes again, and a read
// sums the slots of the window. A request counts when it completes.
//
// Data path: each worker aggregates into its own table, guarded by the
// worker's own mutex, which only a read (copying that table's totals) ever
// contends for: no lock is shared between workers. Reads merge the workers.
// A pod's entry is dropped when it has no open connection and nothing
// happened in a window; beyond `max_pods` entries per worker new pods are
// not counted (pods_dropped()).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/telemetry/latency_histogram.h"
#include "agent/telemetry/workloads.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

struct LiveStatsConfig {
  unsigned workers =
      1;  // observer slots: the engine's workers (+1 in the agent: an upgrade's replay)
  std::chrono::milliseconds slot{6000};
  unsigned slots = 10;  // window = slot x slots
  size_t max_pods = 4096;
  std::string cluster_id = "Kubernetes";
};

// success = a response that is not 5xx, and gRPC status 0 when present.
bool requestSucceeded(const ztunnel::RequestRecord& request);

// One direction of a pod's traffic over the window.
struct TrafficTotals {
  uint64_t requests = 0;
  uint64_t successes = 0;
  LatencyHistogram latency;  // request durations, microseconds
  uint64_t tcp_opened = 0;   // connections opened in the window
  int64_t tcp_open = 0;      // connections open now
  void merge(const TrafficTotals& other);
};

struct PodTraffic {
  std::string namespace_;
  std::string pod;
  std::string workload;
  TrafficTotals inbound;   // requests and connections the pod received
  TrafficTotals outbound;  // ... and made
};

struct LiveSnapshot {
  std::chrono::milliseconds window{0};   // the configured window
  std::chrono::milliseconds covered{0};  // what the totals cover (shorter just after start)
  std::vector<PodTraffic> pods;          // by namespace/pod
};

class LiveStats final : public ztunnel::ConnectionObserver {
 public:
  using Clock = std::chrono::steady_clock;
  // `workloads` may be null (pods are then named from the records only).
  LiveStats(LiveStatsConfig config, const WorkloadIndex* workloads,
            std::function<Clock::time_point()> now = Clock::now);
  ~LiveStats() override;

  // ConnectionObserver (worker threads).
  void opened(unsigned worker, const ztunnel::ConnectionRecord& record) override;
  void transferred(unsigned, const ztunnel::ConnectionRecord&, uint64_t, uint64_t) override {}
  void request(unsigned worker, const ztunnel::ConnectionRecord& connection,
               const ztunnel::RequestRecord& request) override;
  void closed(unsigned worker, const ztunnel::ConnectionRecord& record) override;

  // The window, merged over workers. Any thread.
  LiveSnapshot snapshot() const;
  uint64_t podsDropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  struct Slot;
  struct Traffic;
  struct Entry;
  struct Worker;
  // This node's pods at the ends of `record` (one, or two for a same-node
  // handoff), with the direction each sees; created in the worker's table.
  void attach(Worker& w, const ztunnel::ConnectionRecord& record, int64_t slot);
  Entry* entryLocked(Worker& w, const WorkloadInfo& pod, int64_t slot);
  void evictLocked(Worker& w, int64_t slot) const;
  int64_t slotNow() const;

  LiveStatsConfig config_;
  const WorkloadIndex* workloads_;
  std::function<Clock::time_point()> now_;
  Clock::time_point epoch_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<uint64_t> dropped_{0};
};

}  // namespace sluice::agent::telemetry
