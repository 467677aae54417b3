// The mesh CA: a trust anchor and an issuing CA (from PEM files, or a
// development pair generated once and persisted). Signs workload leaves:
// ECDSA P-256, URI SAN only (the SPIFFE ID), chain = leaf + issuer.
// Whether a caller may have an identity is decided by the caller of sign()
// (node authorization); the authority checks form, not permission.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "sluice/common/result.h"
#include "sluice/common/x509.h"

namespace sluice::controlplane::ca {

inline constexpr std::chrono::seconds kMinLeafTtl{60};

struct Signed {
  std::string chain_pem;  // leaf then issuer
  std::string identity;   // the SPIFFE URI signed
  std::string serial;     // hex
  std::chrono::system_clock::time_point not_after;
};

// A mesh CA as PEM text: the trust anchor(s), the issuing CA and its key.
struct CaMaterial {
  std::string trust_anchor_pem;
  std::string ca_cert_pem;
  std::string ca_key_pem;
};

class Authority {
 public:
  // A fresh self-signed trust anchor (10 years; its key is not kept) and an
  // issuing CA it signed (5 years). Callers must warn that a production mesh
  // should bring its own.
  static Result<CaMaterial> generateSelfSigned();
  // Checks the material (key matches, issuer is a CA and chains to the
  // anchor); `origin` names where it came from in errors.
  static Result<std::unique_ptr<Authority>> fromPem(const CaMaterial& material,
                                                    const std::string& trust_domain,
                                                    const std::string& origin);
  // trust_anchor_pem may equal the issuer (a root acting as its own issuer).
  static Result<std::unique_ptr<Authority>> fromFiles(const std::string& trust_anchor_path,
                                                      const std::string& ca_cert_path,
                                                      const std::string& ca_key_path,
                                                      const std::string& trust_domain);
  // Loads the development CA from dir, creating it there (root + issuer,
  // key files mode 0600) on first use. Callers must warn loudly.
  static Result<std::unique_ptr<Authority>> development(const std::string& dir,
                                                        const std::string& trust_domain,
                                                        bool* created);

  // Signs a CSR for a SPIFFE ID of this trust domain; ttl >= kMinLeafTtl,
  // capped at the issuer's own expiry.
  Result<Signed> sign(const std::string& csr_pem, std::chrono::seconds ttl) const;
  // A serving certificate for the control plane itself (IP and DNS SANs + a
  // SPIFFE ID of the control plane), with a fresh key: {key_pem, chain_pem}.
  Result<std::pair<std::string, std::string>> issueServing(
      const std::vector<std::string>& ip_sans, std::chrono::seconds ttl,
      const std::vector<std::string>& dns_sans = {}) const;

  const std::string& trustAnchorPem() const { return anchor_pem_; }
  const std::string& trustDomain() const { return trust_domain_; }

 private:
  Authority() = default;
  Result<x509::Cert> issue(EVP_PKEY* subject_key, const std::vector<std::string>& sans,
                           std::chrono::seconds ttl, bool is_ca) const;

  std::string trust_domain_;
  std::string anchor_pem_;
  x509::Cert issuer_;
  x509::PKey issuer_key_;
};

}  // namespace sluice::controlplane::ca
