#include "agent/telemetry/live_stats.h"

#include <algorithm>
#include <cassert>
#include <map>
#include <mutex>
#include <unordered_map>

#include "agent/telemetry/peers.h"

namespace sluice::agent::telemetry {

namespace {

enum Side : size_t { kInbound = 0, kOutbound = 1 };

}  // namespace

bool requestSucceeded(const ztunnel::RequestRecord& r) {
  if (r.status == 0 || r.status >= 500) return false;
  return r.grpc_status <= 0;  // -1: absent (not gRPC); 0: OK
}

void TrafficTotals::merge(const TrafficTotals& o) {
  requests += o.requests;
  successes += o.successes;
  latency.merge(o.latency);
  tcp_opened += o.tcp_opened;
  tcp_open += o.tcp_open;
}

struct LiveStats::Slot {
  int64_t index = -1;  // which slot of time this holds; stale ones are cleared on use
  uint64_t requests = 0, successes = 0, tcp_opened = 0;
  std::unique_ptr<LatencyHistogram> latency;  // from the slot's first request on
};

struct LiveStats::Traffic {
  std::vector<Slot> slots;
  int64_t open = 0;  // connections open now

  explicit Traffic(unsigned n) : slots(n) {}
  Slot& at(int64_t index) {
    Slot& s = slots[static_cast<size_t>(index) % slots.size()];
    if (s.index != index) {
      s.index = index;
      s.requests = s.successes = s.tcp_opened = 0;
      if (s.latency) s.latency->clear();
    }
    return s;
  }
  void addTo(TrafficTotals& out, int64_t now) const {
    for (const Slot& s : slots) {
      if (s.index < 0 || s.index <= now - static_cast<int64_t>(slots.size()) || s.index > now)
        continue;
      out.requests += s.requests;
      out.successes += s.successes;
      out.tcp_opened += s.tcp_opened;
      if (s.latency) out.latency.merge(*s.latency);
    }
    out.tcp_open += open;
  }
};

struct LiveStats::Entry {
  std::string namespace_, pod, workload;
  Traffic side[2];
  int64_t last_slot = 0;  // of the last event

  Entry(const WorkloadInfo& w, unsigned slots)
      : namespace_(w.namespace_),
        pod(w.pod),
        workload(w.workload),
        side{Traffic(slots), Traffic(slots)} {}
  bool idle(int64_t now, unsigned slots) const {
    return side[0].open == 0 && side[1].open == 0 && last_slot <= now - static_cast<int64_t>(slots);
  }
};

struct alignas(64) LiveStats::Worker {
  struct End {
    Entry* entry = nullptr;  // never evicted while the connection is open
    Side side = kInbound;
  };
  struct Conn {
    End ends[2];  // two for a same-node handoff
  };
  mutable std::mutex mu;  // the worker's own; a read copies under it
  std::unordered_map<std::string, std::unique_ptr<Entry>> entries;  // by namespace/pod
  std::unordered_map<uint64_t, Conn> conns;                         // open, by record id
};

LiveStats::LiveStats(LiveStatsConfig config, const WorkloadIndex* workloads,
                     std::function<Clock::time_point()> now)
    : config_(std::move(config)), workloads_(workloads), now_(std::move(now)), epoch_(now_()) {
  config_.workers = std::max(1u, config_.workers);
  config_.slots = std::max(1u, config_.slots);
  if (config_.slot.count() <= 0) config_.slot = std::chrono::milliseconds(1);
  for (unsigned i = 0; i < config_.workers; ++i) workers_.push_back(std::make_unique<Worker>());
}

LiveStats::~LiveStats() = default;

int64_t LiveStats::slotNow() const {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now_() - epoch_).count();
  return ms / config_.slot.count();
}

void LiveStats::evictLocked(Worker& w, int64_t slot) const {
  std::erase_if(w.entries, [&](const auto& kv) { return kv.second->idle(slot, config_.slots); });
}

LiveStats::Entry* LiveStats::entryLocked(Worker& w, const WorkloadInfo& pod, int64_t slot) {
  std::string key = pod.namespace_ + "/" + pod.pod;
  if (auto it = w.entries.find(key); it != w.entries.end()) return it->second.get();
  if (w.entries.size() >= config_.max_pods) evictLocked(w, slot);
  if (w.entries.size() >= config_.max_pods) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  auto e = std::make_unique<Entry>(pod, config_.slots);
  Entry* raw = e.get();
  w.entries.emplace(std::move(key), std::move(e));
  return raw;
}

void LiveStats::attach(Worker& w, const ztunnel::ConnectionRecord& record, int64_t slot) {
  Peers peers(workloads_ ? workloads_->current() : nullptr, record, config_.cluster_id);
  Worker::Conn conn;
  size_t n = 0;
  auto add = [&](const WorkloadInfo* pod, Side side) {
    if (!pod) return;
    if (Entry* e = entryLocked(w, *pod, slot)) conn.ends[n++] = {e, side};
  };
  bool outbound = record.direction == ztunnel::Direction::kOutbound;
  add(outbound ? peers.source() : peers.destination(), outbound ? kOutbound : kInbound);
  // A same-node handoff is one proxy hop between two of this node's pods.
  if (record.path == ztunnel::Path::kLocalHandoff) add(peers.destination(), kInbound);
  for (size_t i = 0; i < n; ++i) {
    Traffic& t = conn.ends[i].entry->side[conn.ends[i].side];
    t.open += 1;
    // An upgrade's adopted connection was counted opened by the predecessor.
    if (!record.adopted) t.at(slot).tcp_opened += 1;
    conn.ends[i].entry->last_slot = slot;
  }
  w.conns.insert_or_assign(record.id, conn);
}

void LiveStats::opened(unsigned worker, const ztunnel::ConnectionRecord& record) {
  assert(worker < workers_.size());
  if (worker >= workers_.size()) return;
  Worker& w = *workers_[worker];
  int64_t slot = slotNow();
  std::lock_guard lk(w.mu);
  attach(w, record, slot);
}

void LiveStats::request(unsigned worker, const ztunnel::ConnectionRecord& connection,
                        const ztunnel::RequestRecord& request) {
  if (worker >= workers_.size()) return;
  Worker& w = *workers_[worker];
  int64_t slot = slotNow();
  bool ok = requestSucceeded(request);
  std::lock_guard lk(w.mu);
  auto it = w.conns.find(connection.id);
  if (it == w.conns.end()) return;  // opened before this observer was attached
  for (const auto& end : it->second.ends) {
    if (!end.entry) continue;
    Slot& s = end.entry->side[end.side].at(slot);
    s.requests += 1;
    s.successes += ok ? 1 : 0;
    if (!s.latency) s.latency = std::make_unique<LatencyHistogram>();
    s.latency->add(request.duration_us);
    end.entry->last_slot = slot;
  }
}

void LiveStats::closed(unsigned worker, const ztunnel::ConnectionRecord& record) {
  if (worker >= workers_.size()) return;
  Worker& w = *workers_[worker];
  int64_t slot = slotNow();
  std::lock_guard lk(w.mu);
  auto it = w.conns.find(record.id);
  if (it == w.conns.end()) return;
  for (const auto& end : it->second.ends) {
    if (!end.entry) continue;
    end.entry->side[end.side].open -= 1;
    end.entry->last_slot = slot;
  }
  w.conns.erase(it);
}

LiveSnapshot LiveStats::snapshot() const {
  int64_t slot = slotNow();
  LiveSnapshot out;
  out.window = config_.slot * config_.slots;
  // The current slot is partly over; so is the window right after start.
  auto since_start = std::chrono::duration_cast<std::chrono::milliseconds>(now_() - epoch_);
  auto in_current = since_start - config_.slot * slot;
  out.covered = std::min(since_start, config_.slot * (config_.slots - 1) + in_current);
  std::map<std::string, PodTraffic> merged;
  for (const auto& w : workers_) {
    std::lock_guard lk(w->mu);
    evictLocked(*w, slot);
    for (const auto& [key, e] : w->entries) {
      auto [it, fresh] = merged.try_emplace(key);
      if (fresh) it->second = PodTraffic{e->namespace_, e->pod, e->workload, {}, {}};
      e->side[kInbound].addTo(it->second.inbound, slot);
      e->side[kOutbound].addTo(it->second.outbound, slot);
    }
  }
  for (auto& [key, p] : merged) out.pods.push_back(std::move(p));
  return out;
}

}  // namespace sluice::agent::telemetry
