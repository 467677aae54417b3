// Discovery.Watch: a snapshot (or "up to date") then deltas, per agent stream.
// Every node receives every workload and service (remote ones are
// destinations) and only the policies that select one of its own workloads
// (model/policy_filter.h): the whole set in the first message of a stream
// and again in every later message in which it changed.
#pragma once

#include <atomic>
#include <functional>

#include "controlplane/model/store.h"
#include "sluice.grpc.pb.h"

namespace sluice::controlplane::discovery {

class Service final : public sluice::api::v1::Discovery::Service {
 public:
  explicit Service(model::Store& store) : store_(store) {}
  grpc::Status Watch(grpc::ServerContext* ctx, const sluice::api::v1::WatchRequest* req,
                     grpc::ServerWriter<sluice::api::v1::WatchResponse>* writer) override;
  // Ends every stream promptly (before grpc::Server::Shutdown).
  void stop() { stopping_ = true; }
  // When set, a stream must authenticate as the node it asks for.
  using Authenticator = std::function<Result<std::string>(grpc::ServerContext*)>;
  void setAuthenticator(Authenticator a) { authenticate_ = std::move(a); }

 private:
  model::Store& store_;
  std::atomic<bool> stopping_{false};
  Authenticator authenticate_;
};

}  // namespace sluice::controlplane::discovery
