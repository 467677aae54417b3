// Certificates.Sign: authenticates the calling node by its bootstrap token,
// authorizes the requested identity against the pods running on that node,
// and signs. Every refusal is a clear gRPC status and one log line.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>

#include "controlplane/ca/authority.h"
#include "controlplane/model/store.h"
#include "sluice.grpc.pb.h"
#include "sluice/common/result.h"

namespace sluice::controlplane::ca {

// node name -> token, from a file of `node: token` lines (YAML-compatible).
Result<std::map<std::string, std::string>> loadBootstrapTokens(const std::string& path);

class CertificateService final : public sluice::api::v1::Certificates::Service {
 public:
  CertificateService(const Authority& authority, const model::Store& store,
                     std::map<std::string, std::string> node_tokens,
                     std::chrono::seconds default_ttl)
      : authority_(authority),
        store_(store),
        tokens_(std::move(node_tokens)),
        default_ttl_(default_ttl) {}

  grpc::Status Sign(grpc::ServerContext* ctx, const sluice::api::v1::SignRequest* req,
                    sluice::api::v1::SignResponse* resp) override;

  // The node a request authenticates as, or an error status.
  Result<std::string> authenticate(grpc::ServerContext* ctx) const;

  // Tokens that are not bootstrap tokens go here (Kubernetes: TokenReview of
  // the agent's projected service account token); returns the node.
  using TokenVerifier = std::function<Result<std::string>(const std::string& token)>;
  void setTokenVerifier(TokenVerifier v) { verify_ = std::move(v); }
  bool authenticates() const { return !tokens_.empty() || verify_ != nullptr; }

 private:
  const Authority& authority_;
  const model::Store& store_;
  std::map<std::string, std::string> tokens_;
  std::chrono::seconds default_ttl_;
  TokenVerifier verify_;
};

}  // namespace sluice::controlplane::ca
