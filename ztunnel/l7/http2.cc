#include "ztunnel/l7/http2.h"

#include <algorithm>
#include <vector>

namespace sluice::ztunnel::l7 {

namespace {
std::string_view view(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }
}  // namespace

struct Http2Observer::Callbacks {
  static Http2Observer& self(void* p) { return *static_cast<Http2Observer*>(p); }

  // --- request session (the client's bytes) ---
  static int requestBegin(nghttp2_session*, const nghttp2_frame* f, void* ud) {
    Http2Observer& o = self(ud);
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    int32_t id = f->hd.stream_id;
    if (o.streams_.size() >= kMaxStreams) return NGHTTP2_ERR_CALLBACK_FAILURE;
    Exchange& e = o.streams_[id];
    e.protocol = AppProtocol::kHttp2;
    e.begin();
    // The response session must know the stream, or the server's HEADERS on
    // it would be a protocol error: open it under the same id.
    static const nghttp2_nv kNv[] = {
        {(uint8_t*)":method", (uint8_t*)"GET", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t*)":scheme", (uint8_t*)"http", 7, 4, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t*)":path", (uint8_t*)"/", 5, 1, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_session* resp = o.resp_.get();
    if (nghttp2_session_set_next_stream_id(resp, id) != 0 ||
        nghttp2_submit_request(resp, nullptr, kNv, 3, nullptr, nullptr) != id || !o.drain(resp))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
  }

  static int requestHeader(nghttp2_session*, const nghttp2_frame* f, const uint8_t* name,
                           size_t namelen, const uint8_t* value, size_t valuelen, uint8_t,
                           void* ud) {
    Exchange* e = self(ud).find(f->hd.stream_id);
    if (!e) return 0;
    std::string_view n = view(name, namelen), v = view(value, valuelen);
    if (n == ":method")
      Exchange::append(e->method, v);
    else if (n == ":path")
      Exchange::append(e->path, v);
    else if (n == ":authority" || (n == "host" && e->authority.empty()))
      Exchange::append(e->authority, v);
    else if (n == "content-type" && v.starts_with("application/grpc"))
      e->protocol = AppProtocol::kGrpc;
    return 0;
  }

  static int requestData(nghttp2_session*, uint8_t, int32_t id, const uint8_t*, size_t len,
                         void* ud) {
    if (Exchange* e = self(ud).find(id)) e->request_bytes += len;
    return 0;
  }

  static int requestFrame(nghttp2_session*, const nghttp2_frame* f, void* ud) {
    Http2Observer& o = self(ud);
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
      return o.mirrorSettings(o.resp_.get(), f->settings) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    if (f->hd.type == NGHTTP2_RST_STREAM && o.find(f->hd.stream_id))
      o.done(f->hd.stream_id, o.resp_.get());  // the client gave up on it
    return 0;
  }

  // --- response session (the server's bytes) ---
  static int responseHeader(nghttp2_session*, const nghttp2_frame* f, const uint8_t* name,
                            size_t namelen, const uint8_t* value, size_t valuelen, uint8_t,
                            void* ud) {
    Exchange* e = self(ud).find(f->hd.stream_id);
    if (!e) return 0;
    std::string_view n = view(name, namelen), v = view(value, valuelen);
    auto number = [](std::string_view s) {
      int x = 0;
      if (s.empty() || s.size() > 9) return -1;
      for (char c : s) {
        if (c < '0' || c > '9') return -1;
        x = x * 10 + (c - '0');
      }
      return x;
    };
    if (n == ":status") {
      int status = number(v);
      if (status >= 200 || e->status == 0) e->status = status < 0 ? 0 : status;
    } else if (n == "grpc-status") {
      e->grpc_status = number(v);
    }
    return 0;
  }

  static int responseData(nghttp2_session*, uint8_t, int32_t id, const uint8_t*, size_t len,
                          void* ud) {
    if (Exchange* e = self(ud).find(id)) e->response_bytes += len;
    return 0;
  }

  static int responseFrame(nghttp2_session*, const nghttp2_frame* f, void* ud) {
    Http2Observer& o = self(ud);
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
      return o.mirrorSettings(o.req_.get(), f->settings) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    bool ends = (f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
                (f->hd.flags & NGHTTP2_FLAG_END_STREAM);
    if ((ends || f->hd.type == NGHTTP2_RST_STREAM) && o.find(f->hd.stream_id))
      o.done(f->hd.stream_id, o.req_.get());
    return 0;
  }
};

Http2Observer::Http2Observer(RequestSink& sink) : sink_(sink) {
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  // Observers of someone else's conversation: be lenient about HTTP
  // semantics, strict only about framing, and never limit the peers.
  nghttp2_option_set_no_http_messaging(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, 1u << 30);
  nghttp2_option_set_no_closed_streams(opt, 1);

  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, &Callbacks::requestBegin);
  nghttp2_session_callbacks_set_on_header_callback(cb, &Callbacks::requestHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &Callbacks::requestData);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &Callbacks::requestFrame);
  nghttp2_session* s = nullptr;
  if (nghttp2_session_server_new2(&s, cb, this, opt) == 0) req_.reset(s);
  nghttp2_session_callbacks_del(cb);

  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_header_callback(cb, &Callbacks::responseHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &Callbacks::responseData);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &Callbacks::responseFrame);
  s = nullptr;
  if (nghttp2_session_client_new2(&s, cb, this, opt) == 0) resp_.reset(s);
  nghttp2_session_callbacks_del(cb);
  nghttp2_option_del(opt);
  failed_ = !req_ || !resp_ || !drain(resp_.get());  // our client preface, discarded
}

Http2Observer::~Http2Observer() = default;

Exchange* Http2Observer::find(int32_t id) {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : &it->second;
}

bool Http2Observer::drain(nghttp2_session* s) {
  for (;;) {
    const uint8_t* data = nullptr;
    ssize_t n = nghttp2_session_mem_send(s, &data);
    if (n < 0) return false;
    if (n == 0) return nghttp2_session_want_read(s) != 0;
  }
}

bool Http2Observer::mirrorSettings(nghttp2_session* to, const nghttp2_settings& s) {
  std::vector<nghttp2_settings_entry> iv;
  for (size_t i = 0; i < s.niv; ++i) {
    int32_t id = s.iv[i].settings_id;
    // What only one side may announce stays out: the other session would refuse it.
    if (id == NGHTTP2_SETTINGS_ENABLE_PUSH || id == NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL ||
        id > NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE)
      continue;
    iv.push_back(s.iv[i]);
    // The HPACK table a peer announces is what the other peer may fill in
    // our decoder: bounded here. A peer that uses more is a compression
    // error for the observer alone (it stops; the bytes still pass).
    if (id == NGHTTP2_SETTINGS_HEADER_TABLE_SIZE)
      iv.back().value = std::min(iv.back().value, kMaxHeaderTable);
  }
  return nghttp2_submit_settings(to, NGHTTP2_FLAG_NONE, iv.data(), iv.size()) == 0 && drain(to);
}

void Http2Observer::done(int32_t id, nghttp2_session* other) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  it->second.report(sink_);
  streams_.erase(it);
  // Frees the stream there (an RST we "send" is discarded with the rest).
  if (nghttp2_session_find_stream(other, id)) {
    nghttp2_submit_rst_stream(other, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
    if (!drain(other)) failed_ = true;
  }
}

bool Http2Observer::feed(nghttp2_session* s, std::string_view bytes) {
  if (failed_) return false;
  ssize_t n =
      nghttp2_session_mem_recv(s, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  if (n < 0 || static_cast<size_t>(n) != bytes.size() || !drain(s)) failed_ = true;
  return !failed_;
}

bool Http2Observer::client(std::string_view bytes) { return feed(req_.get(), bytes); }
bool Http2Observer::server(std::string_view bytes) { return feed(resp_.get(), bytes); }

void Http2Observer::finish(bool answered_only) {
  for (auto& [id, e] : streams_)
    if (!answered_only || e.status != 0) e.report(sink_);
  streams_.clear();
}

}  // namespace sluice::ztunnel::l7
