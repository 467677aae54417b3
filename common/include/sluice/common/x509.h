// X.509 and SPIFFE helpers shared by the control plane's CA and the agent's
// certificate manager (OpenSSL 3). Owning pointers free with the right
// OpenSSL call; PEM is the exchange format on the wire.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::x509 {

struct PKeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
using PKey = std::unique_ptr<EVP_PKEY, PKeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;

// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>: the identity
// of the pods of a service account. The one place that spells it.
inline std::string workloadUri(const std::string& trust_domain, const std::string& ns,
                               const std::string& service_account) {
  return "spiffe://" + trust_domain + "/ns/" + ns + "/sa/" + service_account;
}

// What a trust domain may be (the identities SpiffeId::parse reads back):
// 1 to 253 letters, digits, '-', '.' and '_'.
bool validTrustDomain(const std::string& trust_domain);
inline constexpr const char* kTrustDomainRule =
    "a trust domain is 1 to 253 letters, digits, '-', '.' and '_', e.g. cluster.local";

struct SpiffeId {
  std::string trust_domain;
  std::string ns;
  std::string sa;
  std::string uri() const { return workloadUri(trust_domain, ns, sa); }
  static std::optional<SpiffeId> parse(const std::string& uri);
};

// A fresh ECDSA P-256 key; it never leaves the process that made it.
Result<PKey> generateP256();
std::string privateKeyPem(EVP_PKEY* key);
Result<PKey> parsePrivateKey(const std::string& pem);

// A CSR for `uri` (the only SAN; empty subject), signed by key.
Result<std::string> makeCsr(EVP_PKEY* key, const std::string& uri);

struct CsrInfo {
  std::string uri;  // the single URI SAN
  PKey public_key;  // ECDSA P-256
};
// Checks the CSR's self-signature, that its key is P-256 and that it asks
// for exactly one URI SAN and nothing else.
Result<CsrInfo> inspectCsr(const std::string& pem);

Result<Cert> parseCert(const std::string& pem);
Result<std::vector<Cert>> parseChain(const std::string& pem);
std::string certPem(X509* cert);

std::optional<std::string> uriSan(X509* cert);
// The SPIFFE ID of a peer's X.509-SVID leaf: its one URI SAN. Refused (with
// the reason) when it has none or several, or when it is a CA certificate.
Result<std::string> svidId(X509* cert);
std::string serialHex(X509* cert);
std::chrono::system_clock::time_point notBefore(X509* cert);
std::chrono::system_clock::time_point notAfter(X509* cert);
// The subject as one line ("CN=Sluice Mesh CA,O=sluice"), for operators.
std::string subjectText(X509* cert);

// OpenSSL's error queue as text (and cleared), for error messages.
std::string opensslError();

}  // namespace sluice::x509
