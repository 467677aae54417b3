// Prometheus text exposition format 0.0.4: families (# HELP, # TYPE) and
// their samples. https://prometheus.io/docs/instrumenting/exposition_formats/
#pragma once

#include <charconv>
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
// Appends to its own string, or to the caller's (whose capacity a scraper
// keeps from one scrape to the next: a 10,000-series page is ~34 MB, and
// fresh pages of that size cost more in page faults than the rendering).
class TextWriter {
 public:
  TextWriter() : out_(&own_) {}
  explicit TextWriter(std::string& into) : out_(&into) {}
  TextWriter(const TextWriter&) = delete;
  TextWriter& operator=(const TextWriter&) = delete;

  void family(std::string_view name, MetricType type, std::string_view help);
  // `labels` as renderLabels() returns it (pre-rendered: a series renders its
  // labels once, not at every scrape). No formatting library, no allocation
  // beyond the string's growth: this is the hot loop of a scrape.
  void sample(std::string_view name, std::string_view labels, uint64_t value) {
    std::string& out = *out_;
    out.append(name);
    out.append(labels);
    char digits[24];
    digits[0] = ' ';
    auto [end, ec] = std::to_chars(digits + 1, digits + sizeof(digits) - 1, value);
    *end++ = '\n';
    out.append(digits, size_t(end - digits));
  }
  void sample(std::string_view name, std::string_view labels, double value);
  // One histogram series: <name>_bucket{...,le="b"} for each bound (counts
  // are per bucket, not cumulative: counts.size() == bounds.size() + 1, the
  // last one +Inf), then <name>_sum and <name>_count.
  void histogram(std::string_view name, std::string_view labels, std::span<const double> bounds,
                 std::span<const uint64_t> counts, double sum);
  std::string& text() { return *out_; }
  std::string take() { return std::move(*out_); }

 private:
  std::string own_;
  std::string* out_;
};

}  // namespace sluice::agent::telemetry
