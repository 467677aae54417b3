#include "ztunnel/hbone/tunnel.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"
#include "sluice/common/x509.h"

namespace sluice::ztunnel::hbone {

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

nghttp2_nv header(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE};
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

}  // namespace

// nghttp2 callbacks: to the tunnel (user data) and its streams (stream user data).
struct H2Glue {
  static Tunnel& of(void* ud) { return *static_cast<Tunnel*>(ud); }
  static int beginHeaders(nghttp2_session*, const nghttp2_frame* f, void* ud) {
    Tunnel& t = of(ud);
    if (!t.server_ || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
      return 0;
    StreamEnd* s = t.owner_.tunnelRequest(t, f->hd.stream_id);
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // resets the stream
    t.streams_[f->hd.stream_id] = s;
    t.had_stream_ = true;
    nghttp2_session_set_stream_user_data(t.h2_.get(), f->hd.stream_id, s);
    return 0;
  }
  static int header(nghttp2_session*, const nghttp2_frame* f, const uint8_t* name, size_t namelen,
                    const uint8_t* value, size_t valuelen, uint8_t, void* ud) {
    StreamEnd* s = of(ud).streamOf(f->hd.stream_id);
    if (s && f->hd.type == NGHTTP2_HEADERS)
      s->h2Header(std::string_view(reinterpret_cast<const char*>(name), namelen),
                  std::string_view(reinterpret_cast<const char*>(value), valuelen));
    return 0;
  }
  static int frameRecv(nghttp2_session*, const nghttp2_frame* f, void* ud) {
    Tunnel& t = of(ud);
    if (f->hd.type == NGHTTP2_GOAWAY) {
      t.draining_ = true;  // finish what runs, start nothing new here
      t.owner_.tunnelDraining(t);
      return 0;
    }
    StreamEnd* s = t.streamOf(f->hd.stream_id);
    if (!s) return 0;
    if (f->hd.type == NGHTTP2_HEADERS) {
      if (t.server_ && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        s->h2Headers();
        return 0;
      }
      if (!t.server_ && f->headers.cat == NGHTTP2_HCAT_RESPONSE) s->h2Headers();
    }
    if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        (f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS))
      s->h2End();
    return 0;
  }
  // A refusal is a complete response; the client's half of the stream is
  // then closed with RST_STREAM(NO_ERROR) (RFC 9113 8.1) — after the
  // HEADERS went out, or nghttp2 would drop them.
  static int frameSend(nghttp2_session* session, const nghttp2_frame* f, void* ud) {
    if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
    auto& refused = of(ud).refused_;
    auto it = std::find(refused.begin(), refused.end(), f->hd.stream_id);
    if (it == refused.end()) return 0;
    refused.erase(it);
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
  }
  static int dataChunk(nghttp2_session* session, uint8_t, int32_t id, const uint8_t* data,
                       size_t len, void* ud) {
    StreamEnd* s = of(ud).streamOf(id);
    // Nobody takes it: give the window back so the tunnel does not stall.
    if (!s || !s->h2Data(data, len)) nghttp2_session_consume(session, id, len);
    return 0;
  }
  static int streamClose(nghttp2_session*, int32_t id, uint32_t error_code, void* ud) {
    Tunnel& t = of(ud);
    std::erase(t.refused_, id);
    auto it = t.streams_.find(id);
    if (it == t.streams_.end()) return 0;
    StreamEnd* s = it->second;
    t.streams_.erase(it);
    if (t.streams_.empty()) t.idle_since_ = Clock::now();
    s->h2Closed(error_code);
    return 0;
  }
  static ssize_t readData(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void*) {
    return static_cast<StreamEnd*>(source->ptr)->h2Read(buf, length, flags);
  }

  struct CallbacksFree {
    void operator()(nghttp2_session_callbacks* c) const { nghttp2_session_callbacks_del(c); }
  };
  static const nghttp2_session_callbacks* callbacks() {
    static const std::unique_ptr<nghttp2_session_callbacks, CallbacksFree> cbs = [] {
      nghttp2_session_callbacks* c = nullptr;
      nghttp2_session_callbacks_new(&c);
      nghttp2_session_callbacks_set_on_begin_headers_callback(c, beginHeaders);
      nghttp2_session_callbacks_set_on_header_callback(c, header);
      nghttp2_session_callbacks_set_on_frame_recv_callback(c, frameRecv);
      nghttp2_session_callbacks_set_on_frame_send_callback(c, frameSend);
      nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, dataChunk);
      nghttp2_session_callbacks_set_on_stream_close_callback(c, streamClose);
      return std::unique_ptr<nghttp2_session_callbacks, CallbacksFree>(c);
    }();
    return cbs.get();
  }
  static nghttp2_data_provider provider(StreamEnd& s) {
    nghttp2_data_provider prd{};
    prd.source.ptr = &s;
    prd.read_callback = readData;
    return prd;
  }
};

Tunnel::Tunnel(TunnelEnv& env, TunnelOwner& owner, bool server,
               std::shared_ptr<proxy::PodState> pod, const sockaddr_in& remote)
    : env_(env),
      owner_(owner),
      id_(env.ctx.records.nextId()),
      server_(server),
      pod_(std::move(pod)),
      remote_(remote),
      state_(server ? State::kAccepted : State::kConnecting) {
  created_ = last_rx_ = idle_since_ = Clock::now();
  deadline_ = created_ + env_.ctx.config.hbone_handshake_timeout;
  env_.ctx.counters().add(Counter::kTunnelsOpened);
  env_.ctx.counters().add(Counter::kTunnelsActive);
}

Tunnel::~Tunnel() {
  if (state_ != State::kClosed) env_.ctx.counters().sub(Counter::kTunnelsActive);
}

StreamEnd* Tunnel::streamOf(int32_t id) const {
  return h2_ ? static_cast<StreamEnd*>(nghttp2_session_get_stream_user_data(h2_.get(), id))
             : nullptr;
}

// ------------------------------------------------------------ start

void Tunnel::dial(UniqueFd fd, std::shared_ptr<const WorkloadCredential> cred,
                  std::string expected_peer) {
  cred_ = std::move(cred);
  expected_peer_ = std::move(expected_peer);
  redial(std::move(fd));
}

void Tunnel::redial(UniqueFd fd) {
  fd_ = std::move(fd);
  connect_.start(env_.ctx.ring, fd_.get(), remote_, env_.ctx.config.connect_timeout);
}

void Tunnel::onConnect(int res) {
  if (state_ != State::kConnecting) {
    finishIfIdle();
    return;
  }
  if (res == 0)
    startTls(cred_);
  else
    owner_.tunnelDialFailed(*this, res);
  finishIfIdle();
}

void Tunnel::accept(UniqueFd fd) {
  fd_ = std::move(fd);
  // TLS (and its memory) waits for the first bytes: an idle connection costs
  // a descriptor and a few hundred bytes until it says something.
  armRecv();
}

// Server side: TLS starts when the first bytes are in and the pod has a
// certificate; a pod enrolled a moment ago may still be waiting for its
// first one, and then so does the tunnel (bounded by the handshake deadline).
void Tunnel::firstBytes() {
  if (!cred_) cred_ = owner_.tunnelCredential(*this);
  if (cred_) {
    startTls(cred_);
    return;
  }
  if (early_.size() > kMaxEarlyBytes) close("handshake_too_large");
}

void Tunnel::startTls(std::shared_ptr<const WorkloadCredential> cred) {
  if (closing_ || ssl_) return;
  cred_ = std::move(cred);
  auto ctx = env_.tls.get(cred_, server_);
  if (!ctx) {
    logger()->error("tunnel {}: TLS context for {}: {}", id_, cred_->identity,
                    ctx.error().describe());
    close("tls_context_error");
    return;
  }
  ssl_.reset(SSL_new(*ctx));
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (!ssl_ || !rbio || !wbio) {
    BIO_free(rbio);
    BIO_free(wbio);
    ssl_.reset();
    close("out_of_memory");
    return;
  }
  BIO_set_mem_eof_return(rbio, -1);  // empty = "want read", not EOF
  SSL_set_bio(ssl_.get(), rbio, wbio);
  if (!early_.empty()) {
    BIO_write(rbio, early_.data(), static_cast<int>(early_.size()));
    std::string().swap(early_);
  }
  if (server_)
    SSL_set_accept_state(ssl_.get());
  else
    SSL_set_connect_state(ssl_.get());  // no SNI: identities are checked by SPIFFE ID
  state_ = State::kHandshaking;
  progress();
}

void Tunnel::handshakeDone() {
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  std::string peer = tls::peerIdentity(ssl_.get());
  const auto& cfg = env_.ctx.config;
  std::string problem;
  if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != "h2") {
    problem = "ALPN h2 was not negotiated";
  } else if (peer.empty()) {
    problem = "the peer certificate carries no SPIFFE ID";
  } else if (!server_ && peer != expected_peer_) {
    problem = "the peer is " + peer + ", expected " + expected_peer_;
  } else if (server_) {
    auto id = x509::SpiffeId::parse(peer);
    if (!id || id->trust_domain != cfg.trust_domain)
      problem = "client identity " + peer + " is not in trust domain " + cfg.trust_domain;
  }
  if (!problem.empty()) {
    env_.ctx.counters().add(Counter::kHandshakeFailures);
    SLUICE_LOG_LIMITED(env_.peer_log, logger(), spdlog::level::warn, "tunnel {} {} {}: refused: {}",
                       id_, side(), formatEndpoint(remote_), problem);
    close("peer_refused");
    return;
  }
  peer_identity_ = peer;
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  // Window updates follow what the app has actually taken (backpressure).
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, cfg.hbone_max_streams);
  nghttp2_session* s = nullptr;
  int rv = server_ ? nghttp2_session_server_new2(&s, H2Glue::callbacks(), this, opt)
                   : nghttp2_session_client_new2(&s, H2Glue::callbacks(), this, opt);
  nghttp2_option_del(opt);
  if (rv != 0) {
    close("h2_init_failed");
    return;
  }
  h2_.reset(s);
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg.hbone_max_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg.hbone_stream_window},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, settings, server_ ? 2 : 3);
  nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(cfg.hbone_connection_window));
  state_ = State::kReady;
  logger()->debug("tunnel {} {} {} ready: local {} peer {}", id_, side(), formatEndpoint(remote_),
                  cred_->identity, peer);
  owner_.tunnelReady(*this);
}

// ------------------------------------------------------------ streams

int32_t Tunnel::request(StreamEnd& s, const std::string& authority, const std::string& forwarded) {
  if (!ready() || closing_) return NGHTTP2_ERR_INVALID_STATE;
  nghttp2_nv nva[] = {header(":method", "CONNECT"), header(":authority", authority),
                      header("forwarded", forwarded)};
  nghttp2_data_provider prd = H2Glue::provider(s);
  int32_t id = nghttp2_submit_request(h2_.get(), nullptr, nva, 3, &prd, &s);
  if (id < 0) {
    logger()->warn("tunnel {}: cannot open a stream: {}", id_, nghttp2_strerror(id));
    draining_ = true;
    return id;
  }
  streams_[id] = &s;
  had_stream_ = true;
  return id;
}

void Tunnel::respond(int32_t id, int status, bool refuse) {
  StreamEnd* s = streamOf(id);
  if (!s || !h2_ || closed()) return;
  std::string code = std::to_string(status);
  nghttp2_nv nva[] = {header(":status", code)};
  nghttp2_data_provider prd = H2Glue::provider(*s);
  if (refuse) refused_.push_back(id);
  nghttp2_submit_response(h2_.get(), id, nva, 1, refuse ? nullptr : &prd);
  progress();
}

void Tunnel::resume(int32_t id) {
  if (!h2_ || closed()) return;
  nghttp2_session_resume_data(h2_.get(), id);
  progress();
}

void Tunnel::consume(int32_t id, size_t n) {
  if (!h2_ || closed()) return;
  nghttp2_session_consume(h2_.get(), id, n);
  progress();
}

void Tunnel::reset(int32_t id, uint32_t error_code) {
  if (!h2_ || closed()) return;
  nghttp2_submit_rst_stream(h2_.get(), NGHTTP2_FLAG_NONE, id, error_code);
  if (!closing_) progress();
}

void Tunnel::terminate(uint32_t error_code, const std::string& reason) {
  if (!h2_ || closed()) return;
  nghttp2_session_terminate_session(h2_.get(), error_code);
  reason_ = reason;
  draining_ = true;
  owner_.tunnelDraining(*this);
  progress();
}

void Tunnel::drain() {
  draining_ = true;
  owner_.tunnelDraining(*this);
}

// ------------------------------------------------------------ the loop

void Tunnel::progress() {
  if (in_progress_) {  // called back from inside: run once more afterwards
    again_ = true;
    return;
  }
  in_progress_ = true;
  do {
    again_ = false;
    step();
  } while (again_ && !closed());
  in_progress_ = false;
}

void Tunnel::step() {
  if (closed()) return;
  if (close_on_flush_ && state_ != State::kReady) {
    flush();
    return;
  }
  if (state_ == State::kHandshaking) {
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl_.get());
    if (rc == 1) {
      handshakeDone();
      if (closed()) return;
    } else {
      int err = SSL_get_error(ssl_.get(), rc);
      if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        env_.ctx.counters().add(Counter::kHandshakeFailures);
        SLUICE_LOG_LIMITED(env_.handshake_log, logger(), spdlog::level::warn,
                           "tunnel {} {} {}: TLS handshake failed: {}", id_, side(),
                           formatEndpoint(remote_), sslError(ssl_.get(), rc));
        ERR_clear_error();  // sslError() drains the queue only when the line is written
        closeAfterFlush("tls_handshake_failed");  // the alert, if any, goes out first
        return;
      }
    }
  }
  if (state_ == State::kReady) {
    for (;;) {
      ERR_clear_error();
      int n = SSL_read(ssl_.get(), env_.plain.data(), static_cast<int>(env_.plain.size()));
      if (n > 0) {
        ssize_t rv = nghttp2_session_mem_recv(h2_.get(), env_.plain.data(), static_cast<size_t>(n));
        if (rv < 0) {
          env_.ctx.counters().add(Counter::kBadRequests);
          logger()->warn("tunnel {} {} {}: HTTP/2 error: {}", id_, side(), formatEndpoint(remote_),
                         nghttp2_strerror(static_cast<int>(rv)));
          close("h2_protocol_error");
          return;
        }
        if (state_ != State::kReady) return;
        continue;
      }
      int err = SSL_get_error(ssl_.get(), n);
      if (err == SSL_ERROR_WANT_READ) break;
      if (err == SSL_ERROR_ZERO_RETURN) {
        peer_eof_ = true;
        break;
      }
      logger()->warn("tunnel {}: TLS error: {}", id_, sslError(ssl_.get(), n));
      close("tls_error");
      return;
    }
    BIO* wbio = SSL_get_wbio(ssl_.get());
    while (BIO_ctrl_pending(wbio) < kCipherHighWater && nghttp2_session_want_write(h2_.get())) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(h2_.get(), &data);
      if (n < 0) {
        logger()->warn("tunnel {}: HTTP/2 send error: {}", id_,
                       nghttp2_strerror(static_cast<int>(n)));
        close("h2_send_error");
        return;
      }
      if (n == 0) break;
      if (SSL_write(ssl_.get(), data, static_cast<int>(n)) <= 0) {
        close("tls_write_error");
        return;
      }
    }
    if (state_ != State::kReady) return;
    if (!nghttp2_session_want_read(h2_.get()) && !nghttp2_session_want_write(h2_.get()) &&
        !close_on_flush_) {
      closeAfterFlush("goaway");  // both sides are done with the session
      return;
    }
  }
  flush();
  if (closed()) return;
  if (peer_eof_) {
    close(streams_.empty() ? "peer_closed" : "peer_closed_with_open_streams");
    return;
  }
  armRecv();
}

void Tunnel::armRecv() {
  if (recv_.busy() || state_ == State::kConnecting || closed()) return;
  size_t want = state_ == State::kReady ? kCipherRecv : kHandshakeRecv;
  if (rbuf_size_ != want) {  // no receive in flight: the buffer is ours
    rbuf_.reset(new uint8_t[want]);
    rbuf_size_ = want;
  }
  recv_.recv(env_.ctx.ring, fd_.get(), rbuf_.get(), rbuf_size_);
}

// Writes what TLS produced; one send in flight, its buffer untouched until done.
void Tunnel::flush() {
  if (send_.busy() || !ssl_ || closed()) return;
  if (soff_ >= sbuf_.size()) {
    sbuf_.clear();
    soff_ = 0;
    BIO* wbio = SSL_get_wbio(ssl_.get());
    size_t pending = BIO_ctrl_pending(wbio);
    if (pending == 0) {
      if (close_on_flush_) close(reason_.empty() ? "closed" : reason_);
      return;
    }
    sbuf_.resize(std::min(pending, kCipherSendChunk));
    int n = BIO_read(wbio, sbuf_.data(), static_cast<int>(sbuf_.size()));
    sbuf_.resize(n > 0 ? static_cast<size_t>(n) : 0);
    if (sbuf_.empty()) return;
  }
  send_.send(env_.ctx.ring, fd_.get(), sbuf_.data() + soff_, sbuf_.size() - soff_);
}

void Tunnel::onRecv(const io_uring_cqe& cqe) {
  int res = cqe.res;
  if (closed()) {
    finishIfIdle();
    return;
  }
  if (res > 0) {
    last_rx_ = Clock::now();
    ping_outstanding_ = false;
    if (!ssl_) {  // server: the first bytes of the handshake
      early_.append(reinterpret_cast<const char*>(rbuf_.get()), static_cast<size_t>(res));
      firstBytes();
      if (!ssl_) armRecv();  // still waiting for the certificate: keep reading (EOF, cap)
      finishIfIdle();
      return;
    }
    BIO_write(SSL_get_rbio(ssl_.get()), rbuf_.get(), res);
  } else if (res == 0) {
    peer_eof_ = true;
    if (!ssl_) {
      close("peer_closed");
      finishIfIdle();
      return;
    }
  } else {
    close(std::string("recv_error: ") + std::strerror(-res));
    finishIfIdle();
    return;
  }
  progress();
  finishIfIdle();
}

void Tunnel::onSend(const io_uring_cqe& cqe) {
  int res = cqe.res;
  if (!closed()) {
    if (res <= 0) {
      close(std::string("send_error: ") + std::strerror(res == 0 ? EPIPE : -res));
    } else {
      soff_ += static_cast<size_t>(res);
      progress();
    }
  }
  finishIfIdle();
}

// ------------------------------------------------------------ closing

void Tunnel::close(const std::string& reason) {
  if (closed()) return;
  if (reason_.empty()) reason_ = reason;
  if (!closing_) {
    closing_ = true;
    owner_.tunnelClosing(*this);
  }
  // Streams cannot outlive their tunnel: reset them (their apps see RST).
  // They stay attached while nghttp2 may still call back with them.
  std::vector<StreamEnd*> open;
  for (auto& [id, s] : streams_) open.push_back(s);
  for (StreamEnd* s : open) s->tunnelLost(reason_);
  bool flushing = close_on_flush_ && (send_.busy() || soff_ < sbuf_.size() ||
                                      (ssl_ && BIO_ctrl_pending(SSL_get_wbio(ssl_.get())) > 0));
  if (flushing) return;  // flush() comes back here once the last bytes are out
  state_ = State::kClosed;
  auto attached = std::move(streams_);
  streams_.clear();
  for (auto& [id, s] : attached) s->tunnelDetached();  // nghttp2 is done with them now
  env_.ctx.counters().sub(Counter::kTunnelsActive);
  logger()->debug("tunnel {} {} {} closed: {}", id_, side(), formatEndpoint(remote_), reason_);
  if (busy()) env_.ctx.ring.cancelFd(fd_.get());
  finishIfIdle();
}

// Closes once the bytes already produced (an alert, a GOAWAY) are written;
// bounded by the handshake timeout in tick().
void Tunnel::closeAfterFlush(const std::string& reason) {
  if (reason_.empty()) reason_ = reason;
  if (!close_on_flush_) deadline_ = Clock::now() + env_.ctx.config.hbone_handshake_timeout;
  close_on_flush_ = true;
  if (!draining_) drain();
  flush();
  if (!closed() && !send_.busy()) close(reason);
}

void Tunnel::gracefulClose(const std::string& reason) {
  if (!ready()) {
    close(reason);
    return;
  }
  nghttp2_session_terminate_session(h2_.get(), NGHTTP2_NO_ERROR);
  progress();
  if (!closed()) closeAfterFlush(reason);
}

void Tunnel::finishIfIdle() {
  if (!closed() || busy() || finished_) return;
  finished_ = true;
  owner_.tunnelFinished(*this);
}

void Tunnel::tick(Clock::time_point now, size_t queued) {
  if (closed()) return;
  const auto& cfg = env_.ctx.config;
  if (close_on_flush_) {
    if (now > deadline_) {
      close_on_flush_ = false;  // the peer does not read: stop waiting
      close(reason_);
    }
    return;
  }
  bool unestablished = !ready() || (server_ && !had_stream_);
  if (unestablished && now > deadline_) {
    env_.ctx.counters().add(Counter::kHboneTimeouts);
    SLUICE_LOG_LIMITED(env_.timeout_log, logger(), spdlog::level::warn,
                       "tunnel {} {} {}: {} not done within {} ms; closing", id_, side(),
                       formatEndpoint(remote_), ready() ? "first CONNECT" : "handshake",
                       cfg.hbone_handshake_timeout.count());
    close("handshake_timeout");
    return;
  }
  if (!ready()) return;
  auto idle_limit = server_ ? 2 * cfg.hbone_idle_timeout : cfg.hbone_idle_timeout;
  if (streams_.size() + queued == 0 && (draining_ || now - idle_since_ > idle_limit)) {
    gracefulClose(draining_ ? "drained" : "idle");
    return;
  }
  auto silent = now - last_rx_;
  if (silent > 2 * cfg.hbone_keepalive) {
    logger()->warn("tunnel {} {} {}: no answer to keepalive; closing", id_, side(),
                   formatEndpoint(remote_));
    close("keepalive_timeout");
  } else if (silent > cfg.hbone_keepalive && !ping_outstanding_) {
    nghttp2_submit_ping(h2_.get(), NGHTTP2_FLAG_NONE, nullptr);
    ping_outstanding_ = true;
    progress();
  }
}

}  // namespace sluice::ztunnel::hbone
