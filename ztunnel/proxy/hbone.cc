#include "ztunnel/proxy/hbone.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <cstring>

#include "sluice/common/addr.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/log.h"
#include "sluice/common/x509.h"
#include "ztunnel/inpod/inpod.h"
#include "ztunnel/proxy/engine_impl.h"
#include "ztunnel/tls/tls.h"

namespace sluice::ztunnel::proxy {

namespace {

auto logger() { return log::get("hbone"); }

constexpr size_t kCipherRecv = 64 * 1024;  // one socket read
// One socket read before the handshake is done: a ClientHello or a
// certificate chain fits in a few reads, and a flood of idle or stalled
// handshakes costs little memory each.
constexpr size_t kHandshakeRecv = 4 * 1024;
constexpr size_t kMaxEarlyBytes = 64 * 1024;     // ciphertext held while waiting for a certificate
constexpr size_t kCipherHighWater = 256 * 1024;  // stop producing frames above this
constexpr size_t kCipherSendChunk = 256 * 1024;  // one socket write

Tunnel& tunnelOf(void* user_data) { return *static_cast<Tunnel*>(user_data); }

nghttp2_nv header(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE};
}

__kernel_timespec toTimespec(std::chrono::milliseconds ms) {
  __kernel_timespec ts{};
  ts.tv_sec = ms.count() / 1000;
  ts.tv_nsec = (ms.count() % 1000) * 1000000;
  return ts;
}

// The client's address from `Forwarded: for="ip:port"` (RFC 7239).
std::optional<sockaddr_in> forwardedFor(std::string_view v) {
  auto p = v.find("for=");
  if (p == std::string_view::npos) return std::nullopt;
  v.remove_prefix(p + 4);
  if (!v.empty() && v.front() == '"') {
    v.remove_prefix(1);
    v = v.substr(0, v.find('"'));
  } else {
    v = v.substr(0, v.find_first_of(";, "));
  }
  return parseEndpoint(std::string(v));
}

std::string sslError(SSL* ssl, int rc) {
  int err = SSL_get_error(ssl, rc);
  std::string detail = x509::opensslError();
  long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK)
    detail += (detail.empty() ? "" : "; ") + std::string("certificate: ") +
              X509_verify_cert_error_string(verify);
  if (detail.empty()) detail = "SSL error " + std::to_string(err);
  return detail;
}

// --- nghttp2 callbacks: forward to the tunnel's worker ---

int cbBeginHeaders(nghttp2_session*, const nghttp2_frame* f, void* ud) {
  return tunnelOf(ud).hw->onBeginHeaders(tunnelOf(ud), f);
}
int cbHeader(nghttp2_session*, const nghttp2_frame* f, const uint8_t* name, size_t namelen,
             const uint8_t* value, size_t valuelen, uint8_t, void* ud) {
  return tunnelOf(ud).hw->onHeader(
      tunnelOf(ud), f, std::string_view(reinterpret_cast<const char*>(name), namelen),
      std::string_view(reinterpret_cast<const char*>(value), valuelen));
}
int cbFrameRecv(nghttp2_session*, const nghttp2_frame* f, void* ud) {
  return tunnelOf(ud).hw->onFrameRecv(tunnelOf(ud), f);
}
// A refusal (401/503) is a complete response; the client's half of the
// stream is then closed with RST_STREAM(NO_ERROR) (RFC 9113 8.1) — after the
// HEADERS went out, or nghttp2 would drop them.
int cbFrameSend(nghttp2_session* session, const nghttp2_frame* f, void*) {
  if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, f->hd.stream_id));
  if (s && s->rst_after_response)
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
  return 0;
}
int cbDataChunk(nghttp2_session*, uint8_t, int32_t id, const uint8_t* data, size_t len, void* ud) {
  return tunnelOf(ud).hw->onDataChunk(tunnelOf(ud), id, data, len);
}
int cbStreamClose(nghttp2_session*, int32_t id, uint32_t error_code, void* ud) {
  return tunnelOf(ud).hw->onStreamClose(tunnelOf(ud), id, error_code);
}
ssize_t cbReadData(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                   nghttp2_data_source* source, void*) {
  auto* s = static_cast<Stream*>(source->ptr);
  return s->hw->readData(*s, buf, length, flags);
}

}  // namespace

void TunnelOp::complete(const io_uring_cqe& cqe) { t->hw->onTunnel(*t, kind, cqe); }
void StreamOp::complete(const io_uring_cqe& cqe) { s->hw->onStream(*s, kind, cqe); }

HboneWorker::HboneWorker(Worker& worker, EngineImpl& engine, uring::Ring& ring)
    : worker_(worker), engine_(engine), ring_(ring) {
  nghttp2_session_callbacks_new(&callbacks_);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks_, cbBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(callbacks_, cbHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks_, cbFrameRecv);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks_, cbFrameSend);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks_, cbDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks_, cbStreamClose);
  nghttp2_option_new(&options_);
  // Window updates follow what the app has actually taken (backpressure).
  nghttp2_option_set_no_auto_window_update(options_, 1);
  nghttp2_option_set_peer_max_concurrent_streams(options_, engine_.config().hbone_max_streams);
}

HboneWorker::~HboneWorker() {
  for (auto& [p, t] : tunnels_) {
    if (t->h2) nghttp2_session_del(t->h2);
    if (t->ssl) SSL_free(t->ssl);
  }
  nghttp2_option_del(options_);
  nghttp2_session_callbacks_del(callbacks_);
}

// ------------------------------------------------------------ tunnels

Tunnel* HboneWorker::newTunnel(bool server, const std::shared_ptr<PodState>& pod,
                               std::shared_ptr<const WorkloadCredential> cred) {
  auto t = std::make_unique<Tunnel>();
  t->hw = this;
  t->id = engine_.nextId();
  t->server = server;
  t->pod = pod;
  t->cred = std::move(cred);
  for (int k = 0; k < kTOpCount; ++k) {
    t->ops[k].t = t.get();
    t->ops[k].kind = k;
  }
  auto now = Clock::now();
  t->deadline = now + engine_.config().hbone_handshake_timeout;
  t->created = t->last_rx = t->idle_since = now;
  engine_.counters().hbone_opened++;
  engine_.counters().hbone_active++;
  Tunnel* raw = t.get();
  tunnels_.emplace(raw, std::move(t));
  return raw;
}

bool HboneWorker::startTls(Tunnel& t) {
  auto ctx = engine_.tls().get(t.cred, t.server);
  if (!ctx) {
    logger()->error("tunnel {}: TLS context for {}: {}", t.id, t.cred->identity,
                    ctx.error().describe());
    closeTunnel(t, "tls_context_error");
    return false;
  }
  t.ssl = SSL_new(*ctx);
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (!t.ssl || !rbio || !wbio) {
    BIO_free(rbio);
    BIO_free(wbio);
    closeTunnel(t, "out_of_memory");
    return false;
  }
  BIO_set_mem_eof_return(rbio, -1);  // empty = "want read", not EOF
  SSL_set_bio(t.ssl, rbio, wbio);
  if (!t.early.empty()) {
    BIO_write(rbio, t.early.data(), static_cast<int>(t.early.size()));
    std::string().swap(t.early);
  }
  if (t.server)
    SSL_set_accept_state(t.ssl);
  else
    SSL_set_connect_state(t.ssl);  // no SNI: identities are checked by SPIFFE ID
  t.state = Tunnel::kHandshaking;
  progress(t);
  return true;
}

void HboneWorker::handshakeDone(Tunnel& t) {
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(t.ssl, &alpn, &alpn_len);
  std::string peer = tls::peerIdentity(t.ssl);
  std::string problem;
  if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != "h2")
    problem = "ALPN h2 was not negotiated";
  else if (peer.empty())
    problem = "the peer certificate carries no SPIFFE ID";
  else if (!t.server && peer != t.expected_peer)
    problem = "the peer is " + peer + ", expected " + t.expected_peer;
  else if (t.server) {
    auto id = x509::SpiffeId::parse(peer);
    if (!id || id->trust_domain != engine_.config().trust_domain)
      problem =
          "client identity " + peer + " is not in trust domain " + engine_.config().trust_domain;
  }
  if (!problem.empty()) {
    engine_.counters().hbone_handshake_failures++;
    SLUICE_LOG_LIMITED(peer_log_, logger(), spdlog::level::warn, "tunnel {} {} {}: refused: {}",
                       t.id, t.server ? "from" : "to", formatEndpoint(t.remote), problem);
    closeTunnel(t, "peer_refused");
    return;
  }
  t.peer_identity = peer;
  int rv = t.server ? nghttp2_session_server_new2(&t.h2, callbacks_, &t, options_)
                    : nghttp2_session_client_new2(&t.h2, callbacks_, &t, options_);
  if (rv != 0) {
    closeTunnel(t, "h2_init_failed");
    return;
  }
  const auto& cfg = engine_.config();
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg.hbone_max_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg.hbone_stream_window},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  nghttp2_submit_settings(t.h2, NGHTTP2_FLAG_NONE, settings, t.server ? 2 : 3);
  nghttp2_session_set_local_window_size(t.h2, NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(cfg.hbone_connection_window));
  t.state = Tunnel::kReady;
  logger()->debug("tunnel {} {} {} ready: local {} peer {}", t.id, t.server ? "from" : "to",
                  formatEndpoint(t.remote), t.cred->identity, peer);
  auto waiting = std::move(t.waiting);
  t.waiting.clear();
  for (Stream* s : waiting) submitRequest(t, *s);
}

// Runs TLS and HTTP/2 as far as the bytes at hand allow, then writes.
void HboneWorker::progress(Tunnel& t) {
  if (t.close_on_flush && t.state != Tunnel::kReady) {
    flush(t);
    return;
  }
  if (t.state == Tunnel::kHandshaking) {
    ERR_clear_error();
    int rc = SSL_do_handshake(t.ssl);
    if (rc == 1) {
      handshakeDone(t);
    } else {
      int err = SSL_get_error(t.ssl, rc);
      if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        engine_.counters().hbone_handshake_failures++;
        SLUICE_LOG_LIMITED(handshake_log_, logger(), spdlog::level::warn,
                           "tunnel {} {} {}: TLS handshake failed: {}", t.id,
                           t.server ? "from" : "to", formatEndpoint(t.remote), sslError(t.ssl, rc));
        ERR_clear_error();  // sslError() drains the queue only when the line is written
        closeAfterFlush(t, "tls_handshake_failed");  // the alert, if any, goes out first
        return;
      }
    }
  }
  if (t.state == Tunnel::kReady) {
    for (;;) {
      ERR_clear_error();
      int n = SSL_read(t.ssl, plain_, sizeof(plain_));
      if (n > 0) {
        ssize_t rv = nghttp2_session_mem_recv(t.h2, plain_, static_cast<size_t>(n));
        if (rv < 0) {
          engine_.counters().hbone_bad_requests++;
          logger()->warn("tunnel {} {} {}: HTTP/2 error: {}", t.id, t.server ? "from" : "to",
                         formatEndpoint(t.remote), nghttp2_strerror(static_cast<int>(rv)));
          closeTunnel(t, "h2_protocol_error");
          return;
        }
        if (t.state != Tunnel::kReady) return;
        continue;
      }
      int err = SSL_get_error(t.ssl, n);
      if (err == SSL_ERROR_WANT_READ) break;
      if (err == SSL_ERROR_ZERO_RETURN) {
        t.peer_eof = true;
        break;
      }
      logger()->warn("tunnel {}: TLS error: {}", t.id, sslError(t.ssl, n));
      closeTunnel(t, "tls_error");
      return;
    }
    BIO* wbio = SSL_get_wbio(t.ssl);
    while (BIO_ctrl_pending(wbio) < kCipherHighWater && nghttp2_session_want_write(t.h2)) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(t.h2, &data);
      if (n < 0) {
        logger()->warn("tunnel {}: HTTP/2 send error: {}", t.id,
                       nghttp2_strerror(static_cast<int>(n)));
        closeTunnel(t, "h2_send_error");
        return;
      }
      if (n == 0) break;
      if (SSL_write(t.ssl, data, static_cast<int>(n)) <= 0) {
        closeTunnel(t, "tls_write_error");
        return;
      }
    }
    if (t.state != Tunnel::kReady) return;
    if (!nghttp2_session_want_read(t.h2) && !nghttp2_session_want_write(t.h2) &&
        !t.close_on_flush) {
      closeAfterFlush(t, "goaway");  // both sides are done with the session
      return;
    }
  }
  flush(t);
  if (t.state == Tunnel::kClosed) return;
  if (t.peer_eof && t.state != Tunnel::kClosed) {
    closeTunnel(t, t.streams.empty() ? "peer_closed" : "peer_closed_with_open_streams");
    return;
  }
  armRecv(t);
}

void HboneWorker::armRecv(Tunnel& t) {
  if (t.recv_inflight || t.state == Tunnel::kConnecting || t.state == Tunnel::kClosed) return;
  size_t want = t.state == Tunnel::kReady ? kCipherRecv : kHandshakeRecv;
  if (t.rbuf_size != want) {  // no receive in flight: the buffer is ours
    t.rbuf.reset(new uint8_t[want]);
    t.rbuf_size = want;
  }
  io_uring_sqe* s = ring_.sqe(&t.ops[kTRecv]);
  io_uring_prep_recv(s, t.fd.get(), t.rbuf.get(), t.rbuf_size, 0);
  t.recv_inflight = true;
  t.inflight++;
}

// Server side: TLS starts when the first bytes are in and the pod has a
// certificate; a pod enrolled a moment ago may still be waiting for its
// first one, and then so does the tunnel (bounded by the handshake deadline).
void HboneWorker::acceptTls(Tunnel& t) {
  if (!t.cred) t.cred = engine_.credentials()->credential(t.pod->identity);
  if (t.cred) {
    startTls(t);
    return;
  }
  if (t.early.size() > kMaxEarlyBytes) {
    closeTunnel(t, "handshake_too_large");
    return;
  }
  if (!t.awaiting_credential) {
    t.awaiting_credential = true;
    cert_tunnels_.push_back(&t);
    engine_.counters().certificate_waits++;
    worker_.wantFineTick();
  }
}

// Writes what TLS produced; one send in flight, its buffer untouched until done.
void HboneWorker::flush(Tunnel& t) {
  if (t.send_inflight || !t.ssl || t.state == Tunnel::kClosed) return;
  if (t.soff >= t.sbuf.size()) {
    t.sbuf.clear();
    t.soff = 0;
    BIO* wbio = SSL_get_wbio(t.ssl);
    size_t pending = BIO_ctrl_pending(wbio);
    if (pending == 0) {
      if (t.close_on_flush) closeTunnel(t, t.reason.empty() ? "closed" : t.reason);
      return;
    }
    t.sbuf.resize(std::min(pending, kCipherSendChunk));
    int n = BIO_read(wbio, t.sbuf.data(), static_cast<int>(t.sbuf.size()));
    t.sbuf.resize(n > 0 ? static_cast<size_t>(n) : 0);
    if (t.sbuf.empty()) return;
  }
  io_uring_sqe* s = ring_.sqe(&t.ops[kTSend]);
  io_uring_prep_send(s, t.fd.get(), t.sbuf.data() + t.soff, t.sbuf.size() - t.soff, MSG_NOSIGNAL);
  t.send_inflight = true;
  t.inflight++;
}

void HboneWorker::onTunnel(Tunnel& t, int kind, const io_uring_cqe& cqe) {
  t.inflight--;
  int res = cqe.res;
  switch (kind) {
    case kTTimeout:
      break;
    case kTConnect:
      if (t.state != Tunnel::kConnecting) break;
      if (res == -ECONNREFUSED) {
        // A Service connection tries another endpoint at once rather than
        // wait for this one.
        auto waiting = t.waiting;
        for (Stream* s : waiting)
          if (s->route) {
            s->tunnel = nullptr;
            std::erase(t.waiting, s);
            failStream(*s, "connect_error: 15008 refused");
          }
      }
      if (res == -ECONNREFUSED && !t.waiting.empty()) {
        // Nothing listens on 15008 yet: the destination was enrolled a moment
        // ago and its node is still creating its listeners. Redial shortly.
        auto now = Clock::now();
        auto backoff = std::clamp(t.redial_backoff * 2, std::chrono::milliseconds(10),
                                  std::chrono::milliseconds(200));
        if (now + backoff < t.created + engine_.config().hbone_refused_retry) {
          engine_.counters().hbone_connect_retries++;
          t.redial_backoff = backoff;
          t.redial_at = now + backoff;
          t.fd.reset();
          redials_.push_back(&t);
          worker_.wantFineTick();
          break;
        }
      }
      if (res < 0) {
        engine_.counters().connect_failures++;
        SLUICE_LOG_LIMITED(connect_log_, logger(), spdlog::level::warn,
                           "tunnel {} to {}: connect failed: {}", t.id, formatEndpoint(t.remote),
                           res == -ECANCELED ? "timed out" : std::strerror(-res));
        closeTunnel(t, res == -ECANCELED ? "connect_timeout" : "connect_error");
      } else {
        startTls(t);
      }
      break;
    case kTRecv:
      t.recv_inflight = false;
      if (t.state == Tunnel::kClosed) break;
      if (res > 0) {
        t.last_rx = Clock::now();
        t.ping_outstanding = false;
        if (!t.ssl) {  // server: the first bytes of the handshake
          t.early.append(reinterpret_cast<const char*>(t.rbuf.get()), static_cast<size_t>(res));
          acceptTls(t);
          if (!t.ssl) armRecv(t);  // still waiting for the certificate: keep reading (EOF, cap)
          break;
        }
        BIO_write(SSL_get_rbio(t.ssl), t.rbuf.get(), res);
      } else if (res == 0) {
        t.peer_eof = true;
      } else {
        closeTunnel(t, std::string("recv_error: ") + std::strerror(-res));
        break;
      }
      progress(t);
      break;
    case kTSend:
      t.send_inflight = false;
      if (t.state == Tunnel::kClosed) break;
      if (res <= 0) {
        closeTunnel(t, std::string("send_error: ") + std::strerror(-res));
        break;
      }
      t.soff += static_cast<size_t>(res);
      progress(t);
      break;
  }
  if (t.state == Tunnel::kClosed && t.inflight == 0) dead_tunnels_.push_back(&t);
  reap();
}

void HboneWorker::closeTunnel(Tunnel& t, const std::string& reason) {
  if (t.state == Tunnel::kClosed) return;
  if (t.reason.empty()) t.reason = reason;
  unpool(t);
  dropPending(t);
  std::erase(cert_tunnels_, &t);
  std::erase(redials_, &t);
  // Streams cannot outlive their tunnel: reset them (their apps see RST).
  // They stay attached while nghttp2 may still call back with them.
  std::vector<Stream*> open;
  for (auto& [id, s] : t.streams) open.push_back(s);
  for (Stream* s : open) failStream(*s, "tunnel_closed: " + t.reason);
  auto waiting = std::move(t.waiting);
  t.waiting.clear();
  for (Stream* s : waiting) {
    s->tunnel = nullptr;
    failStream(*s, "tunnel_failed: " + t.reason);
  }
  bool flushing = t.close_on_flush && (t.send_inflight || t.soff < t.sbuf.size() ||
                                       (t.ssl && BIO_ctrl_pending(SSL_get_wbio(t.ssl)) > 0));
  if (flushing) return;  // flush() comes back here once the last bytes are out
  t.state = Tunnel::kClosed;
  for (auto& [id, s] : t.streams) {  // nghttp2 is done with them now
    s->tunnel = nullptr;
    s->h2_open = false;
    dead_streams_.push_back(s);
  }
  t.streams.clear();
  engine_.counters().hbone_active--;
  logger()->debug("tunnel {} {} {} closed: {}", t.id, t.server ? "from" : "to",
                  formatEndpoint(t.remote), t.reason);
  if (t.inflight > 0) {
    io_uring_sqe* s = ring_.sqe(nullptr);
    io_uring_prep_cancel_fd(s, t.fd.get(), IORING_ASYNC_CANCEL_ALL);
  } else {
    dead_tunnels_.push_back(&t);
  }
}

// Closes once the bytes already produced (an alert, a GOAWAY) are written;
// bounded by the handshake timeout in tick().
void HboneWorker::closeAfterFlush(Tunnel& t, const std::string& reason) {
  if (t.reason.empty()) t.reason = reason;
  if (!t.close_on_flush) t.deadline = Clock::now() + engine_.config().hbone_handshake_timeout;
  t.close_on_flush = true;
  t.draining = true;
  unpool(t);
  flush(t);
  if (t.state != Tunnel::kClosed && !t.send_inflight) closeTunnel(t, reason);
}

void HboneWorker::gracefulClose(Tunnel& t, const std::string& reason) {
  if (t.state != Tunnel::kReady) {
    closeTunnel(t, reason);
    return;
  }
  nghttp2_session_terminate_session(t.h2, NGHTTP2_NO_ERROR);
  progress(t);
  closeAfterFlush(t, reason);
}

void HboneWorker::unpool(Tunnel& t) {
  if (t.pool_key.empty()) return;
  auto it = pool_.find(t.pool_key);
  if (it != pool_.end()) {
    std::erase(it->second, &t);
    if (it->second.empty()) pool_.erase(it);
  }
  t.pool_key.clear();
}

Tunnel* HboneWorker::pooledTunnel(const std::shared_ptr<PodState>& pod, const MeshWorkload& target,
                                  const sockaddr_in& dst,
                                  const std::shared_ptr<const WorkloadCredential>& cred) {
  std::string key = pod->spec.uid + '|' + target.identity + '|' + formatIp4(dst.sin_addr.s_addr);
  auto& tunnels = pool_[key];
  for (Tunnel* t : tunnels) {
    if (t->draining || t->state == Tunnel::kClosed) continue;
    if (t->cred != cred) {  // renewed certificate: new streams go to a new tunnel
      t->draining = true;
      continue;
    }
    if (t->load() < engine_.config().hbone_max_streams) return t;
  }
  std::erase_if(tunnels, [](Tunnel* t) { return t->draining; });

  Tunnel* t = newTunnel(false, pod, cred);
  t->expected_peer = target.identity;
  t->remote = makeSockaddr(dst.sin_addr.s_addr, SLUICE_HBONE_PORT);
  t->pool_key = key;
  tunnels.push_back(t);
  if (!dial(*t)) return nullptr;
  return t;
}

// Client side: a TCP connect from the source pod's netns to <dst>:15008,
// bounded by the connect timeout.
bool HboneWorker::dial(Tunnel& t) {
  auto sock = inpod::upstreamSocket(t.pod->netns.get(), SLUICE_MARK_MINE, 0);
  if (!sock) {
    SLUICE_LOG_LIMITED(connect_log_, logger(), spdlog::level::err,
                       "pod {}: cannot create a tunnel socket: {}", t.pod->spec.name_namespace,
                       sock.error().describe());
    closeTunnel(t, "socket_error");
    return false;
  }
  t.fd = std::move(*sock);
  t.connect_timeout = toTimespec(engine_.config().connect_timeout);
  io_uring_sqe* s = ring_.sqe(&t.ops[kTConnect]);
  io_uring_prep_connect(s, t.fd.get(), reinterpret_cast<sockaddr*>(&t.remote), sizeof(t.remote));
  s->flags |= IOSQE_IO_LINK;
  io_uring_sqe* to = ring_.sqe(&t.ops[kTTimeout]);
  io_uring_prep_link_timeout(to, &t.connect_timeout, 0);
  t.inflight += 2;
  return true;
}

// ------------------------------------------------------------ outbound

void HboneWorker::outbound(const std::shared_ptr<PodState>& pod, UniqueFd client,
                           const sockaddr_in& peer, const sockaddr_in& dst,
                           const MeshWorkload& target, std::unique_ptr<ServiceRoute> route) {
  auto cred = engine_.credentials()->credential(pod->identity);
  if (cred) {
    openStream(pod, std::move(client), peer, dst, target, std::move(route), cred);
    return;
  }
  // Enrolled a moment ago, or the agent just started: the pod's certificate
  // is on its way. The app's connection waits for it (bounded).
  engine_.counters().certificate_waits++;
  pod->connections++;  // a waiting connection counts against the pod's limit
  cert_waiters_.push_back(CertWaiter{pod, std::move(client), peer, dst, target, std::move(route),
                                     Clock::now() + engine_.config().certificate_wait});
  worker_.wantFineTick();
}

void HboneWorker::openStream(const std::shared_ptr<PodState>& pod, UniqueFd client,
                             const sockaddr_in& peer, const sockaddr_in& dst,
                             const MeshWorkload& target, std::unique_ptr<ServiceRoute> route,
                             const std::shared_ptr<const WorkloadCredential>& cred) {
  // The attempt's connect latency starts now, not before a certificate wait.
  if (route) route->attempt_start = Clock::now();
  Tunnel* t = pooledTunnel(pod, target, dst, cred);
  if (!t) {
    engine_.counters().connect_failures++;
    if (route && worker_.retryService(pod, client, route, "no tunnel")) return;
    if (route) worker_.lbClosed(*route);
    setLinger0(client.get());
    return;
  }
  Stream* s = newStream(t, pod, std::move(client));
  s->dst = dst;
  s->rec = engine_.openRecord("outbound", pod->spec.name_namespace, formatEndpoint(peer),
                              formatEndpoint(dst), "hbone");
  if (route) s->rec->service = route->service->name;
  s->route = std::move(route);
  s->rec->source_principal = pod->identity;
  s->rec->destination_principal = target.identity;
  s->rec->mutual_tls = true;
  if (t->state == Tunnel::kReady)
    submitRequest(*t, *s);
  else
    t->waiting.push_back(s);
  reap();
}

void HboneWorker::submitRequest(Tunnel& t, Stream& s) {
  std::string authority = formatEndpoint(s.dst);
  std::string forwarded = "for=\"" + s.rec->source + "\"";
  nghttp2_nv nva[] = {header(":method", "CONNECT"), header(":authority", authority),
                      header("forwarded", forwarded)};
  nghttp2_data_provider prd{};
  prd.source.ptr = &s;
  prd.read_callback = cbReadData;
  int32_t id = nghttp2_submit_request(t.h2, nullptr, nva, 3, &prd, &s);
  if (id < 0) {
    logger()->warn("tunnel {}: cannot open a stream: {}", t.id, nghttp2_strerror(id));
    t.draining = true;
    s.tunnel = nullptr;
    failStream(s, "stream_refused");
    return;
  }
  s.id = id;
  s.h2_open = true;
  t.streams[id] = &s;
  t.had_stream = true;
  // A Service connection reads nothing from the app before the 200, so a
  // refused attempt can move to another endpoint with nothing lost. (Bytes
  // read earlier would wait for the 200 anyway: readData defers until then.)
  if (!s.route) pumpUp(s);
  progress(t);
}

// ------------------------------------------------------------ inbound

void HboneWorker::inbound(const std::shared_ptr<PodState>& pod, UniqueFd fd,
                          const sockaddr_in& peer) {
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  makeRoomForHandshake(*pod);
  // TLS (and its memory) waits for the first bytes: an idle connection costs
  // a descriptor and a few hundred bytes until it says something.
  Tunnel* t = newTunnel(true, pod, nullptr);
  t->fd = std::move(fd);
  t->remote = peer;
  t->state = Tunnel::kAccepted;
  t->pending = true;
  t->pending_at = pending_.insert(pending_.end(), t);
  armRecv(*t);
  reap();
}

// Inbound tunnels that have not sent a CONNECT yet are bounded per pod and
// per node (each worker enforces its share): beyond a bound the oldest one
// goes, so a flood of idle or stalled handshakes cannot exhaust descriptors
// or memory, and a legitimate handshake, which completes in milliseconds, is
// never the oldest for long.
void HboneWorker::makeRoomForHandshake(const PodState& pod) {
  const auto& cfg = engine_.config();
  unsigned workers = std::max(1u, engine_.workerCount());
  size_t node_limit = std::max(1u, cfg.hbone_max_pending_handshakes / workers);
  size_t pod_limit = std::max(1u, cfg.hbone_max_pending_handshakes_per_pod / workers);
  size_t of_pod = 0;
  Tunnel* oldest_of_pod = nullptr;
  for (Tunnel* t : pending_) {
    if (t->pod.get() != &pod) continue;
    if (!oldest_of_pod) oldest_of_pod = t;
    ++of_pod;
  }
  if (of_pod >= pod_limit)
    evictPending(*oldest_of_pod, "the pod's bound on pending handshakes is reached");
  else if (pending_.size() >= node_limit)
    evictPending(*pending_.front(), "the node's bound on pending handshakes is reached");
}

bool HboneWorker::evictOldestPending(const char* why) {
  for (Tunnel* t : pending_) {
    if (t->close_on_flush) continue;  // already closing
    evictPending(*t, why);
    reap();
    return true;
  }
  return false;
}

void HboneWorker::evictPending(Tunnel& t, const char* why) {
  engine_.counters().hbone_pending_evicted++;
  auto age = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t.created);
  SLUICE_LOG_LIMITED(pending_log_, logger(), spdlog::level::warn,
                     "pod {}: closed the pending HBONE handshake from {} ({} ms old): {}",
                     t.pod->spec.name_namespace, formatEndpoint(t.remote), age.count(), why);
  setLinger0(t.fd.get());
  closeTunnel(t, "evicted");
}

void HboneWorker::dropPending(Tunnel& t) {
  if (!t.pending) return;
  pending_.erase(t.pending_at);
  t.pending = false;
}

int HboneWorker::onBeginHeaders(Tunnel& t, const nghttp2_frame* f) {
  if (!t.server || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  Stream* s = newStream(&t, t.pod, UniqueFd());
  s->id = f->hd.stream_id;
  s->h2_open = true;
  t.streams[s->id] = s;
  nghttp2_session_set_stream_user_data(t.h2, s->id, s);
  return 0;
}

int HboneWorker::onHeader(Tunnel& t, const nghttp2_frame* f, std::string_view name,
                          std::string_view value) {
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(t.h2, f->hd.stream_id));
  if (!s || f->hd.type != NGHTTP2_HEADERS) return 0;
  if (t.server) {
    if (name == ":method")
      s->method = value;
    else if (name == ":authority")
      s->authority = value;
    else if (name == "forwarded")
      s->forwarded = value;
  } else if (name == ":status") {
    s->method = value;  // client side: the response status
  }
  return 0;
}

int HboneWorker::onFrameRecv(Tunnel& t, const nghttp2_frame* f) {
  if (f->hd.type == NGHTTP2_GOAWAY) {
    t.draining = true;  // finish what runs, start nothing new here
    unpool(t);
    return 0;
  }
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(t.h2, f->hd.stream_id));
  if (!s) return 0;
  if (f->hd.type == NGHTTP2_HEADERS) {
    if (t.server && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
      authorizeConnect(t, *s);
      return 0;
    }
    if (!t.server && f->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      if (s->method == "200") {
        s->established = true;
        if (s->route) {
          worker_.lbResult(*s->route, true);
          pumpUp(*s);
        }
        nghttp2_session_resume_data(t.h2, s->id);
      } else {
        logger()->warn("tunnel {}: {} refused CONNECT {} with status {}", t.id, t.peer_identity,
                       s->rec->destination, s->method);
        nghttp2_submit_rst_stream(t.h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
        failStream(*s, "refused_" + s->method);
        return 0;
      }
    }
  }
  if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
      (f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) && !s->closing) {
    s->down_eof = true;
    pumpDown(*s);
  }
  return 0;
}

// A CONNECT arrived on one of this pod's tunnels: check and connect to the app.
void HboneWorker::authorizeConnect(Tunnel& t, Stream& s) {
  t.had_stream = true;
  dropPending(t);
  auto& stats = engine_.counters();
  PodState& pod = *t.pod;
  // The app's own port comes from Forwarded; the IP is the one TCP vouches
  // for (the tunnel leaves from the source pod's address).
  sockaddr_in source = t.remote;
  if (auto f = forwardedFor(s.forwarded); f && f->sin_addr.s_addr == t.remote.sin_addr.s_addr)
    source = *f;
  s.rec = engine_.openRecord("inbound", pod.spec.name_namespace, formatEndpoint(source),
                             s.authority, "hbone");
  s.rec->source_principal = t.peer_identity;
  s.rec->destination_principal = pod.identity;
  s.rec->mutual_tls = true;
  if (s.method != "CONNECT") {
    stats.hbone_bad_requests++;
    SLUICE_LOG_LIMITED(bad_request_log_, logger(), spdlog::level::warn,
                       "tunnel {} from {} ({}): {} is not CONNECT; closing the tunnel", t.id,
                       formatEndpoint(t.remote), t.peer_identity, s.method);
    closeStream(s, true, "bad_request");
    nghttp2_session_terminate_session(t.h2, NGHTTP2_PROTOCOL_ERROR);
    t.reason = "bad_request";
    t.draining = true;
    return;
  }
  auto target = parseEndpoint(s.authority);
  uint16_t port = target ? ntohs(target->sin_port) : 0;
  if (!target || target->sin_addr.s_addr != pod.spec.ip4 || port == SLUICE_HBONE_PORT ||
      port == SLUICE_INBOUND_PORT || port == SLUICE_OUTBOUND_PORT) {
    stats.hbone_refused++;
    SLUICE_LOG_LIMITED(refused_log_, logger(), spdlog::level::warn,
                       "pod {}: refused CONNECT {} from {} ({}): not a port of this pod",
                       pod.spec.name_namespace, s.authority, t.peer_identity,
                       formatEndpoint(t.remote));
    respond(t, s, 401, false);
    closeStream(s, false, "refused_not_this_pod");
    return;
  }
  if (pod.connections.load() >= engine_.config().max_connections_per_pod) {
    stats.limit_rejected++;
    SLUICE_LOG_LIMITED(limit_log_, logger(), spdlog::level::warn,
                       "pod {}: connection limit {} reached; refusing CONNECT from {}",
                       pod.spec.name_namespace, engine_.config().max_connections_per_pod,
                       t.peer_identity);
    respond(t, s, 503, false);
    closeStream(s, false, "connection_limit");
    return;
  }
  // The app sees the client's address: the tunnel comes from the source pod's
  // IP (its socket lives in the source pod's netns), which TCP vouches for.
  auto sock =
      inpod::upstreamSocket(pod.netns.get(), SLUICE_MARK_INBOUND_APP, t.remote.sin_addr.s_addr);
  if (!sock) {
    SLUICE_LOG_LIMITED(connect_log_, logger(), spdlog::level::err,
                       "pod {}: cannot create an upstream socket: {}", pod.spec.name_namespace,
                       sock.error().describe());
    respond(t, s, 503, false);
    closeStream(s, false, "upstream_socket_error");
    return;
  }
  s.app = std::move(*sock);
  s.dst = *target;
  s.connect_timeout = toTimespec(engine_.config().connect_timeout);
  io_uring_sqe* sq = ring_.sqe(&s.ops[kSConnect]);
  io_uring_prep_connect(sq, s.app.get(), reinterpret_cast<sockaddr*>(&s.dst), sizeof(s.dst));
  sq->flags |= IOSQE_IO_LINK;
  io_uring_sqe* to = ring_.sqe(&s.ops[kSTimeout]);
  io_uring_prep_link_timeout(to, &s.connect_timeout, 0);
  s.inflight += 2;
}

void HboneWorker::respond(Tunnel& t, Stream& s, int status, bool with_data) {
  std::string code = std::to_string(status);
  nghttp2_nv nva[] = {header(":status", code)};
  nghttp2_data_provider prd{};
  prd.source.ptr = &s;
  prd.read_callback = cbReadData;
  s.rst_after_response = !with_data;
  nghttp2_submit_response(t.h2, s.id, nva, 1, with_data ? &prd : nullptr);
}

// ------------------------------------------------------------ streams

Stream* HboneWorker::newStream(Tunnel* t, const std::shared_ptr<PodState>& pod, UniqueFd app) {
  auto s = std::make_unique<Stream>();
  s->hw = this;
  s->tunnel = t;
  s->pod = pod;
  s->app = std::move(app);
  s->app_ready = s->app.get() >= 0;
  for (int k = 0; k < kSOpCount; ++k) {
    s->ops[k].s = s.get();
    s->ops[k].kind = k;
  }
  pod->connections++;
  engine_.counters().active++;
  if (t && t->server) engine_.counters().accepted++;  // client side: counted at accept
  Stream* raw = s.get();
  streams_.emplace(raw, std::move(s));
  return raw;
}

ssize_t HboneWorker::readData(Stream& s, uint8_t* buf, size_t length, uint32_t* flags) {
  if (s.closing) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (!s.established) return NGHTTP2_ERR_DEFERRED;
  if (s.up_len > s.up_off) {
    size_t n = std::min(length, s.up_len - s.up_off);
    std::memcpy(buf, s.up.get() + s.up_off, n);
    s.up_off += n;
    if (s.up_off >= s.up_len) {
      s.up_len = s.up_off = 0;
      pumpUp(s);
    }
    return static_cast<ssize_t>(n);
  }
  if (s.up_eof) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;  // half-close: END_STREAM
    s.up_done = true;
    return 0;
  }
  pumpUp(s);
  return NGHTTP2_ERR_DEFERRED;
}

// app -> tunnel: read when the buffer is empty (the tunnel's flow control
// and our one buffer are the backpressure).
void HboneWorker::pumpUp(Stream& s) {
  if (s.closing || !s.app_ready || s.up_recv_inflight || s.up_eof || s.up_len > s.up_off) return;
  if (!s.up) s.up.reset(new char[engine_.config().buffer_bytes]);
  io_uring_sqe* sq = ring_.sqe(&s.ops[kSRecv]);
  io_uring_prep_recv(sq, s.app.get(), s.up.get(), engine_.config().buffer_bytes, 0);
  s.up_recv_inflight = true;
  s.inflight++;
}

// tunnel -> app: one send in flight; its buffer is not touched until it completes.
void HboneWorker::pumpDown(Stream& s) {
  if (s.closing || !s.app_ready || s.down_send_inflight || s.down_shut_sent) return;
  if (s.sending_off >= s.sending.size()) {
    s.sending.clear();
    s.sending_off = 0;
    std::swap(s.sending, s.pending);
  }
  if (!s.sending.empty()) {
    io_uring_sqe* sq = ring_.sqe(&s.ops[kSSend]);
    io_uring_prep_send(sq, s.app.get(), s.sending.data() + s.sending_off,
                       s.sending.size() - s.sending_off, MSG_NOSIGNAL);
    s.down_send_inflight = true;
    s.inflight++;
  } else if (s.down_eof) {
    io_uring_sqe* sq = ring_.sqe(&s.ops[kSShut]);
    io_uring_prep_shutdown(sq, s.app.get(), SHUT_WR);
    s.down_shut_sent = true;
    s.inflight++;
  }
}

int HboneWorker::onDataChunk(Tunnel& t, int32_t stream_id, const uint8_t* data, size_t len) {
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(t.h2, stream_id));
  if (!s || s->closing) {
    // Nobody will take it: give the window back so the tunnel does not stall.
    nghttp2_session_consume(t.h2, stream_id, len);
    return 0;
  }
  s->pending.append(reinterpret_cast<const char*>(data), len);
  if (s->rec)  // client -> destination is "sent", whichever side we are
    (t.server ? s->rec->sent : s->rec->received).fetch_add(len, std::memory_order_relaxed);
  pumpDown(*s);
  return 0;
}

int HboneWorker::onStreamClose(Tunnel& t, int32_t stream_id, uint32_t error_code) {
  auto it = t.streams.find(stream_id);
  if (it == t.streams.end()) return 0;
  Stream* s = it->second;
  t.streams.erase(it);
  s->h2_open = false;
  s->tunnel = nullptr;
  if (t.streams.empty()) t.idle_since = Clock::now();
  if (s->closing) {
    dead_streams_.push_back(s);
  } else if (error_code != NGHTTP2_NO_ERROR) {
    failStream(*s, std::string("stream_reset: ") + nghttp2_http2_strerror(error_code));
  } else if (!s->down_eof || !s->up_done) {
    failStream(*s, "stream_closed_early");
  }
  // else: both directions ended; the stream finishes when the app has all bytes.
  else if (s->down_shut_done) {
    closeStream(*s, false, "eof");
  }
  return 0;
}

void HboneWorker::onStream(Stream& s, int kind, const io_uring_cqe& cqe) {
  s.inflight--;
  int res = cqe.res;
  Tunnel* t = s.tunnel;
  switch (kind) {
    case kSTimeout:
      break;
    case kSConnect:
      if (s.closing) break;
      if (!t) {
        closeStream(s, true, "tunnel_closed");
        break;
      }
      if (res < 0) {
        engine_.counters().connect_failures++;
        std::string why = res == -ECANCELED ? "connect_timeout"
                                            : std::string("connect_error: ") + std::strerror(-res);
        logger()->info("pod {}: app {} not reachable: {}", s.pod->spec.name_namespace,
                       formatEndpoint(s.dst), why);
        respond(*t, s, 503, false);
        closeStream(s, false, why);
        progress(*t);
      } else {
        s.app_ready = true;
        s.established = true;
        respond(*t, s, 200, true);
        pumpUp(s);
        pumpDown(s);
        progress(*t);
      }
      break;
    case kSRecv:
      s.up_recv_inflight = false;
      if (s.closing) break;
      if (res > 0) {
        s.up_len = static_cast<size_t>(res);
        s.up_off = 0;
        (t && t->server ? s.rec->received : s.rec->sent).fetch_add(res, std::memory_order_relaxed);
      } else if (res == 0) {
        s.up_eof = true;
        s.up.reset();
      } else {
        if (t) nghttp2_submit_rst_stream(t->h2, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_CONNECT_ERROR);
        closeStream(
            s, true,
            res == -ECONNRESET ? "reset" : std::string("recv_error: ") + std::strerror(-res));
        if (t) progress(*t);
        break;
      }
      if (t && s.h2_open) {
        nghttp2_session_resume_data(t->h2, s.id);
        progress(*t);
      }
      break;
    case kSSend:
      s.down_send_inflight = false;
      if (s.closing) break;
      if (res <= 0) {
        if (t) nghttp2_submit_rst_stream(t->h2, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_CONNECT_ERROR);
        closeStream(s, true, "reset");
        if (t) progress(*t);
        break;
      }
      s.sending_off += static_cast<size_t>(res);
      if (t && s.h2_open) nghttp2_session_consume(t->h2, s.id, static_cast<size_t>(res));
      pumpDown(s);
      if (t) progress(*t);
      break;
    case kSShut:
      s.down_shut_done = true;
      if (!s.closing && !s.h2_open && s.up_done) closeStream(s, false, "eof");
      break;
  }
  if (s.closing && s.inflight == 0) dead_streams_.push_back(&s);
  reap();
}

// An outbound stream failed. Before its 200 a Service connection tries
// another endpoint (the app's socket moves to the new attempt); anything else
// is reset.
void HboneWorker::failStream(Stream& s, const std::string& reason) {
  if (s.closing) return;
  if (s.route && !s.established && s.rec && s.rec->sent == 0 &&
      worker_.retryService(s.pod, s.app, s.route, reason)) {
    closeStream(s, true, reason + " (retried)");
    return;
  }
  closeStream(s, true, reason);
}

void HboneWorker::closeStream(Stream& s, bool reset, const std::string& reason) {
  if (s.closing) return;
  s.closing = true;
  s.reason = reason;
  if (s.tunnel && s.h2_open && s.tunnel->h2 && reset)
    nghttp2_submit_rst_stream(s.tunnel->h2, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_CONNECT_ERROR);
  if (s.app.get() >= 0) {
    if (reset) setLinger0(s.app.get());
    if (s.inflight > 0) {
      io_uring_sqe* sq = ring_.sqe(nullptr);
      io_uring_prep_cancel_fd(sq, s.app.get(), IORING_ASYNC_CANCEL_ALL);
    }
  }
  if (s.tunnel && !s.h2_open) std::erase(s.tunnel->waiting, &s);
  dead_streams_.push_back(&s);
}

// Frees what is finished: streams nghttp2 no longer references and whose
// ring operations have all completed; tunnels likewise.
void HboneWorker::reap() {
  if (reaping_) return;
  reaping_ = true;
  while (!dead_streams_.empty() || !dead_tunnels_.empty()) {
    auto streams = std::move(dead_streams_);
    dead_streams_.clear();
    for (Stream* p : streams) {
      auto it = streams_.find(p);
      if (it == streams_.end()) continue;
      Stream& s = *it->second;
      if (!s.closing || s.inflight > 0 || (s.h2_open && s.tunnel)) continue;
      if (s.tunnel) std::erase(s.tunnel->waiting, &s);
      if (s.route) worker_.lbClosed(*s.route);
      engine_.counters().active--;
      engine_.counters().closed++;
      s.pod->connections--;
      if (s.rec) engine_.closeRecord(s.rec, s.reason);
      streams_.erase(it);
    }
    auto tunnels = std::move(dead_tunnels_);
    dead_tunnels_.clear();
    for (Tunnel* p : tunnels) {
      auto it = tunnels_.find(p);
      if (it == tunnels_.end()) continue;
      Tunnel& t = *it->second;
      if (t.state != Tunnel::kClosed || t.inflight > 0) continue;
      if (t.h2) nghttp2_session_del(t.h2);
      if (t.ssl) SSL_free(t.ssl);
      t.h2 = nullptr;
      t.ssl = nullptr;
      tunnels_.erase(it);
    }
  }
  reaping_ = false;
}

// ------------------------------------------------------------ housekeeping

void HboneWorker::tick() {
  auto now = Clock::now();
  const auto& cfg = engine_.config();
  std::vector<Tunnel*> all;
  all.reserve(tunnels_.size());
  for (auto& [p, t] : tunnels_) all.push_back(p);
  for (Tunnel* t : all) {
    if (t->state == Tunnel::kClosed) continue;
    if (t->close_on_flush) {
      if (now > t->deadline) {
        t->close_on_flush = false;  // the peer does not read: stop waiting
        closeTunnel(*t, t->reason);
      }
      continue;
    }
    bool unestablished = t->state != Tunnel::kReady || (t->server && !t->had_stream);
    if (unestablished && now > t->deadline) {
      engine_.counters().hbone_timeouts++;
      SLUICE_LOG_LIMITED(timeout_log_, logger(), spdlog::level::warn,
                         "tunnel {} {} {}: {} not done within {} ms; closing", t->id,
                         t->server ? "from" : "to", formatEndpoint(t->remote),
                         t->state == Tunnel::kReady ? "first CONNECT" : "handshake",
                         cfg.hbone_handshake_timeout.count());
      closeTunnel(*t, "handshake_timeout");
      continue;
    }
    if (t->state != Tunnel::kReady) continue;
    if (!t->server && t->cred != engine_.credentials()->credential(t->pod->identity)) {
      t->draining = true;  // the certificate was renewed
      unpool(*t);
    }
    auto idle_limit = t->server ? 2 * cfg.hbone_idle_timeout : cfg.hbone_idle_timeout;
    if (t->load() == 0 && (t->draining || now - t->idle_since > idle_limit)) {
      gracefulClose(*t, t->draining ? "drained" : "idle");
      continue;
    }
    auto silent = now - t->last_rx;
    if (silent > 2 * cfg.hbone_keepalive) {
      logger()->warn("tunnel {} {} {}: no answer to keepalive; closing", t->id,
                     t->server ? "from" : "to", formatEndpoint(t->remote));
      closeTunnel(*t, "keepalive_timeout");
    } else if (silent > cfg.hbone_keepalive && !t->ping_outstanding) {
      nghttp2_submit_ping(t->h2, NGHTTP2_FLAG_NONE, nullptr);
      t->ping_outstanding = true;
      progress(*t);
    }
  }
  reap();
}

void HboneWorker::removePod(const std::string& uid) {
  std::erase_if(cert_waiters_, [&](CertWaiter& w) {
    if (w.pod->spec.uid != uid) return false;
    w.pod->connections--;
    if (w.route) worker_.lbClosed(*w.route);
    setLinger0(w.client.get());
    return true;
  });
  std::vector<Tunnel*> hit;
  for (auto& [p, t] : tunnels_)
    if (t->pod->spec.uid == uid) hit.push_back(p);
  for (Tunnel* t : hit) closeTunnel(*t, "pod_removed");
  reap();
}

void HboneWorker::shutdown() {
  for (auto& w : cert_waiters_) {
    w.pod->connections--;
    setLinger0(w.client.get());
  }
  cert_waiters_.clear();
  std::vector<Tunnel*> all;
  for (auto& [p, t] : tunnels_) all.push_back(p);
  for (Tunnel* t : all) closeTunnel(*t, "proxy_shutdown");
  std::vector<Stream*> rest;
  for (auto& [p, s] : streams_) rest.push_back(p);
  for (Stream* s : rest) closeStream(*s, true, "proxy_shutdown");
  reap();
}

}  // namespace sluice::ztunnel::proxy

namespace sluice::ztunnel::proxy {

bool HboneWorker::fineTick(Clock::time_point now) {
  if (!cert_waiters_.empty()) {
    auto waiters = std::move(cert_waiters_);
    cert_waiters_.clear();
    for (auto& w : waiters) {
      auto cred = w.pod->removed ? nullptr : engine_.credentials()->credential(w.pod->identity);
      if (cred || w.pod->removed || now >= w.deadline) w.pod->connections--;  // leaves the queue
      if (cred) {
        openStream(w.pod, std::move(w.client), w.peer, w.dst, w.target, std::move(w.route), cred);
        continue;
      }
      if (!w.pod->removed && now < w.deadline) {
        cert_waiters_.push_back(std::move(w));
        continue;
      }
      if (!w.pod->removed) {
        engine_.counters().no_certificate++;
        SLUICE_LOG_LIMITED(cert_log_, logger(), spdlog::level::warn,
                           "pod {}: no certificate for {} after {} ms; resetting a connection to "
                           "{} (is the control plane's CA reachable? see 'sluicectl certs')",
                           w.pod->spec.name_namespace, w.pod->identity,
                           engine_.config().certificate_wait.count(), formatEndpoint(w.dst));
      }
      if (w.route) worker_.lbClosed(*w.route);
      setLinger0(w.client.get());
    }
  }
  if (!cert_tunnels_.empty()) {
    auto tunnels = std::move(cert_tunnels_);
    cert_tunnels_.clear();
    for (Tunnel* t : tunnels) {
      if (t->state == Tunnel::kClosed || !t->awaiting_credential) continue;
      auto cred = engine_.credentials()->credential(t->pod->identity);
      if (!cred) {
        cert_tunnels_.push_back(t);
        continue;
      }
      t->awaiting_credential = false;
      t->cred = std::move(cred);
      startTls(*t);
    }
  }
  if (!redials_.empty()) {
    auto due = std::move(redials_);
    redials_.clear();
    for (Tunnel* t : due) {
      if (t->state != Tunnel::kConnecting) continue;
      if (now < t->redial_at) {
        redials_.push_back(t);
      } else if (t->waiting.empty()) {
        closeTunnel(*t, "connect_error");
      } else {
        dial(*t);
      }
    }
  }
  reap();
  return !cert_waiters_.empty() || !cert_tunnels_.empty() || !redials_.empty();
}

}  // namespace sluice::ztunnel::proxy
