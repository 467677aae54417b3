#include "agent/telemetry/exposition.h"

#include <fmt/format.h>

#include <iterator>

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
  fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name,
                 escape(help, false), name, type == MetricType::kCounter ? "counter" : "gauge");
}

void TextWriter::sample(std::string_view name, std::string_view labels, uint64_t value) {
  fmt::format_to(std::back_inserter(out_), "{}{} {}\n", name, labels, value);
}

void TextWriter::sample(std::string_view name, std::string_view labels, double value) {
  // Shortest representation that reads back as the same double.
  fmt::format_to(std::back_inserter(out_), "{}{} {}\n", name, labels, value);
}

}  // namespace sluice::agent::telemetry
