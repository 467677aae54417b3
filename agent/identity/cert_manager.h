// Workload certificates of this node's enrolled identities. One private key
// per identity, generated here and never sent anywhere; a CSR goes to the
// control plane's CA. Certificates are renewed at half-life with jitter; a
// failed request is retried with backoff while the old certificate keeps
// serving. Identities are fetched ahead, as soon as a pod using them is
// enrolled. Thread-safe; renewals run on the manager's own thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>

#include "sluice/common/bearer_token.h"
#include "sluice/common/result.h"
#include "sluice/common/x509.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::identity {

// A certificate as the admin API's /certs shows an issuer or trust anchor:
// subject, not_after (RFC 3339) and not_after_unix.
nlohmann::json certificateJson(X509* cert);

// Sends a CSR to the CA. Implemented over gRPC (GrpcSigner) and by fakes.
class Signer {
 public:
  virtual ~Signer() = default;
  virtual Result<std::string> sign(const std::string& csr_pem,
                                   std::chrono::seconds ttl) = 0;  // chain PEM
};

// What the proxy presents (identity, chain, key) plus the validity.
struct Certified : ztunnel::WorkloadCredential {
  std::chrono::system_clock::time_point not_before, not_after;
};

struct CertManagerConfig {
  std::chrono::seconds ttl{0};  // 0: the control plane's default
  std::chrono::milliseconds initial_backoff{500};
  std::chrono::milliseconds max_backoff{30000};
};

class CertManager final : public ztunnel::CredentialSource {
 public:
  CertManager(Signer& signer, CertManagerConfig config);
  ~CertManager() override;

  // The identities (SPIFFE URIs) that must have certificates; others are dropped.
  void setIdentities(const std::set<std::string>& uris);
  // The control plane answers again: identities still waiting out a retry
  // backoff are requested now (the next failure backs off further).
  void retryNow();
  std::shared_ptr<const Certified> get(const std::string& uri) const;
  // For the proxy: the current certificate (the old one until a renewal lands).
  std::shared_ptr<const ztunnel::WorkloadCredential> credential(const std::string& uri) override {
    return get(uri);
  }
  nlohmann::json dump() const;
  // One line for /ready when renewals fail: which identities keep serving an
  // old certificate, until when, and why ("" when every renewal is on time).
  std::string renewalNote() const;
  // not_after of the certificate each identity serves now (identities still
  // waiting for their first certificate are left out).
  std::map<std::string, std::chrono::system_clock::time_point> expiries() const;

 private:
  struct Entry {
    std::shared_ptr<const Certified> current;
    std::chrono::system_clock::time_point renew_at{};  // epoch: now
    std::chrono::milliseconds backoff{0};
    std::string state = "pending";  // pending | valid | retrying
    std::string last_error;
    std::string serial;
  };
  void run();
  void refresh(const std::string& uri);  // called without mu_

  Signer& signer_;
  CertManagerConfig config_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::map<std::string, Entry> entries_;
  bool stopping_ = false;
  std::jthread thread_;
};

// Certificates.Sign over the control plane's TLS channel with the node token.
class GrpcSigner final : public Signer {
 public:
  GrpcSigner(const std::string& target, const std::string& trust_anchor_pem, BearerToken token);
  ~GrpcSigner() override;
  Result<std::string> sign(const std::string& csr_pem, std::chrono::seconds ttl) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::agent::identity
