// Decides, per app connection, where it goes and over what:
//   outbound (15001): no view yet -> refused; a Service VIP -> an endpoint
//     picked by the balancer; then a meshed pod on this node -> same-node
//     handoff (plaintext relay into its netns, after the authorization hook);
//     a meshed pod elsewhere -> HBONE; anything else -> passthrough.
//   inbound (15006, plaintext from outside the mesh) -> authorization hook,
//     then a relay into the pod.
// Upstreams report a Service attempt's outcome to the Attempt, which comes
// back here (AttemptSink): the balancer learns of it and a failed attempt is
// routed again, from a fresh completion, never from inside the failing one.
// Worker thread only.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "sluice/common/log_limiter.h"
#include "ztunnel/hbone/client.h"
#include "ztunnel/proxy/attempt.h"
#include "ztunnel/proxy/balancer.h"
#include "ztunnel/proxy/context.h"
#include "ztunnel/proxy/plain.h"
#include "ztunnel/proxy/pod.h"
#include "ztunnel/uring/ops.h"

namespace sluice::ztunnel::proxy {

class Router final : public AttemptSink {
 public:
  Router(WorkerContext& ctx, const PodIndexRef& local_pods, MeshDirectory* directory,
         PlainUpstream& plain, hbone::Client* hbone);

  // An app connection accepted on a pod's 15001; a->dst is its original
  // destination.
  void outbound(std::unique_ptr<Attempt> a);
  // A connection from outside the mesh accepted on pod's 15006 for `dst`.
  void inbound(const std::shared_ptr<PodState>& pod, UniqueFd client, const SockAddr& peer,
               const SockAddr& dst);

  void tick(std::chrono::steady_clock::time_point now) {
    balancer_.prune(now);
    log::flushAll({&refused_log_, &socket_log_, &no_view_log_, &eject_log_, &retry_log_,
                   &no_attempts_log_, &no_endpoint_log_, &share_log_},
                  now);
  }
  void shutdown();  // refuses what comes next, drops queued retries
  bool idle() const { return deferred_.empty() && !soon_.busy(); }

  // AttemptSink
  void attemptResult(Attempt& a, bool ok) override;
  void attemptReleased(Attempt& a) override;
  bool attemptRetry(std::unique_ptr<Attempt>& a, std::string_view why) override;

 private:
  void route(std::unique_ptr<Attempt> a);
  void runDeferred(const io_uring_cqe&);
  // Asks the hook (WorkerContext::denied); on deny writes the record. True: denied.
  bool deny(const std::shared_ptr<LiveRecord>& live);
  // A socket of `family` in `in`'s netns, bound to `bind` unless empty; a
  // failure is counted and logged (rate-limited).
  std::optional<Upstream> upstreamSocket(const PodState& in, uint32_t mark, int family,
                                         const IpAddr& bind);
  std::shared_ptr<LiveRecord> record(Direction d, Path p, const PodState& pod,
                                     const SockAddr& source, const SockAddr& dst);

  WorkerContext& ctx_;
  const PodIndexRef& local_pods_;
  MeshDirectory* directory_;
  PlainUpstream& plain_;
  hbone::Client* hbone_;
  Balancer balancer_;
  bool stopping_ = false;
  std::vector<std::unique_ptr<Attempt>> deferred_;  // retries, routed on the next completion
  uring::Op<&Router::runDeferred> soon_{this};
  log::Limiter refused_log_, socket_log_, no_view_log_, eject_log_, retry_log_, no_attempts_log_,
      no_endpoint_log_, share_log_;
};

}  // namespace sluice::ztunnel::proxy
