// `sluicectl tap`: live request lines from this node's proxy. The engine's
// request() calls are fanned out to the current subscribers whose filter
// matches; each subscriber has one bounded single-producer queue per worker,
// so a worker never waits: when a queue is full (a slow reader), the request
// is dropped and counted for that subscriber. Without subscribers request()
// costs one atomic load.
//
// A line carries only the method, authority, path, status, gRPC status,
// sizes, latency and both ends (address, workload, pod, SPIFFE identity):
// never bodies, never other header values.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/telemetry/workloads.h"
#include "sluice/common/result.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::telemetry {

struct TapEnd {
  std::string address;  // ip:port
  std::string namespace_;
  std::string workload;
  std::string pod;
  std::string principal;  // SPIFFE URI; empty when unauthenticated
};

struct TapEvent {
  int64_t start_unix_ms = 0;
  std::string direction;  // "outbound" | "inbound" (as the proxy saw it)
  std::string protocol;   // "http/1.1" | "http/2" | "grpc"
  std::string method, authority, path;
  int status = 0;
  int grpc_status = -1;
  int64_t duration_us = 0;
  uint64_t request_bytes = 0, response_bytes = 0;
  bool mutual_tls = false;
  std::string service;  // ns/name when the client connected to a Service
  TapEnd source, destination;
};
nlohmann::json toJson(const TapEvent& e);

// Who a --to/--from names: "deploy/NAME" (a workload), "pod/NAME",
// "svc/NAME", "ns/NAME", or a bare NAME (a workload).
struct TapResource {
  enum class Kind : uint8_t { kAny, kWorkload, kPod, kService, kNamespace } kind = Kind::kAny;
  std::string name;
  static Result<TapResource> parse(const std::string& text);
  bool matches(const TapEnd& end, const std::string& service) const;
};

struct TapFilter {
  std::string namespace_;  // requests from or to a workload in this namespace
  TapResource from, to;
  std::string method;       // exact (case-insensitive)
  std::string path_prefix;  // the path starts with this
  std::string authority;    // exact
  // From a query string's parameters: namespace, from, to, method, path, authority.
  static Result<TapFilter> fromQuery(const std::map<std::string, std::string>& query);
  bool matches(const TapEvent& e) const;
};

struct TapConfig {
  unsigned workers = 1;
  size_t queue_per_worker = 256;  // requests a subscriber may lag behind, per worker
  size_t max_subscribers = 16;
  std::string cluster_id = "Kubernetes";
};

class TapHub;

// One tap session; unsubscribes when destroyed. Drained by one thread.
class TapSubscription {
 public:
  ~TapSubscription();
  // Moves up to `max` queued requests to `out`; returns how many.
  size_t drain(std::vector<TapEvent>& out, size_t max);
  // Requests that matched but did not fit in the queue.
  uint64_t dropped() const;

 private:
  friend class TapHub;
  struct Subscriber;
  TapSubscription(TapHub& hub, std::shared_ptr<Subscriber> sub) : hub_(hub), sub_(std::move(sub)) {}
  TapHub& hub_;
  std::shared_ptr<Subscriber> sub_;
};

class TapHub final : public ztunnel::ConnectionObserver {
 public:
  // `workloads` may be null.
  TapHub(TapConfig config, const WorkloadIndex* workloads);
  ~TapHub() override;

  void opened(unsigned, const ztunnel::ConnectionRecord&) override {}
  void transferred(unsigned, const ztunnel::ConnectionRecord&, uint64_t, uint64_t) override {}
  void request(unsigned worker, const ztunnel::ConnectionRecord& connection,
               const ztunnel::RequestRecord& request) override;
  void closed(unsigned, const ztunnel::ConnectionRecord&) override {}

  // Fails when max_subscribers sessions are open, and (ENOENT) when the
  // filter's --from or --to names a resource the view does not hold: such a
  // session would wait for ever without a word. The hub must outlive it.
  Result<std::unique_ptr<TapSubscription>> subscribe(TapFilter filter);
  size_t subscribers() const { return active_.load(std::memory_order_relaxed); }

 private:
  friend class TapSubscription;
  using List = std::vector<std::shared_ptr<TapSubscription::Subscriber>>;
  void unsubscribe(const TapSubscription::Subscriber* sub);
  TapEvent describe(const ztunnel::ConnectionRecord& c, const ztunnel::RequestRecord& r) const;

  TapConfig config_;
  const WorkloadIndex* workloads_;
  std::atomic<size_t> active_{0};
  std::atomic<std::shared_ptr<const List>> list_;
  std::mutex mu_;  // subscribe/unsubscribe (admin thread), never a worker
};

}  // namespace sluice::agent::telemetry
