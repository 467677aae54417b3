#include "controlplane/discovery/service.h"

#include "sluice/common/log.h"

namespace sluice::controlplane::discovery {

using sluice::api::v1::WatchResponse;

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
  auto toResponse = [&](const model::Delta& d) {
    WatchResponse r;
    r.set_version(d.version);
    r.set_epoch(epoch);
    r.set_full(d.full);
    for (const auto& w : d.upserts)
      *r.add_upserts() = w;  // every node sees every workload (destinations)
    for (const auto& uid : d.removed_uids) r.add_removed_uids(uid);
    for (const auto& s : d.services) *r.add_services() = s;
    for (const auto& key : d.removed_services) r.add_removed_services(key);
    return r;
  };
  uint64_t sent;
  uint64_t current = store_.version();
  // A version only means something in its epoch: after a restart the
  // counter starts again, and an agent at the same number has another view.
  if (req->resume_version() != 0 && req->resume_version() == current &&
      req->resume_epoch() == epoch) {
    WatchResponse up_to_date;
    up_to_date.set_version(current);
    up_to_date.set_epoch(epoch);
    if (!writer->Write(up_to_date)) return grpc::Status::OK;
    sent = current;
  } else {
    model::Delta snap = store_.snapshot();
    if (!writer->Write(toResponse(snap))) return grpc::Status::OK;
    sent = snap.version;
  }
  while (!ctx->IsCancelled() && !stopping_) {
    auto d = store_.waitSince(sent, std::chrono::milliseconds(500));
    if (!d) continue;
    if (!writer->Write(toResponse(*d))) break;
    sent = d->version;
  }
  logger->info("agent of node {} disconnected", node);
  if (stopping_) return {grpc::StatusCode::UNAVAILABLE, "control plane shutting down"};
  return grpc::Status::OK;
}

}  // namespace sluice::controlplane::discovery
