// How many connections hold a metric series, and its eviction, in one atomic:
// eviction swaps an unheld series' 0 for kDead, after which no hold succeeds.
// So a worker that finds a series in its own cache (no lock) either holds a
// live series, whose counts a scrape will see, or learns that it is gone and
// goes back to the shared map (under its mutex) for the current one.
#pragma once

#include <atomic>
#include <cstdint>

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

}  // namespace sluice::agent::telemetry
