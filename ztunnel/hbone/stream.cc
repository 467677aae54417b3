#include "ztunnel/hbone/stream.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"
#include "ztunnel/l7/inspect_policy.h"

namespace sluice::ztunnel::hbone {

namespace {
auto logger() { return log::get("hbone"); }

// The app -> tunnel buffer: whole DATA frames of the size a Sluice peer
// takes, so that a full buffer goes out as frames that fill whole TLS
// records (Tunnel::frameLength), none with a few bytes left over.
size_t upBuffer(size_t bytes) {
  size_t frame = Tunnel::frameLength(Tunnel::kMaxFrameSize);
  return bytes >= frame ? bytes / frame * frame : bytes;
}
// What it may grow to (relay::Pipe doubles it, up to this): whole frames
// too, so only when it starts at whole frames (a smaller one stays).
size_t upBufferMax(size_t bytes, size_t most) {
  size_t start = upBuffer(bytes);
  return start % Tunnel::frameLength(Tunnel::kMaxFrameSize) == 0 ? upBuffer(most) : start;
}
}  // namespace

Stream::Stream(proxy::WorkerContext& ctx, StreamOwner& owner, Tunnel* tunnel,
               std::shared_ptr<proxy::PodState> pod, bool server)
    : ctx_(ctx),
      owner_(owner),
      tunnel_(tunnel),
      pod_(std::move(pod)),
      server_(server),
      up_(ctx.ring, *this, upBuffer(ctx.config.buffer_bytes),
          upBufferMax(ctx.config.buffer_bytes, ctx.config.buffer_max_bytes)),
      down_(ctx.ring, *this, ctx.config.buffer_bytes) {
  pod_->connections++;
  ctx_.counters().add(Counter::kActive);
  if (server_) ctx_.counters().add(Counter::kAccepted);  // client side: counted at accept
}

Stream::~Stream() {
  if (finished_) return;
  // Torn down with the worker (it waited for the ring): count it closed.
  ctx_.counters().sub(Counter::kActive);
  ctx_.counters().add(Counter::kClosed);
  pod_->connections--;
  if (live_) ctx_.records.close(*live_, CloseReason::kProxyShutdown);
}

void Stream::openRecord(std::shared_ptr<proxy::LiveRecord> live) {
  live_ = std::move(live);
  live_->worker = ctx_.worker;
  // A client stream may be reset from the start (a drain deadline); a
  // server one once the authorization hook allowed it (server.cc).
  if (!server_) live_->owner = this;
  live_->may_retry = isService();
  ctx_.records.open(live_);
}

int Stream::appFd() const {
  if (server_) return app_.get();
  return attempt_ ? attempt_->client.get() : -1;
}

void Stream::setAttempt(std::unique_ptr<proxy::Attempt> attempt) {
  attempt_ = std::move(attempt);
  attempt_->restartClock();  // the connect latency starts now, not before a certificate wait
}

void Stream::start() {
  if (started_ || closing_) return;
  started_ = true;
  const SockAddr* dst = server_ ? &dst_ : attempt_ ? &attempt_->dst : nullptr;
  if (live_ && dst && l7::shouldInspect(ctx_.config, ctx_.directory, *dst)) {
    l7_ = std::make_unique<l7::Inspector>(*this, ctx_.config.http_detect_timeout);
    if (server_)
      l7_->attach(down_, up_);
    else
      l7_->attach(up_, down_);
  }
  up_.start(appFd(), -1);
  down_.start(-1, appFd());
  if (!early_.empty()) {
    down_.push(early_.data(), early_.size());
    std::string().swap(early_);
  }
  if (down_eof_) down_.pushEnd();
}

// ------------------------------------------------------------ client

bool Stream::submit() {
  if (!tunnel_ || closing_) return false;
  if (isService()) {
    peekFirstBytes();
    // The endpoint's connect latency is CONNECT to answer: a tunnel's
    // handshake, paid once per node, is not the endpoint's (one such sample
    // would keep it out of the balancer's choices for a while).
    attempt_->restartClock();
  }
  std::string authority = formatEndpoint(attempt_->dst);
  std::string forwarded = "for=\"" + live_->rec.source + "\"";
  int32_t id = tunnel_->request(*this, authority, forwarded);
  if (id < 0) {
    tunnel_ = nullptr;
    fail(CloseReason::kNoTunnel, "stream_refused");
    return false;
  }
  id_ = id;
  h2_open_ = true;
  // The app's first bytes go right behind the CONNECT, without waiting a
  // round trip for the 200: the server holds them until its app is
  // connected, and drops them if it refuses. A Service connection reads
  // nothing from the app before the 200 (a copy of what was there went
  // out: peekFirstBytes), so a refused attempt moves to another endpoint
  // with every byte still in the app's socket.
  if (!isService()) start();
  return true;
}

void Stream::peekFirstBytes() {
  peeked_ = proxy::peekPending(appFd());  // empty: nothing yet (or an error the pipe will see)
  peeked_skip_ = peeked_.size();
}

void Stream::fail(CloseReason reason, std::string detail) {
  if (closing_) return;
  // Not once the app's first bytes went out, unless the server said it
  // took none of them: another endpoint would get them a second time.
  if (isService() && !established_ && !started_ && !peeked_out_ && live_ &&
      live_->sent.load(std::memory_order_relaxed) == 0 && !busy()) {
    std::string why = toString(reason);
    if (!detail.empty()) why += ": " + detail;
    if (proxy::Attempt::retry(attempt_, why)) {  // the app's socket went with it
      close(true, reason, std::move(detail), true);
      return;
    }
  }
  close(true, reason, std::move(detail));
}

// ------------------------------------------------------------ server

void Stream::connectApp(proxy::Upstream sock, const SockAddr& dst) {
  app_ = std::move(sock.fd);
  dst_ = dst;
  connect_.start(ctx_.ring, app_.get(), dst_, ctx_.config.connect_timeout, sock.setup);
}

void Stream::onConnected(int res) {
  if (closing_) {
    maybeFinish();
    return;
  }
  if (!attached()) {
    close(true, CloseReason::kTunnelClosed);
    return;
  }
  if (res < 0) {
    ctx_.counters().add(Counter::kConnectFailures);
    bool timeout = res == -ETIMEDOUT;
    std::string detail = connect_.describe(res);
    logger()->info("pod {}: app {} not reachable: {}", pod_->spec.name_namespace,
                   formatEndpoint(dst_), timeout ? "connect_timeout" : detail);
    // The request that came with the CONNECT is counted, answered by
    // nothing and flagged as the stream ends (the source counts what its
    // own pipe read; DATA still on its way is not seen).
    if (live_ && !early_.empty() && l7::shouldInspect(ctx_.config, ctx_.directory, dst_)) {
      l7_ = std::make_unique<l7::Inspector>(*this, ctx_.config.http_detect_timeout);
      l7_->clientBytes(early_);
    }
    refuse(503, timeout ? CloseReason::kConnectTimeout : CloseReason::kConnectError,
           std::move(detail));
    return;
  }
  established_ = true;
  start();
  tunnel_->respond(id_, 200, false);
}

void Stream::refuse(int status, CloseReason reason, std::string detail) {
  Tunnel* t = attached() ? tunnel_ : nullptr;
  int32_t id = id_;
  // Closing first: the RST after the response ends the stream in order.
  close(false, reason, std::move(detail));
  if (t) t->respond(id, status, true);
}

// ------------------------------------------------------------ both

void Stream::close(bool reset, CloseReason reason, std::string detail, bool retried) {
  if (closing_) return;
  closing_ = true;
  reason_ = reason;
  detail_ = std::move(detail);
  retried_ = retried;
  // Requests without a response are reported now, while the record is
  // open: the reset below can finish the stream (and close its record)
  // at once. They carry how the stream ends.
  if (l7_) {
    if (live_) ctx_.records.ending(*live_, reason_, detail_);
    l7_->finish();
  }
  // How the app's socket ends is settled first: the RST_STREAM below can
  // finish the stream (and close that socket) before it returns.
  int fd = appFd();
  reset_ = reset;
  if (reset && fd >= 0) proxy::setLinger0(fd);
  if (reset && attached() && !rst_sent_) {
    rst_sent_ = true;
    tunnel_->reset(id_, NGHTTP2_CONNECT_ERROR);
  }
  up_.stop();
  down_.stop();
  giveBack(unconsumed_);  // what the app will not get now
  if (fd >= 0 && busy()) ctx_.ring.cancelFd(fd);
  maybeFinish();
}

void Stream::maybeFinish() {
  if (!closing_ || finished_ || busy() || attached()) return;
  finished_ = true;
  ctx_.counters().sub(Counter::kActive);
  ctx_.counters().add(Counter::kClosed);
  pod_->connections--;
  share_ = {};
  if (live_) ctx_.records.close(*live_, reason_, detail_, retried_);
  // The app's socket closes with the ring's next submission.
  if (server_)
    ctx_.ring.close(std::move(app_), !reset_);
  else if (attempt_)
    ctx_.ring.close(std::move(attempt_->client), !reset_);
  owner_.streamFinished(*this);
}

// ------------------------------------------------------------ HTTP/2

void Stream::h2Header(std::string_view name, std::string_view value) {
  if (server_) {
    if (name == ":method")
      method = value;
    else if (name == ":authority")
      authority = value;
    else if (name == "forwarded")
      forwarded = value;
  } else if (name == ":status") {
    status = value;
  }
}

void Stream::h2Headers() {
  if (server_) {
    owner_.streamRequest(*this);
    return;
  }
  if (closing_ || !attached()) return;
  if (status == "200") {
    established_ = true;
    if (attempt_) attempt_->succeeded();
    if (live_) {
      ctx_.records.confirm(*live_);
      if (unanswered_sent_) ctx_.records.moved(*live_, unanswered_sent_, 0);
      unanswered_sent_ = 0;
    }
    start();
    tunnel_->resume(id_);
    return;
  }
  SLUICE_LOG_LIMITED(ctx_.refused_log, logger(), spdlog::level::warn,
                     "tunnel {}: {} refused CONNECT {} with status {}", tunnel_->id(),
                     tunnel_->peerIdentity(), live_ ? live_->rec.destination : "?", status);
  peeked_out_ = false;  // a refusal: the server's app got nothing
  rst_sent_ = true;
  tunnel_->reset(id_, NGHTTP2_CANCEL);
  // 401/403: the destination answered, and its authorization refused this
  // client. That is the connection's answer, as a deny on the same node is
  // (reset, no other endpoint tried): the endpoint is healthy, so the
  // refusal counts for no ejection either (an unauthorized client must not
  // eject endpoints from its node's authorized ones).
  if (refusedByPolicy(status)) {
    if (attempt_) attempt_->succeeded();
    close(true, CloseReason::kRefused, status);
    return;
  }
  fail(CloseReason::kRefused, status);
}

bool Stream::h2Data(const uint8_t* data, size_t len) {
  if (closing_) return false;
  unconsumed_ += len;
  if (!started_)
    early_.append(reinterpret_cast<const char*>(data), len);
  else
    down_.push(reinterpret_cast<const char*>(data), len, false);
  return true;
}

void Stream::h2DataDone() {
  if (started_) down_.flush();  // a stopped pipe sends nothing
}

void Stream::h2End() {
  if (closing_) return;
  down_eof_ = true;
  if (started_) down_.pushEnd();  // else when they start
}

void Stream::h2Closed(uint32_t error_code) {
  if (tunnel_) forgotten_by_ = tunnel_->id();  // the window of what is still to go
  h2_open_ = false;
  tunnel_ = nullptr;
  if (closing_)
    maybeFinish();
  else if (error_code != NGHTTP2_NO_ERROR) {
    // REFUSED_STREAM (a GOAWAY's unprocessed streams too): nothing was done with it.
    if (error_code == NGHTTP2_REFUSED_STREAM) peeked_out_ = false;
    fail(CloseReason::kStreamReset, nghttp2_http2_strerror(error_code));
  } else if (!down_eof_ || !up_done_)
    fail(CloseReason::kStreamClosedEarly);
  else if (down_.sinkDone())
    close(false, CloseReason::kEof);
  // else: both directions ended; done when the app has every byte (pipeEnded)
}

ssize_t Stream::h2Read(uint8_t* buf, size_t len, uint32_t* flags) {
  if (closing_) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (peeked_sent_ < peeked_.size()) {  // a Service connection's first bytes
    size_t n = std::min(len, peeked_.size() - peeked_sent_);
    std::memcpy(buf, peeked_.data() + peeked_sent_, n);
    peeked_sent_ += n;
    peeked_out_ = true;
    return static_cast<ssize_t>(n);
  }
  if (!started_) return NGHTTP2_ERR_DEFERRED;  // a Service connection before its 200
  if (peeked_skip_ > 0) {  // read again by up_ (and seen by the inspector): sent already
    size_t k = std::min(peeked_skip_, up_.available());
    peeked_skip_ -= k;
    up_.drop(k);
    if (peeked_skip_ > 0) return NGHTTP2_ERR_DEFERRED;  // pipeReadable says when there is more
  }
  size_t buffered = up_.available();
  if (buffered >= Tunnel::kNoCopyMin) {  // the tunnel takes it from h2Pending()
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    return static_cast<ssize_t>(std::min(len, buffered));
  }
  size_t n = up_.pull(reinterpret_cast<char*>(buf), len);
  if (n > 0) return static_cast<ssize_t>(n);
  if (up_.ended()) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;  // half-close: END_STREAM
    up_done_ = true;
    return 0;
  }
  return NGHTTP2_ERR_DEFERRED;  // the pipe says when there is more (pipeReadable)
}

void Stream::tunnelLost(const std::string& reason) {
  if (reason == "pod_removed")
    fail(CloseReason::kPodRemoved);
  else if (reason == "proxy_shutdown")
    fail(CloseReason::kProxyShutdown);
  else
    fail(CloseReason::kTunnelClosed, reason);
}

void Stream::tunnelDetached() {
  h2_open_ = false;
  tunnel_ = nullptr;
  if (!closing_) close(true, CloseReason::kTunnelClosed);
  maybeFinish();
}

// ------------------------------------------------------------ pipes

void Stream::pipeMoved(relay::Pipe& p, size_t n) {
  if (!live_) return;
  // client -> destination is "sent", whichever side we are
  bool to_destination = (&p == &up_) != server_;
  if (!server_ && !established_ && to_destination) {
    unanswered_sent_ += n;
    return;
  }
  ctx_.records.moved(*live_, to_destination ? n : 0, to_destination ? 0 : n);
}

void Stream::pipeReadable(relay::Pipe&) {
  if (attached()) tunnel_->resume(id_);
}

void Stream::pipeSent(relay::Pipe& p, size_t n) {
  if (&p == &down_) giveBack(n);
}

void Stream::giveBack(size_t n) {
  n = std::min(n, unconsumed_);
  if (n == 0) return;
  unconsumed_ -= n;
  // For a stream nghttp2 forgot, consume() opens the connection's window only.
  Tunnel* t = tunnel_ ? tunnel_ : forgotten_by_ ? owner_.findTunnel(forgotten_by_) : nullptr;
  if (t) t->consume(id_, n);
}

void Stream::pipeEnded(relay::Pipe&) {
  if (!closing_ && !h2_open_ && up_done_) close(false, CloseReason::kEof);
}

// The tunnel -> app EOF after the app's own EOF went out as END_STREAM:
// both directions are over, the stream closes (h2Closed or pipeEnded) and
// with it the app's socket, which sends the FIN.
bool Stream::pipeSinkClosesNext(const relay::Pipe& p) const {
  return &p == &down_ && up_.sourceEnded() && up_done_ && !closing_;
}

void Stream::pipeFailed(relay::Pipe&, int err, bool sending) {
  if (closing_) return;
  if (sending || err == -ECONNRESET)
    close(true, CloseReason::kReset);
  else
    close(true, CloseReason::kRecvError, std::strerror(-err));
}

void Stream::pipeIdle(relay::Pipe&) { maybeFinish(); }

void Stream::l7Request(const RequestRecord& r) {
  if (live_) ctx_.records.request(*live_, r);
}

}  // namespace sluice::ztunnel::hbone
