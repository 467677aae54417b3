// How many connections hold a metric series, and its eviction, in one atomic:
// eviction swaps an unheld series' 0 for kDead, after which no hold succeeds.
// So a worker that finds a series in its own cache (no lock) either holds a
// live series, whose counts a scrape will see, or learns that it is gone and
// goes back to the shared map (under its mutex) for the current one.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <unordered_map>

namespace sluice::agent::telemetry {

class HoldCount {
 public:
  // False when evicted.
  bool tryHold() { return (n_.fetch_add(1, std::memory_order_acq_rel) & kDead) == 0; }
  void release() { n_.fetch_sub(1, std::memory_order_release); }
  bool dead() const { return n_.load(std::memory_order_acquire) & kDead; }
  // Marks it dead if nobody holds it; false (and unchanged) when held.
  bool tryEvict() {
    uint64_t unheld = 0;
    return n_.compare_exchange_strong(unheld, kDead, std::memory_order_acq_rel);
  }

 private:
  static constexpr uint64_t kDead = uint64_t{1} << 63;
  std::atomic<uint64_t> n_{0};
};

// The series a worker has held, by key (views of each series' own values,
// `Series::key`), found without a lock. A series evicted since fails its
// hold there; after evictions the dead entries are swept.
template <class Key, class Series, class Hash>
class SeriesCache {
 public:
  // The series of `key`, held (Series::held); null when not cached or
  // evicted since (the caller asks the shared map). `evictions`: the
  // owner's eviction count now.
  std::shared_ptr<Series> hold(const Key& key, uint64_t evictions) {
    if (evictions != evictions_seen_) {
      evictions_seen_ = evictions;
      std::erase_if(map_, [](const auto& kv) { return kv.second->held.dead(); });
    }
    if (auto it = map_.find(key); it != map_.end()) {
      if (it->second->held.tryHold()) return it->second;
      map_.erase(it);  // evicted since: the shared map has it anew, or not
    }
    return nullptr;
  }
  void add(const std::shared_ptr<Series>& s) { map_.emplace(s->key, s); }

 private:
  std::unordered_map<Key, std::shared_ptr<Series>, Hash> map_;
  uint64_t evictions_seen_ = 0;
};

// A registry's cap on its series and their idle eviction, one for TcpMetrics
// and HttpMetrics alike. A series has `held` (HoldCount) and `last_active`
// (std::atomic<int64_t>, in the owner's ticks). Called under the owner's
// mutex; the counters are read without it.
class SeriesCap {
 public:
  using Clock = std::chrono::steady_clock;
  explicit SeriesCap(size_t max_series) : max_(max_series) {}

  // Whether one more series fits beside `map`'s. At the cap it first makes
  // room from idle series with `evict(now)`, at most once a second (a scan of
  // every series); a refusal is counted (dropped()).
  template <class Map, class Now, class Evict>
  bool admit(const Map& map, Now&& now_fn, Evict&& evict) {
    if (map.size() < max_) return true;
    auto now = now_fn();
    if (now - last_eviction_ >= std::chrono::seconds(1)) {
      last_eviction_ = now;
      evict(now);
    }
    if (map.size() < max_) return true;
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }

  // Erases from `map` the series last active at or before `horizon` that no
  // connection holds (a worker's later hold of one fails); how many.
  template <class Map>
  size_t evictIdle(Map& map, int64_t horizon) {
    size_t n = std::erase_if(map, [&](const auto& kv) {
      return kv.second->last_active.load(std::memory_order_relaxed) <= horizon &&
             kv.second->held.tryEvict();
    });
    evicted_.fetch_add(n, std::memory_order_relaxed);
    return n;
  }

  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  uint64_t evicted() const { return evicted_.load(std::memory_order_relaxed); }

 private:
  size_t max_;
  Clock::time_point last_eviction_{};
  std::atomic<uint64_t> dropped_{0}, evicted_{0};
};

}  // namespace sluice::agent::telemetry
