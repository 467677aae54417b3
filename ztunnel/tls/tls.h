// TLS 1.3 contexts for HBONE. One SSL_CTX per (workload credential, role),
// built on first use and cached until the credential is renewed (a renewal
// is a new credential object, so new handshakes present the new
// certificate while established tunnels keep theirs). Peers must present a
// chain ending at the trust anchor; ALPN is h2 and nothing else.
#pragma once

#include <openssl/ssl.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "sluice/common/result.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::ztunnel::tls {

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using SslCtx = std::unique_ptr<SSL_CTX, SslCtxFree>;

class Contexts {
 public:
  static Result<std::unique_ptr<Contexts>> create(const std::string& trust_anchor_pem);
  ~Contexts();

  // The context presenting cred; server = accepts on 15008. Thread-safe.
  // The SSL_CTX stays valid while an SSL made from it exists (SSL_new
  // takes a reference).
  Result<SSL_CTX*> get(const std::shared_ptr<const WorkloadCredential>& cred, bool server);

 private:
  Contexts() = default;
  Result<SslCtx> build(const WorkloadCredential& cred, bool server) const;
  struct Entry {
    std::weak_ptr<const WorkloadCredential> cred;
    SslCtx client, server;
  };
  X509_STORE* store_ = nullptr;
  std::mutex mu_;
  std::map<const WorkloadCredential*, Entry> cache_;
};

// The TLS 1.3 cipher suites in order of preference (OpenSSL syntax): the
// cheapest AEAD first for a CPU with (or without) AES instructions.
const char* cipherSuites(bool aes_hardware);
bool aesHardware();  // this CPU has AES instructions (AES-NI, ARMv8 crypto)

// The peer's SPIFFE ID after a verified handshake (URI SAN of its leaf).
std::string peerIdentity(SSL* ssl);

}  // namespace sluice::ztunnel::tls
