// How many connections hold a metric series, and its eviction, in one atomic:
// eviction swaps an unheld series' 0 for kDead, after which no hold succeeds.
// So a worker that finds a series in its own cache (no lock) either holds a
// live series, whose counts a scrape will see, or learns that it is gone and
// goes back to the shared map (under its mutex) for the current one.
#pragma once

#include <atomic>
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

}  // namespace sluice::agent::telemetry
