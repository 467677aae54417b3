// Connection records and counters, defined once (engine.h has the types):
// the registry behind connections(), the access log and the observer hook
// are all fed from here.
#pragma once

#include <netinet/in.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sluice/ztunnel/engine.h"

namespace spdlog {
class logger;
}

namespace sluice::ztunnel::proxy {

class Counters {
 public:
  void add(Counter c, uint64_t n = 1) {
    v_[static_cast<size_t>(c)].fetch_add(n, std::memory_order_relaxed);
  }
  void sub(Counter c) { v_[static_cast<size_t>(c)].fetch_sub(1, std::memory_order_relaxed); }
  uint64_t get(Counter c) const { return v_[static_cast<size_t>(c)].load(); }
  EngineStats snapshot() const;

 private:
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Counter::kCount)> v_{};
};

// Something that owns an open connection and can reset it (worker thread).
class Abortable {
 public:
  virtual void abort(CloseReason reason, std::string detail = {}) = 0;

 protected:
  ~Abortable() = default;
};

// An open connection's record. `rec` is fixed once open() returns, except
// the byte counts (the atomics here) and the close fields (set by close()).
struct LiveRecord {
  ConnectionRecord rec;
  // Inbound and same-node handoff: what the authorizer is asked about again
  // (reauthorize): the destination pod and both addresses.
  std::string dest_pod_uid, dest_pod;
  SockAddr source, destination;
  unsigned worker = 0;
  Abortable* owner = nullptr;  // worker thread only
  std::atomic<uint64_t> sent{0}, received{0};
  std::chrono::steady_clock::time_point start{};
  bool closed = false;
  // A Service connection's attempt, which may yet move to another endpoint:
  // the observer hears of it once it connected (Records::confirm), moved a
  // byte or ended for good; a retried attempt never (the app made one
  // connection, counted under the endpoint that took it). Worker thread.
  bool may_retry = false;
  bool announced = false;
  size_t slot = SIZE_MAX;  // its index in the open registry (Records, under its mutex)
};

class Records {
 public:
  static constexpr size_t kClosedHistory = 1024;
  Records(bool access_log, ConnectionObserver* observer);

  Counters& counters() { return counters_; }
  const Counters& counters() const { return counters_; }
  uint64_t nextId() { return next_id_.fetch_add(1) + 1; }

  // Registers `live` (rec filled in by the caller: everything but id, start
  // and state) as open, and tells the observer. An adopted record keeps its
  // start (the predecessor's).
  void open(const std::shared_ptr<LiveRecord>& live);
  // A may_retry attempt reached its endpoint: the observer hears of it.
  void confirm(LiveRecord& live) { announce(live); }
  // Bytes moved (worker thread): client -> destination and back.
  void moved(LiveRecord& live, uint64_t sent, uint64_t received) {
    if (sent) live.sent.fetch_add(sent, std::memory_order_relaxed);
    if (received) live.received.fetch_add(received, std::memory_order_relaxed);
    announce(live);
    if (observer_) observer_->transferred(live.worker, live.rec, sent, received);
  }
  // One HTTP exchange seen on the connection (worker thread): to the observer.
  void request(LiveRecord& live, const RequestRecord& r) {
    if (live.closed) return;
    announce(live);
    if (observer_) observer_->request(live.worker, live.rec, r);
  }
  // How it is about to end (worker thread), before close(): requests the
  // inspector reports in between (those without a response) see it.
  void ending(LiveRecord& live, CloseReason reason, const std::string& detail) {
    std::lock_guard lk(mu_);
    live.rec.reason = reason;
    live.rec.reason_detail = detail;
  }
  // Closes it once: history, access log line, observer (handed live.rec,
  // final: its byte counts and duration filled in).
  void close(LiveRecord& live, CloseReason reason, std::string detail = {}, bool retried = false);

  std::vector<ConnectionRecord> snapshot() const;
  // One open connection's record as it stands (an upgrade hands it over).
  ConnectionRecord snapshotOf(const LiveRecord& live) const {
    std::lock_guard lk(mu_);
    return view(live);
  }
  // The open connections of one worker that the authorizer decided
  // (inbound and same-node handoff), for reauthorize.
  std::vector<std::shared_ptr<LiveRecord>> openInbound(unsigned worker) const;
  // Every open connection of one worker (an upgrade's drain deadline).
  std::vector<std::shared_ptr<LiveRecord>> openOn(unsigned worker) const;

 private:
  static ConnectionRecord view(const LiveRecord& live);
  void announce(LiveRecord& live) {
    if (live.announced) return;
    live.announced = true;
    if (observer_) observer_->opened(live.worker, live.rec);
  }
  std::shared_ptr<spdlog::logger> access_log_;  // null: no access log
  ConnectionObserver* observer_;
  Counters counters_;
  std::atomic<uint64_t> next_id_{0};
  mutable std::mutex mu_;
  // The open connections, unordered (LiveRecord::slot; a close moves the
  // last one into its slot): its capacity is kept, so a steady state opens
  // and closes without allocating. snapshot() sorts by id.
  std::vector<std::shared_ptr<LiveRecord>> open_;
  // The last kClosedHistory closes, a ring (oldest at closed_next_ once
  // full): a close overwrites a slot, reusing its strings' storage.
  std::vector<ConnectionRecord> closed_;
  size_t closed_next_ = 0;
};

// The question the authorizer was asked about this connection.
InboundRequest inboundRequestOf(const LiveRecord& live);

}  // namespace sluice::ztunnel::proxy
