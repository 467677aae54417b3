// A tunnel's HTTP/2 side: the peer check that ends the handshake, the
// nghttp2 session and its callbacks, and what streams ask of it.
#include <openssl/err.h>

#include <algorithm>

#include "sluice/common/addr.h"
#include "sluice/common/log.h"
#include "sluice/common/x509.h"
#include "ztunnel/hbone/tunnel.h"

namespace sluice::ztunnel::hbone {

namespace {

auto logger() { return log::get("hbone"); }

nghttp2_nv header(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE};
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
      // A CONNECT may carry END_STREAM (a client with nothing to send):
      // its end goes to the stream after the request (h2End remembers it
      // until the app's connection is up).
      if (t.server_ && f->headers.cat == NGHTTP2_HCAT_REQUEST) s->h2Headers();
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
    // An error GOAWAY we did not ask for (Tunnel::terminate names a reason)
    // is nghttp2's own, ending a peer that broke its limits (HTTP/2 rapid
    // reset: streams reset faster than it allows; a flood of frames it must
    // answer; a protocol error).
    if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR &&
        of(ud).reason_.empty()) {
      Tunnel& t = of(ud);
      t.env_.ctx.counters().add(Counter::kBadRequests);
      SLUICE_LOG_LIMITED(t.env_.ctx.goaway_log, logger(), spdlog::level::warn,
                         "tunnel {} {} {} ({}): HTTP/2 ended it with GOAWAY {}: the peer broke "
                         "its limits (e.g. streams reset faster than allowed: rapid reset)",
                         t.id_, t.side(), formatEndpoint(t.remote_), t.peer_identity_,
                         nghttp2_http2_strerror(f->goaway.error_code));
      return 0;
    }
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
    Tunnel& t = of(ud);
    if (!s || !s->h2Data(data, len))
      nghttp2_session_consume(session, id, len);
    else if (t.delivered_.empty() || t.delivered_.back() != id)
      t.delivered_.push_back(id);
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
  // A DATA frame h2Read said NO_COPY for: the payload goes from the
  // stream's buffer straight into TLS, with the frame header written just
  // in front of it (h2Room), so that one SSL_write makes whole records
  // (readLength); frames already queued go first. Without that room, the
  // header joins the queued frames.
  static int sendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd, size_t length,
                      nghttp2_data_source* source, void* ud) {
    Tunnel& t = of(ud);
    auto* s = static_cast<StreamEnd*>(source->ptr);
    std::string_view bytes = s->h2Pending();
    if (frame->data.padlen > 0 || bytes.size() < length) return NGHTTP2_ERR_CALLBACK_FAILURE;
    constexpr size_t kHeader = Tunnel::kFrameHeader;
    const char* out = bytes.data();
    size_t n = length;
    if (char* room = s->h2Room(kHeader)) {
      std::memcpy(room, framehd, kHeader);
      out = room;
      n += kHeader;
    } else {
      t.pout_.append(reinterpret_cast<const char*>(framehd), kHeader);
    }
    if (!t.writePlain()) return NGHTTP2_ERR_CALLBACK_FAILURE;
    ERR_clear_error();
    if (SSL_write(t.ssl_.get(), out, static_cast<int>(n)) <= 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->h2Sent(length);
    return 0;
  }
  // DATA frames as large as the peer and the flow-control windows take, up
  // to kMaxFrameSize, trimmed so that header and payload fill whole TLS
  // records.
  static ssize_t readLength(nghttp2_session*, uint8_t, int32_t, int32_t session_window,
                            int32_t stream_window, uint32_t remote_max_frame_size, void*) {
    int32_t window = std::min(session_window, stream_window);
    return static_cast<ssize_t>(Tunnel::frameLength(
        std::min<uint32_t>(remote_max_frame_size, static_cast<uint32_t>(std::max(window, 1)))));
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
      nghttp2_session_callbacks_set_send_data_callback(c, sendData);
      nghttp2_session_callbacks_set_data_source_read_length_callback(c, readLength);
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

void Tunnel::passDelivered() {
  // A stream may have closed meanwhile (its END_STREAM already sent the
  // rest) or taken DATA twice (ids listed again after another stream's).
  // h2DataDone only starts a send: nothing calls back into the tunnel, and
  // the list keeps its memory for the next round.
  std::sort(delivered_.begin(), delivered_.end());
  delivered_.erase(std::unique(delivered_.begin(), delivered_.end()), delivered_.end());
  for (int32_t id : delivered_)
    if (StreamEnd* s = streamOf(id)) s->h2DataDone();
  delivered_.clear();
}

StreamEnd* Tunnel::streamOf(int32_t id) const {
  return h2_ ? static_cast<StreamEnd*>(nghttp2_session_get_stream_user_data(h2_.get(), id))
             : nullptr;
}

// ------------------------------------------------------------ handshake

void Tunnel::handshakeDone() {
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  std::string why_none;
  std::string peer = tls::peerIdentity(ssl_.get(), &why_none);
  const auto& cfg = env_.ctx.config;
  std::string problem;
  if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != "h2") {
    problem = "ALPN h2 was not negotiated";
  } else if (peer.empty()) {
    problem = why_none.empty() ? "the peer certificate carries no SPIFFE ID" : why_none;
  } else if (!server_ && peer != expected_peer_) {
    problem = "the peer is " + peer + ", expected " + expected_peer_;
  } else if (server_) {
    auto id = x509::SpiffeId::parse(peer);
    if (!id)
      problem = "client identity " + peer +
                " is not a SPIFFE workload ID (spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT)";
    else if (id->trust_domain != cfg.trust_domain)
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
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, kMaxFrameSize},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},  // a client's setting only
  };
  nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, settings, server_ ? 3 : 4);
  nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(cfg.hbone_connection_window));
  state_ = State::kReady;
  if (going_away_) {  // goAway() came during the handshake
    going_away_ = false;
    goAway();
  }
  logger()->debug("tunnel {} {} {} ready: local {} peer {}{}", id_, side(), formatEndpoint(remote_),
                  cred_->identity, peer, SSL_session_reused(ssl_.get()) ? " (resumed)" : "");
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
    drain();  // leaves the pool
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
  progressSoon();
}

void Tunnel::resume(int32_t id) {
  if (!h2_ || closed()) return;
  nghttp2_session_resume_data(h2_.get(), id);
  progressSoon();
}

void Tunnel::consume(int32_t id, size_t n) {
  if (!h2_ || closed()) return;
  nghttp2_session_consume(h2_.get(), id, n);
  progressSoon();
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

void Tunnel::goAway() {
  if (closed() || draining_) return;
  if (!ready()) {  // said once the handshake is done
    going_away_ = true;
    return;
  }
  linger_until_ = Clock::now() + kGoAwayGrace;
  if (server_)
    nghttp2_submit_shutdown_notice(h2_.get());
  else
    nghttp2_submit_goaway(h2_.get(), NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(h2_.get()), NGHTTP2_NO_ERROR,
                          nullptr, 0);
  drain();
  progress();
}

}  // namespace sluice::ztunnel::hbone
