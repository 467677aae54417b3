#include "ztunnel/tls/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>

#include <cstring>

#include "sluice/common/x509.h"

namespace sluice::ztunnel::tls {

namespace {

constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};

// Server side ALPN: h2 or the handshake fails (no_application_protocol).
int selectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned inlen, void*) {
  unsigned char* sel = nullptr;
  if (SSL_select_next_proto(&sel, outlen, kAlpnH2, sizeof(kAlpnH2), in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

// AES-GCM with a 128-bit key is the cheapest AEAD where the CPU has AES
// instructions (about 1.3x the rate of AES-256-GCM per core, see
// docs/performance.md); without them, ChaCha20-Poly1305 is. OpenSSL's own
// default puts AES-256-GCM first.
const char* cipherSuites(bool aes_hardware) {
  return aes_hardware
             ? "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
             : "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384";
}

bool aesHardware() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("aes");
#elif defined(__aarch64__)
  return true;  // ARMv8 crypto extensions are in every core Debian's arm64 runs on
#else
  return false;
#endif
}

Result<std::unique_ptr<Contexts>> Contexts::create(const std::string& trust_anchor_pem) {
  auto anchors = x509::parseChain(trust_anchor_pem);
  if (!anchors) return fail("trust anchor: " + anchors.error().describe());
  if (anchors->empty()) return fail("trust anchor: no certificate in the PEM");
  std::unique_ptr<Contexts> c(new Contexts());
  c->store_ = X509_STORE_new();
  if (!c->store_) return fail("X509_STORE_new failed");
  for (auto& a : *anchors)
    if (X509_STORE_add_cert(c->store_, a.get()) != 1)
      return fail("trust anchor: " + x509::opensslError());
  return c;
}

Contexts::~Contexts() {
  cache_.clear();
  X509_STORE_free(store_);
}

Result<SslCtx> Contexts::build(const WorkloadCredential& cred, bool server) const {
  SslCtx ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) return fail("SSL_CTX_new: " + x509::opensslError());
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
  // No SSL_MODE_RELEASE_BUFFERS: it frees and allocates the record buffers
  // around every SSL_read/SSL_write (about 20 malloc calls per new
  // connection on a tunnel); a quiet tunnel frees them (Tunnel::tick).
  // Both ends are Sluice: the server's order decides.
  static const bool aes = aesHardware();
  if (SSL_CTX_set_ciphersuites(c, cipherSuites(aes)) != 1)
    return fail("TLS 1.3 cipher suites: " + x509::opensslError());
  if (server) SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE);
  auto chain = x509::parseChain(cred.chain_pem);
  if (!chain || chain->empty())
    return fail("certificate chain of " + cred.identity + ": " +
                (chain ? std::string("empty") : chain.error().describe()));
  auto key = x509::parsePrivateKey(cred.key_pem);
  if (!key) return fail("private key of " + cred.identity + ": " + key.error().describe());
  if (SSL_CTX_use_certificate(c, (*chain)[0].get()) != 1 ||
      SSL_CTX_use_PrivateKey(c, key->get()) != 1 || SSL_CTX_check_private_key(c) != 1)
    return fail("certificate/key of " + cred.identity + ": " + x509::opensslError());
  for (size_t i = 1; i < chain->size(); ++i)
    if (SSL_CTX_add1_chain_cert(c, (*chain)[i].get()) != 1)
      return fail("chain of " + cred.identity + ": " + x509::opensslError());
  SSL_CTX_set1_cert_store(c, store_);
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  // Resumption: stateless tickets (the server keeps nothing; its ticket keys
  // are this SSL_CTX's, so they end with the credential); the client keeps
  // them (offerSession).
  SSL_CTX_set_timeout(c, kSessionLifetime);
  static constexpr unsigned char kSessionContext[] = "sluice-hbone";
  SSL_CTX_set_session_id_context(c, kSessionContext, sizeof(kSessionContext) - 1);
  if (server) {
    SSL_CTX_set_alpn_select_cb(c, selectAlpn, nullptr);
    SSL_CTX_set_num_tickets(c, 1);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  } else {
    SSL_CTX_set_alpn_protos(c, kAlpnH2, sizeof(kAlpnH2));
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, newSession);
  }
  return ctx;
}

// What a client connection saves its tickets under (SSL ex data).
struct Contexts::TicketKey {
  Contexts* owner;
  std::weak_ptr<const WorkloadCredential> cred;
  std::string peer;
  static int index() {
    static const int i = SSL_get_ex_new_index(
        0, nullptr, nullptr, nullptr, [](void*, void* p, CRYPTO_EX_DATA*, int, long, void*) {
          delete static_cast<TicketKey*>(p);
        });
    return i;
  }
};

std::map<const WorkloadCredential*, Contexts::Entry>::iterator Contexts::entryLocked(
    const std::shared_ptr<const WorkloadCredential>& cred) {
  auto it = cache_.find(cred.get());
  return it != cache_.end() && it->second.cred.lock() == cred ? it : cache_.end();
}

void Contexts::offerSession(SSL* ssl, const std::shared_ptr<const WorkloadCredential>& cred,
                            const std::string& peer) {
  {
    std::lock_guard lk(mu_);
    auto it = entryLocked(cred);
    if (it != cache_.end()) {
      auto s = it->second.sessions.find(peer);
      if (s != it->second.sessions.end()) {
        if (SSL_SESSION_is_resumable(s->second.get())) SSL_set_session(ssl, s->second.get());
        it->second.sessions.erase(s);  // once
      }
    }
  }
  auto* key = new TicketKey{this, cred, peer};
  if (SSL_set_ex_data(ssl, TicketKey::index(), key) != 1) delete key;
}

// A ticket arrived on a client connection: kept for the next tunnel to its
// peer (1: OpenSSL's reference is ours now).
int Contexts::newSession(SSL* ssl, SSL_SESSION* session) {
  auto* key = static_cast<TicketKey*>(SSL_get_ex_data(ssl, TicketKey::index()));
  auto cred = key ? key->cred.lock() : nullptr;
  if (!cred) return 0;
  Contexts& self = *key->owner;
  std::lock_guard lk(self.mu_);
  auto it = self.entryLocked(cred);
  if (it == self.cache_.end()) return 0;
  auto& sessions = it->second.sessions;
  if (sessions.size() >= kMaxSessions && !sessions.contains(key->peer))
    sessions.erase(sessions.begin());
  sessions[key->peer].reset(session);
  return 1;
}

Result<SSL_CTX*> Contexts::get(const std::shared_ptr<const WorkloadCredential>& cred, bool server) {
  std::lock_guard lk(mu_);
  auto it = cache_.find(cred.get());
  if (it != cache_.end() && it->second.cred.lock() != cred) {
    cache_.erase(it);  // an old credential's address, reused
    it = cache_.end();
  }
  if (it == cache_.end()) {
    for (auto i = cache_.begin(); i != cache_.end();)  // drop renewed-away credentials
      i = i->second.cred.expired() ? cache_.erase(i) : std::next(i);
    it = cache_.emplace(cred.get(), Entry{cred, nullptr, nullptr, {}}).first;
  }
  SslCtx& slot = server ? it->second.server : it->second.client;
  if (!slot) {
    auto built = build(*cred, server);
    if (!built) return tl::unexpected(built.error());
    slot = std::move(*built);
  }
  return slot.get();
}

std::string peerIdentity(SSL* ssl, std::string* why) {
  X509* peer = SSL_get0_peer_certificate(ssl);
  if (!peer || SSL_get_verify_result(ssl) != X509_V_OK) return {};
  auto id = x509::svidId(peer);
  if (!id && why) *why = id.error().describe();
  return id.value_or("");
}

}  // namespace sluice::ztunnel::tls
