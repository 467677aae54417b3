// The sluice.dev/opaque-ports annotation (on a Pod or a Service): a comma
// list of ports and inclusive ranges, e.g. "3306,5000-5010", as Linkerd's
// config.linkerd.io/opaque-ports. The ports it names are added to the
// agent's default opaque ports (server-first protocols); they never replace
// them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::controlplane::model {

inline constexpr const char* kOpaquePortsAnnotation = "sluice.dev/opaque-ports";

struct PortRange {
  uint16_t first = 0;
  uint16_t last = 0;  // inclusive; == first for one port
  bool operator==(const PortRange&) const = default;
};

// Spaces around entries are allowed; an empty value is an empty list. Any
// bad entry (not a number, 0, above 65535, a reversed range, an empty entry
// between commas) fails the whole value, naming the entry.
Result<std::vector<PortRange>> parseOpaquePorts(std::string_view value);

}  // namespace sluice::controlplane::model
