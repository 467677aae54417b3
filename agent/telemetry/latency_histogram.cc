#include "agent/telemetry/latency_histogram.h"

#include <bit>

namespace sluice::agent::telemetry {

namespace {

constexpr unsigned kSubBits = 2;  // log2(kSubBuckets)

}  // namespace

size_t LatencyHistogram::bucketOf(uint64_t v) {
  if (v < kSubBuckets) return static_cast<size_t>(v);
  // v in [2^k, 2^(k+1)), k >= kSubBits: kSubBuckets linear steps of 2^(k-kSubBits).
  unsigned k = static_cast<unsigned>(std::bit_width(v)) - 1;
  size_t sub = static_cast<size_t>((v >> (k - kSubBits)) & (kSubBuckets - 1));
  size_t b = kSubBuckets * (k - kSubBits + 1) + sub;
  return b < kBuckets ? b : kBuckets - 1;
}

uint64_t LatencyHistogram::lowerBound(size_t b) {
  if (b < kSubBuckets) return b;
  size_t k = b / kSubBuckets + kSubBits - 1;
  uint64_t sub = b % kSubBuckets;
  return (uint64_t{1} << k) + sub * (uint64_t{1} << (k - kSubBits));
}

void LatencyHistogram::add(int64_t micros) {
  auto& c = counts_[bucketOf(micros < 0 ? 0 : static_cast<uint64_t>(micros))];
  if (c != UINT32_MAX) ++c;
}

void LatencyHistogram::merge(const LatencyHistogram& other) {
  for (size_t i = 0; i < kBuckets; ++i) {
    uint64_t sum = uint64_t{counts_[i]} + other.counts_[i];
    counts_[i] = sum > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(sum);
  }
}

uint64_t LatencyHistogram::count() const {
  uint64_t n = 0;
  for (auto c : counts_) n += c;
  return n;
}

double LatencyHistogram::quantile(double q) const {
  uint64_t total = count();
  if (total == 0) return 0;
  double rank = q * static_cast<double>(total);
  uint64_t below = 0;
  for (size_t b = 0; b < kBuckets; ++b) {
    if (counts_[b] == 0) continue;
    if (static_cast<double>(below + counts_[b]) >= rank) {
      double lo = static_cast<double>(lowerBound(b));
      double hi = static_cast<double>(b + 1 < kBuckets ? lowerBound(b + 1) : lowerBound(b) * 2);
      double within = (rank - static_cast<double>(below)) / counts_[b];
      return lo + (hi - lo) * (within < 0 ? 0 : within);
    }
    below += counts_[b];
  }
  return static_cast<double>(lowerBound(kBuckets - 1));
}

}  // namespace sluice::agent::telemetry
