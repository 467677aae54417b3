// /live/tap on the admin API: a tap session as a stream of JSON lines, one
// per request (toJson(TapEvent)); {"dropped": N} when the session fell behind
// (N: requests not shown so far); an empty line after a second of silence,
// so that a client that went away is noticed. Query parameters: the filter's
// (TapFilter::fromQuery) and `max`, the number of requests after which the
// stream ends.
#pragma once

#include <chrono>
#include <functional>

#include "agent/admin/server.h"
#include "agent/telemetry/tap.h"

namespace sluice::agent::telemetry {

using TapClock = std::chrono::steady_clock;

admin::StreamOpener tapStreamOpener(TapHub& hub,
                                    std::function<TapClock::time_point()> now = TapClock::now);

}  // namespace sluice::agent::telemetry
