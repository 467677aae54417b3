#include "controlplane/ca/service.h"

#include <openssl/crypto.h>

#include <fstream>

#include "sluice/common/log.h"

namespace sluice::controlplane::ca {

Result<std::map<std::string, std::string>> loadBootstrapTokens(const std::string& path) {
  std::ifstream in(path);
  if (!in) return failErrno("cannot read bootstrap tokens " + path);
  std::map<std::string, std::string> out;
  std::map<std::string, int> node_line, token_line;  // where each was first given
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    auto colon = line.find(':');
    if (colon == std::string::npos)
      return fail(fmt::format("{} line {}: expected 'node: token'", path, n));
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(" \t\""));
      s.erase(s.find_last_not_of(" \t\"\r") + 1);
      return s;
    };
    std::string node = trim(line.substr(0, colon)), token = trim(line.substr(colon + 1));
    if (node.empty() || token.size() < 16)
      return fail(
          fmt::format("{} line {}: empty node or a token shorter than 16 characters", path, n));
    // A node twice would keep one token silently; a token twice would
    // authenticate one node as the other.
    if (auto [it, fresh] = node_line.emplace(node, n); !fresh)
      return fail(
          fmt::format("{} line {}: node {} already has a token (line {}): give each node "
                      "one line",
                      path, n, node, it->second));
    if (auto [it, fresh] = token_line.emplace(token, n); !fresh)
      return fail(
          fmt::format("{} line {}: the token of line {} again: each node needs its own "
                      "token",
                      path, n, it->second));
    out[node] = token;
  }
  return out;
}

Result<std::string> CertificateService::authenticate(grpc::ServerContext* ctx) const {
  auto md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return fail("no authorization metadata (expected 'Bearer <node token>')");
  std::string value(it->second.data(), it->second.size());
  const std::string prefix = "Bearer ";
  if (value.rfind(prefix, 0) != 0) return fail("authorization metadata is not a Bearer token");
  std::string token = value.substr(prefix.size());
  for (const auto& [node, expected] : tokens_) {
    if (expected.size() == token.size() &&
        CRYPTO_memcmp(expected.data(), token.data(), token.size()) == 0)
      return node;
  }
  if (verify_) return verify_(token);
  return fail("unknown node token");
}

grpc::Status CertificateService::Sign(grpc::ServerContext* ctx,
                                      const sluice::api::v1::SignRequest* req,
                                      sluice::api::v1::SignResponse* resp) {
  auto logger = log::get("ca");
  auto node = authenticate(ctx);
  if (!node) {
    logger->warn("refused a Sign request from {}: {}", ctx->peer(), node.error().describe());
    return {grpc::StatusCode::UNAUTHENTICATED, node.error().describe()};
  }
  auto csr = x509::inspectCsr(req->csr_pem());
  if (!csr) {
    logger->warn("node {}: refused a malformed CSR: {}", *node, csr.error().describe());
    return {grpc::StatusCode::INVALID_ARGUMENT, csr.error().describe()};
  }
  auto id = x509::SpiffeId::parse(csr->uri);
  if (!id || id->trust_domain != authority_.trustDomain()) {
    std::string why = "identity '" + csr->uri + "' is not spiffe://" + authority_.trustDomain() +
                      "/ns/<ns>/sa/<sa>";
    logger->warn("node {}: {}", *node, why);
    return {grpc::StatusCode::INVALID_ARGUMENT, why};
  }
  // Before the first whole view every pod would look absent: not a refusal.
  if (!store_.ready()) {
    logger->info("node {}: {} must wait: the initial view of the cluster is not read yet", *node,
                 csr->uri);
    return {grpc::StatusCode::UNAVAILABLE,
            "the control plane has not read the cluster yet: try again shortly"};
  }
  if (!store_.runsOn(*node, id->ns, id->sa)) {
    std::string why = fmt::format("node {} runs no pod with service account {}/{}: refusing {}",
                                  *node, id->ns, id->sa, csr->uri);
    logger->warn("{}", why);
    return {grpc::StatusCode::PERMISSION_DENIED, why};
  }
  std::chrono::seconds ttl =
      req->ttl_seconds() > 0 ? std::chrono::seconds(req->ttl_seconds()) : default_ttl_;
  auto s = authority_.sign(req->csr_pem(), ttl);
  if (!s) {
    logger->warn("node {}: signing {} failed: {}", *node, csr->uri, s.error().describe());
    return {grpc::StatusCode::INVALID_ARGUMENT, s.error().describe()};
  }
  logger->info("signed {} for node {} (serial {}, {} s)", s->identity, *node, s->serial,
               ttl.count());
  resp->set_chain_pem(s->chain_pem);
  resp->set_trust_anchor_pem(authority_.trustAnchorPem());
  return grpc::Status::OK;
}

}  // namespace sluice::controlplane::ca
