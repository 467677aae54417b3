#include "controlplane/discovery/service.h"

#include "controlplane/model/proto_equal.h"
#include "sluice/common/log.h"

namespace sluice::controlplane::discovery {

using sluice::api::v1::WatchResponse;

namespace {

// One line per change of a node's set (what an operator checks first when a
// policy seems not to apply: did the node get it?).
void logPolicies(const std::string& node, uint64_t version, const sluice::api::v1::PolicySet& s) {
  constexpr int kNamesShown = 20;
  std::string names;
  int shown = 0;
  auto add = [&](const char* kind, const auto& p) {
    if (shown++ < kNamesShown) names += fmt::format(" {} {}/{}", kind, p.namespace_(), p.name());
  };
  for (const auto& p : s.authorization()) add("AuthorizationPolicy", p);
  for (const auto& p : s.peer()) add("PeerAuthentication", p);
  if (shown > kNamesShown) names += fmt::format(" (and {} more)", shown - kNamesShown);
  log::get("discovery")
      ->info("node {} policies at version {}: {} in force{}{}", node, version, shown,
             shown ? ":" : "", names);
}

}  // namespace

grpc::Status Service::Watch(grpc::ServerContext* ctx, const sluice::api::v1::WatchRequest* req,
                            grpc::ServerWriter<WatchResponse>* writer) {
  auto logger = log::get("discovery");
  const std::string node = req->node();
  if (node.empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "WatchRequest.node is required"};
  if (authenticate_) {
    auto who = authenticate_(ctx);
    if (!who) {
      logger->warn("refused a Watch for node {} from {}: {}", node, ctx->peer(),
                   who.error().describe());
      return {grpc::StatusCode::UNAUTHENTICATED, who.error().describe()};
    }
    if (*who != node) {
      logger->warn("refused a Watch: the token of node {} asked for node {}", *who, node);
      return {grpc::StatusCode::PERMISSION_DENIED, "this token belongs to node " + *who};
    }
  }
  const uint64_t epoch = store_.epoch();
  logger->info("agent of node {} connected from {} (resume version {} of epoch {:x}; this is {:x})",
               node, ctx->peer(), req->resume_version(), req->resume_epoch(), epoch);
  // Not a partial view: an empty one would take every workload, Service
  // and policy from the agent. It keeps its last view meanwhile.
  if (!store_.ready()) {
    logger->info("agent of node {} waits for the initial view of the cluster", node);
    while (!store_.waitReady(std::chrono::milliseconds(500)))
      if (ctx->IsCancelled() || stopping_)
        return {grpc::StatusCode::UNAVAILABLE,
                "the control plane has not read the cluster yet (see its log)"};
  }
  // The node's policies go out whole, in the first message of a stream and
  // whenever they differ from what this stream sent last.
  std::string sent_policies;
  auto toResponse = [&](const model::Delta& d, bool first) {
    WatchResponse r;
    r.set_version(d.version);
    r.set_epoch(epoch);
    r.set_full(d.full);
    for (const auto& w : d.upserts)
      *r.add_upserts() = w;  // every node sees every workload (destinations)
    for (const auto& uid : d.removed_uids) r.add_removed_uids(uid);
    for (const auto& s : d.services) *r.add_services() = s;
    for (const auto& key : d.removed_services) r.add_removed_services(key);
    if (d.policies) {
      std::string now = model::canonical(*d.policies);
      if (first || d.full || now != sent_policies) {
        if (now != sent_policies) logPolicies(node, d.version, *d.policies);
        *r.mutable_policies() = *d.policies;
        sent_policies = std::move(now);
      }
    }
    return r;
  };
  // One snapshot, read under the Store's lock, decides between "up to
  // date" and a full snapshot, so the policies sent match its version.
  model::Delta snap = store_.snapshot(node);
  uint64_t sent = snap.version;
  // A version only means something in its epoch: after a restart the
  // counter starts again, and an agent at the same number has another view.
  if (req->resume_version() != 0 && req->resume_version() == snap.version &&
      req->resume_epoch() == epoch) {
    model::Delta up_to_date;
    up_to_date.version = snap.version;
    up_to_date.policies = std::move(snap.policies);
    if (!writer->Write(toResponse(up_to_date, true))) return grpc::Status::OK;
  } else {
    if (!writer->Write(toResponse(snap, true))) return grpc::Status::OK;
  }
  while (!ctx->IsCancelled() && !stopping_) {
    auto d = store_.waitSince(sent, std::chrono::milliseconds(500), node);
    if (!d) continue;
    if (!writer->Write(toResponse(*d, false))) break;
    sent = d->version;
  }
  logger->info("agent of node {} disconnected", node);
  if (stopping_) return {grpc::StatusCode::UNAVAILABLE, "control plane shutting down"};
  return grpc::Status::OK;
}

}  // namespace sluice::controlplane::discovery
