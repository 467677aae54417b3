// Prometheus text exposition format 0.0.4: families (# HELP, # TYPE) and
// their samples. https://prometheus.io/docs/instrumenting/exposition_formats/
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sluice::agent::telemetry {

inline constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

enum class MetricType : uint8_t { kCounter, kGauge, kHistogram };

using Label = std::pair<std::string_view, std::string_view>;  // name, value

// `{a="x",b="y"}` with values escaped (\ " and newline); empty list: "".
// Names are the caller's constants and must already be valid label names.
std::string renderLabels(const std::vector<Label>& labels);
std::string escapeLabelValue(std::string_view value);

// Builds one scrape. A family is written once, then all of its samples; a
// name must not be written twice in one scrape (Prometheus rejects it).
class TextWriter {
 public:
  void family(std::string_view name, MetricType type, std::string_view help);
  // `labels` as renderLabels() returns it (pre-rendered: a series renders its
  // labels once, not at every scrape).
  void sample(std::string_view name, std::string_view labels, uint64_t value);
  void sample(std::string_view name, std::string_view labels, double value);
  // One histogram series: <name>_bucket{...,le="b"} for each bound (counts
  // are per bucket, not cumulative: counts.size() == bounds.size() + 1, the
  // last one +Inf), then <name>_sum and <name>_count.
  void histogram(std::string_view name, std::string_view labels, std::span<const double> bounds,
                 std::span<const uint64_t> counts, double sum);
  std::string& text() { return out_; }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace sluice::agent::telemetry
