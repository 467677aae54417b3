#include "ztunnel/hbone/tunnel.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"
#include "sluice/common/x509.h"
#include "ztunnel/relay/pipe.h"

namespace sluice::ztunnel::hbone {

namespace {

auto logger() { return log::get("hbone"); }

// One socket read once TLS is up: kCipherRecv, doubled after each read
// that fills it, up to kCipherRecvMax (relay::nextBufferSize: a bulk
// stream's records come in fewer reads, and their DATA goes to the app in
// fewer sends), and back to kCipherRecv for the first read after a second
// without one. A receive in flight for a whole tick is cancelled and its
// buffer freed (tick): an idle tunnel holds no receive buffer, only a poll,
// until its next bytes (a keepalive PING at the latest).
constexpr size_t kCipherRecv = 64 * 1024;
constexpr size_t kCipherRecvMax = 256 * 1024;
// One socket read before the handshake is done: a ClientHello or a
// certificate chain fits in a few reads, and a flood of idle or stalled
// handshakes costs little memory each.
constexpr size_t kHandshakeRecv = 4 * 1024;
constexpr size_t kMaxEarlyBytes = 64 * 1024;     // ciphertext held while waiting for a certificate
constexpr size_t kCipherHighWater = 256 * 1024;  // stop producing frames above this
constexpr size_t kPlainBatch = 16 * 1024;        // small frames per SSL_write (one record)

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

// The tunnel's BIO, both ways: TLS reads ciphertext from what was received
// (early_, then the receive buffer itself) and appends what it writes to
// cout_. A memory BIO would cost one more copy each way.
struct BioGlue {
  static Tunnel& of(BIO* b) { return *static_cast<Tunnel*>(BIO_get_data(b)); }
  static int write(BIO* b, const char* data, size_t len, size_t* written) {
    of(b).cout_.append(data, len);
    *written = len;
    return 1;
  }
  static int read(BIO* b, char* out, size_t len, size_t* got) {
    Tunnel& t = of(b);
    BIO_clear_retry_flags(b);
    size_t n = 0;
    if (t.early_off_ < t.early_.size()) {
      n = std::min(len, t.early_.size() - t.early_off_);
      std::memcpy(out, t.early_.data() + t.early_off_, n);
      t.early_off_ += n;
      if (t.early_off_ == t.early_.size()) {
        std::string().swap(t.early_);
        t.early_off_ = 0;
      }
    } else if (t.rin_len_ > 0) {
      n = std::min(len, t.rin_len_);
      std::memcpy(out, t.rin_, n);
      t.rin_ += n;
      t.rin_len_ -= n;
    }
    if (n == 0) {
      BIO_set_retry_read(b);  // "want read", not EOF
      return 0;
    }
    *got = n;
    return 1;
  }
  static long ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
  static int create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
  }
  static const BIO_METHOD* method() {
    static BIO_METHOD* m = [] {
      BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "hbone tunnel");
      if (bm) {
        BIO_meth_set_write_ex(bm, write);
        BIO_meth_set_read_ex(bm, read);
        BIO_meth_set_ctrl(bm, ctrl);
        BIO_meth_set_create(bm, create);
      }
      return bm;
    }();
    return m;
  }
};

Tunnel::Tunnel(TunnelEnv& env, TunnelOwner& owner, bool server,
               std::shared_ptr<proxy::PodState> pod, const SockAddr& remote)
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
  const BIO_METHOD* method = BioGlue::method();
  BIO* bio = method ? BIO_new(method) : nullptr;
  if (!ssl_ || !bio) {
    BIO_free(bio);
    ssl_.reset();
    close("out_of_memory");
    return;
  }
  BIO_set_data(bio, this);
  SSL_set_bio(ssl_.get(), bio, bio);  // one BIO both ways; the SSL owns it
  if (server_) {
    SSL_set_accept_state(ssl_.get());
  } else {
    SSL_set_connect_state(ssl_.get());  // no SNI: identities are checked by SPIFFE ID
    // A peer reached before: resume (handshakeDone checks the identity all the same).
    env_.tls.offerSession(ssl_.get(), cred_, expected_peer_ + " " + formatEndpoint(remote_));
  }
  state_ = State::kHandshaking;
  progress();
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

void Tunnel::progressSoon() {
  if (in_progress_) {
    again_ = true;
    return;
  }
  if (!soon_.busy() && !closed()) soon_.soon(env_.ctx.ring);
}

size_t Tunnel::frameLength(uint32_t most) {
  size_t n = std::min<size_t>(most, kMaxFrameSize);
  size_t records = (n + kFrameHeader) / kRecordSize;
  return records > 0 ? records * kRecordSize - kFrameHeader : n;
}

void Tunnel::onSoon(const io_uring_cqe&) {
  progress();  // nothing when closed meanwhile
  finishIfIdle();
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
          delivered_.clear();  // the streams are reset with the tunnel
          env_.ctx.counters().add(Counter::kBadRequests);
          logger()->warn("tunnel {} {} {}: HTTP/2 error: {}", id_, side(), formatEndpoint(remote_),
                         nghttp2_strerror(static_cast<int>(rv)));
          close("h2_protocol_error");
          return;
        }
        if (state_ != State::kReady) return passDelivered();
        continue;
      }
      passDelivered();
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
    // Small frames gather in pout_ (one SSL_write for them); a large DATA
    // frame is written from the stream's buffer by H2Glue::sendData.
    while (cout_.size() < kCipherHighWater && nghttp2_session_want_write(h2_.get())) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(h2_.get(), &data);
      if (n < 0) {
        logger()->warn("tunnel {}: HTTP/2 send error: {}", id_,
                       nghttp2_strerror(static_cast<int>(n)));
        close(n == NGHTTP2_ERR_CALLBACK_FAILURE ? "tls_write_error" : "h2_send_error");
        return;
      }
      if (n == 0) break;
      pout_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
      if (pout_.size() >= kPlainBatch && !writePlain()) {
        close("tls_write_error");
        return;
      }
    }
    if (!writePlain()) {
      close("tls_write_error");
      return;
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

bool Tunnel::writePlain() {
  if (pout_.empty()) return true;
  ERR_clear_error();
  int rc = SSL_write(ssl_.get(), pout_.data(), static_cast<int>(pout_.size()));
  pout_.clear();
  return rc > 0;
}

void Tunnel::armRecv() {
  if (recv_.busy() || park_.busy() || state_ == State::kConnecting || closed()) return;
  if (rin_len_ > 0) {  // what TLS left of the last receive: rbuf_ is needed again
    early_.append(reinterpret_cast<const char*>(rin_), rin_len_);
    rin_len_ = 0;
  }
  size_t want = kHandshakeRecv;
  if (state_ == State::kReady)
    want = rbuf_size_ < kCipherRecv || recv_idle_
               ? kCipherRecv
               : relay::nextBufferSize(rbuf_size_, last_recv_, kCipherRecvMax);
  recv_idle_ = false;
  if (rbuf_size_ != want) {  // no receive in flight: the buffer is ours
    rbuf_.reset(new uint8_t[want]);
    rbuf_size_ = want;
  }
  recv_.recv(env_.ctx.ring, fd_.get(), rbuf_.get(), rbuf_size_);
  idle_.posted();
}

// Writes what TLS produced; one send in flight, its buffer untouched until done.
void Tunnel::flush() {
  if (send_.busy() || !ssl_ || closed()) return;
  if (soff_ >= sbuf_.size()) {
    sbuf_.clear();
    soff_ = 0;
    if (cout_.empty()) {
      if (close_on_flush_) close(reason_.empty() ? "closed" : reason_);
      return;
    }
    sbuf_.swap(cout_);  // TLS goes on writing into the other buffer
  }
  send_.send(env_.ctx.ring, fd_.get(), sbuf_.data() + soff_, sbuf_.size() - soff_);
}

void Tunnel::onRecv(const io_uring_cqe& cqe) {
  int res = cqe.res;
  if (closed()) {
    finishIfIdle();
    return;
  }
  if (idle_.parked(res)) {
    // Idle: no buffer until the socket has something for us.
    rbuf_.reset();
    rbuf_size_ = 0;
    park_.pollIn(env_.ctx.ring, fd_.get());
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
    rin_ = rbuf_.get();  // TLS reads it in place (the BIO)
    rin_len_ = static_cast<size_t>(res);
    last_recv_ = rin_len_;
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

void Tunnel::onPark(const io_uring_cqe& cqe) {
  // Readable, ended or failed (the receive tells which), or the poll was
  // refused (a full ring): either way a receive goes out again.
  (void)cqe;
  if (closed()) return finishIfIdle();
  armRecv();
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
  bool flushing = close_on_flush_ && (send_.busy() || soff_ < sbuf_.size() || !cout_.empty());
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

void Tunnel::abortNow(const std::string& reason) {
  proxy::setLinger0(fd_.get());
  close(reason);
  if (closed()) env_.ctx.ring.closeNow(fd_);  // in-flight requests end with -ECANCELED
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
  // Nothing to send: the send buffers give back what a burst grew them to.
  if (!send_.busy() && soff_ >= sbuf_.size() && cout_.empty() &&
      sbuf_.capacity() + cout_.capacity() > kPlainBatch) {
    std::string().swap(sbuf_);
    std::string().swap(cout_);
    soff_ = 0;
  }
  // Nothing received for a second either: TLS gives back its record
  // buffers (allocated again for the next record; SSL_free_buffers keeps
  // them while a record is half read or written).
  if (ssl_ && !send_.busy() && soff_ >= sbuf_.size() && cout_.empty() &&
      now - last_rx_ >= std::chrono::seconds(1))
    SSL_free_buffers(ssl_.get());
  if (now - last_rx_ >= std::chrono::seconds(1)) recv_idle_ = true;  // the next read: 64 KiB
  // Idle (everything received read by TLS, the receive waited a whole
  // tick): its cancel's completion (onRecv) parks the tunnel.
  if (idle_.idleAtTick(ready() && recv_.busy() && early_off_ >= early_.size()))
    env_.ctx.ring.cancel(&recv_);
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
  if (streams_.size() + queued == 0 &&
      ((draining_ && now >= linger_until_) || now - idle_since_ > idle_limit)) {
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
