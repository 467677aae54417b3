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

  // Client, before the handshake: offers the session (TLS 1.3 ticket) that
  // cred's last tunnel to `peer` (its expected identity and address) got,
  // and keeps the tickets this connection receives for the next one. A
  // ticket is used once and lives kSessionLifetime; a renewed credential
  // starts without any (its own SSL_CTX, its own ticket keys on a server).
  // The peer's identity is checked the same way on a resumed session: its
  // verified certificate travels in the session (tls::peerIdentity).
  void offerSession(SSL* ssl, const std::shared_ptr<const WorkloadCredential>& cred,
                    const std::string& peer);
  static constexpr long kSessionLifetime = 300;  // seconds
  static constexpr size_t kMaxSessions = 256;    // per credential

 private:
  Contexts() = default;
  Result<SslCtx> build(const WorkloadCredential& cred, bool server) const;
  struct SessionFree {
    void operator()(SSL_SESSION* s) const { SSL_SESSION_free(s); }
  };
  struct Entry {
    std::weak_ptr<const WorkloadCredential> cred;
    SslCtx client, server;
    std::map<std::string, std::unique_ptr<SSL_SESSION, SessionFree>> sessions;  // by peer
  };
  struct TicketKey;
  static int newSession(SSL* ssl, SSL_SESSION* session);
  // The entry of a live credential (mu_ held); cache_.end() when it is gone.
  std::map<const WorkloadCredential*, Entry>::iterator entryLocked(
      const std::shared_ptr<const WorkloadCredential>& cred);
  X509_STORE* store_ = nullptr;
  std::mutex mu_;
  std::map<const WorkloadCredential*, Entry> cache_;
};

// The TLS 1.3 cipher suites in order of preference (OpenSSL syntax): the
// cheapest AEAD first for a CPU with (or without) AES instructions.
const char* cipherSuites(bool aes_hardware);
bool aesHardware();  // this CPU has AES instructions (AES-NI, ARMv8 crypto)

// The peer's SPIFFE ID after a verified handshake (the one URI SAN of its
// leaf, x509::svidId). "" for none; `why` (when given) then says what was
// wrong with the certificate (no URI SAN, several, a CA certificate).
std::string peerIdentity(SSL* ssl, std::string* why = nullptr);

}  // namespace sluice::ztunnel::tls
