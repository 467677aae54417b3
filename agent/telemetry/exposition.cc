#include "agent/telemetry/exposition.h"

#include <iterator>

#include "sluice/common/fmt.h"

namespace sluice::agent::telemetry {

namespace {
// HELP text escapes only \ and newline; label values also ".
std::string escape(std::string_view s, bool quote) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (c == '"' && quote)
      out += "\\\"";
    else
      out += c;
  }
  return out;
}
}  // namespace

std::string escapeLabelValue(std::string_view value) { return escape(value, true); }

std::string renderLabels(const std::vector<Label>& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (const auto& [name, value] : labels) {
    if (out.size() > 1) out += ',';
    out.append(name);
    out += "=\"";
    out += escape(value, true);
    out += '"';
  }
  out += '}';
  return out;
}

void TextWriter::family(std::string_view name, MetricType type, std::string_view help) {
  const char* t = type == MetricType::kCounter ? "counter"
                  : type == MetricType::kGauge ? "gauge"
                                               : "histogram";
  fmt::format_to(std::back_inserter(*out_), "# HELP {} {}\n# TYPE {} {}\n", name,
                 escape(help, false), name, t);
}

void TextWriter::sample(std::string_view name, std::string_view labels, double value) {
  // Shortest representation that reads back as the same double.
  fmt::format_to(std::back_inserter(*out_), "{}{} {}\n", name, labels, value);
}

void TextWriter::histogram(std::string_view name, std::string_view labels,
                           std::span<const double> bounds, std::span<const uint64_t> counts,
                           double sum) {
  // `labels` is "{...}" or "": le joins the set.
  std::string_view inner = labels.empty() ? "" : labels.substr(1, labels.size() - 2);
  const char* sep = inner.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    // Bounds as Envoy and the Go client print them: 0.5, 1, 1.8e+06.
    if (i < bounds.size())
      fmt::format_to(std::back_inserter(*out_), "{}_bucket{{{}{}le=\"{:g}\"}} {}\n", name, inner,
                     sep, bounds[i], cumulative);
    else
      fmt::format_to(std::back_inserter(*out_), "{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, inner,
                     sep, cumulative);
  }
  fmt::format_to(std::back_inserter(*out_), "{}_sum{} {}\n", name, labels, sum);
  fmt::format_to(std::back_inserter(*out_), "{}_count{} {}\n", name, labels, cumulative);
}

}  // namespace sluice::agent::telemetry
