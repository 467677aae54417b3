// The odd HBONE peers of the hbone_*_test.cc files: plain OpenSSL + nghttp2
// on threads, blocking, for what the rig's Client and Server never send or
// answer (a raw HTTP/2 client and server, a bare TLS end).
#pragma once

#include <nghttp2/nghttp2.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ztunnel/hbone_rig.h"

namespace hbone_rig {

struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};
using Ssl = std::unique_ptr<SSL, SslFree>;

// A blocking TLS end on fd, presenting cred (server: accepting).
inline Ssl tlsOn(tls::Contexts& contexts, const std::shared_ptr<const WorkloadCredential>& cred,
                 int fd, bool server) {
  auto ctx = contexts.get(cred, server);
  if (!ctx) return nullptr;
  Ssl ssl(SSL_new(*ctx));
  SSL_set_fd(ssl.get(), fd);
  if ((server ? SSL_accept(ssl.get()) : SSL_connect(ssl.get())) != 1) return nullptr;
  return ssl;
}

struct SessionFree {
  void operator()(nghttp2_session* s) const { nghttp2_session_del(s); }
};

// Drives an nghttp2 session over a blocking TLS connection: writes all it
// wants to, then reads. Returns when the session is done or the peer closed.
// `on_record`: the size of each SSL_read (one TLS record each: the buffer
// holds a record's largest plaintext).
inline void runSession(nghttp2_session* s, SSL* ssl,
                       const std::function<void(size_t)>& on_record = {}) {
  uint8_t buf[16384];
  for (;;) {
    for (;;) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(s, &data);
      if (n <= 0) break;
      if (SSL_write(ssl, data, static_cast<int>(n)) <= 0) return;
    }
    if (!nghttp2_session_want_read(s) && !nghttp2_session_want_write(s)) return;
    int n = SSL_read(ssl, buf, sizeof(buf));
    if (n <= 0) return;
    if (on_record) on_record(static_cast<size_t>(n));
    if (nghttp2_session_mem_recv(s, buf, static_cast<size_t>(n)) < 0) return;
  }
}

// An HBONE server made of plain nghttp2: answers every CONNECT with 200 and
// echoes its bytes; the first connection sends GOAWAY(NO_ERROR, last stream
// = the Nth) once N streams are open (0: never), and goes on serving them.
// kAnswerAfterData: a CONNECT is answered only once its first DATA came (a
// client that waits for the 200 before it sends never gets one);
// kDropAtData: no answer, and the first DATA drops the whole connection.
class RawServer {
 public:
  enum class Mode { kAnswer, kAnswerAfterData, kDropAtData };
  RawServer(int listener, tls::Contexts& contexts, std::shared_ptr<const WorkloadCredential> cred,
            int goaway_after, Mode mode = Mode::kAnswer)
      : listener_(listener),
        tls_(contexts),
        cred_(std::move(cred)),
        goaway_after_(goaway_after),
        mode_(mode) {
    thread_ = std::thread([this] { acceptLoop(); });
  }
  ~RawServer() {
    stop_ = true;
    thread_.join();
    for (auto& t : conns_) t.join();
  }
  std::atomic<int> connections{0}, streams{0};
  std::atomic<int> answered_after_data{0};  // kAnswerAfterData: 200s sent once DATA came
  std::atomic<int> dropped{0};              // kDropAtData: connections dropped
  std::atomic<bool> goaway_sent{false};

 private:
  struct Echo {
    std::string buf;
    bool eof = false;
    bool answered = false;
  };
  struct Conn {
    RawServer* server = nullptr;
    bool first = false;
    nghttp2_session* s = nullptr;
    std::map<int32_t, Echo> echo;
    int seen = 0;
  };

  void acceptLoop() {
    while (!stop_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      bool first = connections++ == 0;
      conns_.emplace_back([this, fd, first] {
        setTimeouts(fd, 10s);
        if (Ssl ssl = tlsOn(tls_, cred_, fd, true)) serve(ssl.get(), first);
        ::close(fd);
      });
    }
  }

  static ssize_t read(nghttp2_session*, int32_t id, uint8_t* buf, size_t len, uint32_t* flags,
                      nghttp2_data_source* src, void*) {
    Echo& e = static_cast<Conn*>(src->ptr)->echo[id];
    if (!e.buf.empty()) {
      size_t n = std::min(len, e.buf.size());
      memcpy(buf, e.buf.data(), n);
      e.buf.erase(0, n);
      return static_cast<ssize_t>(n);
    }
    if (e.eof) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    return NGHTTP2_ERR_DEFERRED;
  }

  static void answer(nghttp2_session* s, Conn* c, int32_t id) {
    c->echo[id].answered = true;
    std::string code = "200";
    nghttp2_nv st{reinterpret_cast<uint8_t*>(const_cast<char*>(":status")),
                  reinterpret_cast<uint8_t*>(code.data()), 7, 3, NGHTTP2_NV_FLAG_NONE};
    nghttp2_data_provider prd{};
    prd.source.ptr = c;
    prd.read_callback = read;
    nghttp2_submit_response(s, id, &st, 1, &prd);
  }

  void serve(SSL* ssl, bool first) {
    Conn c;
    c.server = this;
    c.first = first;
    nghttp2_session_callbacks* cbs = nullptr;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_frame_recv_callback(
        cbs, [](nghttp2_session* s, const nghttp2_frame* f, void* ud) {
          auto* c = static_cast<Conn*>(ud);
          int32_t id = f->hd.stream_id;
          if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
            c->server->streams++;
            if (c->server->mode_ == Mode::kAnswer) answer(s, c, id);
            if (c->first && ++c->seen == c->server->goaway_after_) {
              nghttp2_submit_goaway(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR, nullptr, 0);
              c->server->goaway_sent = true;
            }
          }
          if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) &&
              (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            c->echo[id].eof = true;
            nghttp2_session_resume_data(s, id);
          }
          return 0;
        });
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        cbs,
        [](nghttp2_session* s, uint8_t, int32_t id, const uint8_t* data, size_t len, void* ud) {
          auto* c = static_cast<Conn*>(ud);
          if (c->server->mode_ == Mode::kDropAtData) {
            c->server->dropped++;
            return static_cast<int>(NGHTTP2_ERR_CALLBACK_FAILURE);  // the session ends
          }
          c->echo[id].buf.append(reinterpret_cast<const char*>(data), len);
          if (!c->echo[id].answered) {
            c->server->answered_after_data++;
            answer(s, c, id);
          }
          nghttp2_session_resume_data(s, id);
          return 0;
        });
    nghttp2_session_server_new(&c.s, cbs, &c);
    nghttp2_session_callbacks_del(cbs);
    std::unique_ptr<nghttp2_session, SessionFree> owned(c.s);
    nghttp2_submit_settings(c.s, NGHTTP2_FLAG_NONE, nullptr, 0);
    runSession(c.s, ssl);
  }

  int listener_;
  tls::Contexts& tls_;
  std::shared_ptr<const WorkloadCredential> cred_;
  int goaway_after_;
  Mode mode_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<std::thread> conns_;
};

// A hand-written peer of pod A on B's 15008: TLS with A's certificate,
// then `talk` with the session in its own thread, the mesh pumped until it
// is done (within `limit`). False: no handshake, or not done in time.
inline bool rawPeer(Mesh& m, const std::function<void(SSL*)>& talk,
                    std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  UniqueFd raw = connectTo(localOf(m.hbone_listener.get()), ip(kAddrA));
  setTimeouts(raw.get(), std::chrono::seconds(10));
  std::atomic<bool> handshake{false};
  Worker peer([&] {
    Ssl ssl = tlsOn(*m.tls, m.creds.credential(kIdA), raw.get(), false);
    if (!ssl) return;
    handshake = true;
    talk(ssl.get());
  });
  return m.pumpUntil([&] { return peer.done.load(); }, limit) && handshake;
}

// A client session with these callbacks (either may be null) and `ud` as
// their user data, its SETTINGS queued.
inline std::unique_ptr<nghttp2_session, SessionFree> clientSession(
    void* ud, nghttp2_on_frame_recv_callback on_frame, nghttp2_on_header_callback on_header) {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  if (on_frame) nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame);
  if (on_header) nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session* raw = nullptr;
  nghttp2_session_client_new(&raw, cbs, ud);
  nghttp2_session_callbacks_del(cbs);
  std::unique_ptr<nghttp2_session, SessionFree> s(raw);
  nghttp2_submit_settings(raw, NGHTTP2_FLAG_NONE, nullptr, 0);
  return s;
}

// An HTTP/2 client that sends requests and notes what comes back.
struct RawClient {
  std::string status;
  bool goaway = false;
  uint32_t goaway_error = 0;

  // One request.
  void run(SSL* ssl, const char* method, const std::string& authority) {
    auto s = session();
    std::string m = method, scheme = "https", path = "/";
    nghttp2_nv hdrs[] = {nv(":method", m), nv(":scheme", scheme), nv(":path", path),
                         nv(":authority", authority)};
    nghttp2_submit_request(s.get(), nullptr, hdrs, 4, nullptr, nullptr);
    runSession(s.get(), ssl);
  }

  // HTTP/2 rapid reset (CVE-2023-44487): CONNECTs each cancelled at once,
  // `batches` times 50, then reads until the server is done with it.
  void rapidReset(SSL* ssl, const std::string& authority, int batches) {
    auto s = session();
    std::string m = "CONNECT";
    nghttp2_nv hdrs[] = {nv(":method", m), nv(":authority", authority)};
    auto flush = [&] {
      const uint8_t* data = nullptr;
      for (ssize_t n; (n = nghttp2_session_mem_send(s.get(), &data)) > 0;)
        if (SSL_write(ssl, data, static_cast<int>(n)) <= 0) return false;
      return true;
    };
    for (int b = 0; b < batches; ++b) {
      std::vector<int32_t> ids;
      for (int i = 0; i < 50; ++i)
        ids.push_back(nghttp2_submit_request(s.get(), nullptr, hdrs, 2, nullptr, nullptr));
      if (!flush()) return;
      for (int32_t id : ids)
        nghttp2_submit_rst_stream(s.get(), NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
      if (!flush()) return;
    }
    runSession(s.get(), ssl);
  }

  // A CONNECT; once its 200 is in, `frames` DATA frames of `frame_bytes`
  // ('d'), each in a TLS record of its own, all written in one send (one
  // TCP segment below the MSS: the server reads them in one receive). Then
  // waits (at most 5 s) for `done`.
  void corkedData(SSL* ssl, const std::string& authority, size_t frames, size_t frame_bytes,
                  const std::function<bool()>& done) {
    auto s = session();
    std::string m = "CONNECT";
    nghttp2_nv hdrs[] = {nv(":method", m), nv(":authority", authority)};
    left_ = frames;
    frame_bytes_ = frame_bytes;
    nghttp2_data_provider prd{};
    prd.source.ptr = this;
    prd.read_callback = [](nghttp2_session*, int32_t, uint8_t* buf, size_t len, uint32_t*,
                           nghttp2_data_source* source, void*) -> ssize_t {
      auto* self = static_cast<RawClient*>(source->ptr);
      if (self->status != "200" || self->left_ == 0) return NGHTTP2_ERR_DEFERRED;
      self->left_--;
      size_t n = std::min(len, self->frame_bytes_);
      std::memset(buf, 'd', n);
      return static_cast<ssize_t>(n);
    };
    int32_t id = nghttp2_submit_request(s.get(), nullptr, hdrs, 2, &prd, nullptr);
    auto flush = [&] {
      const uint8_t* data = nullptr;
      for (ssize_t n; (n = nghttp2_session_mem_send(s.get(), &data)) > 0;)
        if (SSL_write(ssl, data, static_cast<int>(n)) <= 0) return false;
      return true;
    };
    uint8_t buf[16384];
    if (!flush()) return;
    while (status.empty()) {
      int n = SSL_read(ssl, buf, sizeof(buf));
      if (n <= 0 || nghttp2_session_mem_recv(s.get(), buf, static_cast<size_t>(n)) < 0) return;
      if (!flush()) return;
    }
    if (status != "200") return;
    // The records go to a memory BIO, then to the socket in one send.
    int fd = SSL_get_fd(ssl);
    BIO* sock = SSL_get_wbio(ssl);
    BIO* mem = BIO_new(BIO_s_mem());
    if (!mem || BIO_up_ref(sock) != 1) return;
    SSL_set0_wbio(ssl, mem);  // drops one reference of sock (ours keeps it)
    bool written = true;
    for (size_t i = 0; i < frames && written; ++i) {  // one frame per mem_send, a record each
      nghttp2_session_resume_data(s.get(), id);
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(s.get(), &data);
      written = n > 0 && SSL_write(ssl, data, static_cast<int>(n)) > 0;
    }
    char* records = nullptr;
    long len = BIO_get_mem_data(mem, &records);
    written = written && ::send(fd, records, static_cast<size_t>(len), 0) == len;
    SSL_set0_wbio(ssl, sock);  // ours goes back to the SSL; mem is freed
    if (!written) return;
    for (int i = 0; i < 500 && !done(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

 private:
  size_t left_ = 0, frame_bytes_ = 0;  // corkedData's frames
  static nghttp2_nv nv(const char* n, const std::string& v) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n)),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), strlen(n), v.size(),
                      NGHTTP2_NV_FLAG_NONE};
  }
  // A client session whose callbacks note GOAWAY and :status; SETTINGS queued.
  std::unique_ptr<nghttp2_session, SessionFree> session() {
    return clientSession(
        this,
        [](nghttp2_session*, const nghttp2_frame* f, void* ud) {
          auto* self = static_cast<RawClient*>(ud);
          if (f->hd.type == NGHTTP2_GOAWAY) {
            self->goaway = true;
            self->goaway_error = f->goaway.error_code;
          }
          return 0;
        },
        [](nghttp2_session*, const nghttp2_frame*, const uint8_t* name, size_t namelen,
           const uint8_t* value, size_t valuelen, uint8_t, void* ud) {
          if (std::string_view(reinterpret_cast<const char*>(name), namelen) == ":status")
            static_cast<RawClient*>(ud)->status.assign(reinterpret_cast<const char*>(value),
                                                       valuelen);
          return 0;
        });
  }
};

}  // namespace hbone_rig
