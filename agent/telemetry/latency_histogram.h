// A bounded latency histogram for the live windows (`sluicectl stat`):
// log-linear buckets over microseconds, 4 per power of two (a bucket is at
// most 25% wide), from 0 to about 16 minutes; longer durations land in the
// last bucket. Fixed size (116 counters), so merging windows and workers is
// adding arrays. Not thread-safe: its owner synchronises.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace sluice::agent::telemetry {

class LatencyHistogram {
 public:
  static constexpr size_t kSubBuckets = 4;  // per power of two
  static constexpr size_t kBuckets = 116;   // [0,4) one each, then 28 powers of two

  void add(int64_t micros);
  void merge(const LatencyHistogram& other);
  void clear() { counts_.fill(0); }
  uint64_t count() const;
  // The q-quantile (0 < q <= 1) in microseconds, interpolated linearly
  // within its bucket (as Prometheus's histogram_quantile); 0 when empty.
  double quantile(double q) const;

  static size_t bucketOf(uint64_t micros);
  // Bucket b holds [lowerBound(b), lowerBound(b + 1)).
  static uint64_t lowerBound(size_t b);

 private:
  std::array<uint32_t, kBuckets> counts_{};
};

}  // namespace sluice::agent::telemetry
