#include "controlplane/model/opaque_ports.h"

#include <charconv>

#include "sluice/common/fmt.h"

namespace sluice::controlplane::model {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool port(std::string_view s, uint16_t& out) {
  s = trim(s);
  unsigned v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < 1 || v > 65535)
    return false;
  out = static_cast<uint16_t>(v);
  return true;
}

}  // namespace

Result<std::vector<PortRange>> parseOpaquePorts(std::string_view value) {
  std::vector<PortRange> out;
  if (trim(value).empty()) return out;
  while (true) {
    auto comma = value.find(',');
    std::string_view entry = trim(value.substr(0, comma));
    PortRange r;
    auto dash = entry.find('-');
    bool ok = dash == std::string_view::npos
                  ? port(entry, r.first) && (r.last = r.first, true)
                  : port(entry.substr(0, dash), r.first) && port(entry.substr(dash + 1), r.last) &&
                        r.first <= r.last;
    if (!ok)
      return fail(fmt::format(
          "'{}' is not a port (1-65535) or a range FIRST-LAST; write e.g. \"3306,5000-5010\"",
          entry));
    out.push_back(r);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return out;
}

}  // namespace sluice::controlplane::model
