#include "ztunnel/proxy/context.h"

#include "sluice/common/log.h"

namespace sluice::ztunnel::proxy {

std::optional<std::string> WorkerContext::denied(const LiveRecord& live, bool recheck) {
  if (!authorizer) return std::nullopt;
  InboundRequest request = inboundRequestOf(live);
  request.recheck = recheck;
  Authorization a = authorizer->authorize(request);
  if (a.verdict == Verdict::kAllow) return std::nullopt;
  if (a.why.empty()) a.why = "refused by the authorization hook";
  counters().add(Counter::kDenied);
  const auto& r = live.rec;
  SLUICE_LOG_LIMITED(denied_log, log::get("ztunnel"), spdlog::level::info,
                     "pod {}: denied {} connection {} from {} ({}) to {}: {}", live.dest_pod,
                     toString(r.path), r.id, r.source,
                     r.source_principal.empty() ? "unauthenticated" : r.source_principal,
                     r.destination, a.why);
  return std::move(a.why);
}

}  // namespace sluice::ztunnel::proxy
