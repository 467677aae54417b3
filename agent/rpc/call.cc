#include "agent/rpc/call.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>

#include "agent/rpc/framing.h"
#include "sluice/common/addr.h"
#include "sluice/common/fmt.h"
#include "sluice/common/x509.h"

namespace sluice::agent::rpc {

namespace {

using Clock = std::chrono::steady_clock;

template <typename T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, Deleter<SSL_CTX, SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, Deleter<SSL, SSL_free>>;
using SessionPtr = std::unique_ptr<nghttp2_session, Deleter<nghttp2_session, nghttp2_session_del>>;

// "host:port" or "[v6]:port".
bool splitTarget(const std::string& target, std::string& host, std::string& port) {
  auto hp = splitHostPort(target);
  if (!hp) return false;
  host = hp->host;
  port = std::to_string(hp->port);
  return true;
}

bool isIpLiteral(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// What gRPC makes of a non-200 HTTP status (gRPC's HTTP-to-gRPC mapping).
int codeOfHttpStatus(int status) {
  switch (status) {
    case 400:
      return kInternal;
    case 401:
      return kUnauthenticated;
    case 403:
      return kPermissionDenied;
    case 404:
      return kUnimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return kUnavailable;
    default:
      return kUnknown;
  }
}

// One call on one connection. Every member is touched by the calling thread only.
class Call {
 public:
  Call(const CallOptions& o, const std::function<bool(const std::string&)>& on_message,
       const Canceller* cancel)
      : o_(o), on_message_(on_message), cancel_(cancel), start_(Clock::now()) {}

  Status run(const std::string& request) {
    if (!splitTarget(o_.target, host_, port_))
      return {kUnavailable, fmt::format("control plane address '{}' is not host:port", o_.target)};
    if (auto s = connectTcp(); !s.ok()) return s;
    if (auto s = handshake(); !s.ok()) return s;
    if (auto s = startStream(request); !s.ok()) return s;
    Status s = pump();
    shutdown();
    return s;
  }

 private:
  // Milliseconds until the nearest of the deadline and `limit` (from now); -1: none.
  int pollTimeout(Clock::time_point limit) const {
    Clock::time_point until = limit;
    if (o_.deadline.count() > 0) until = std::min(until, start_ + o_.deadline);
    if (until == Clock::time_point::max()) return -1;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    return static_cast<int>(std::clamp<long long>(ms + 1, 0, 60'000));
  }
  bool pastDeadline() const {
    return o_.deadline.count() > 0 && Clock::now() >= start_ + o_.deadline;
  }
  Status expired(const char* during) const {
    return {kDeadlineExceeded,
            fmt::format("deadline of {} ms exceeded {}", o_.deadline.count(), during)};
  }
  // Waits until fd_ is ready for `events` (or the cancel token fires). Returns
  // 1 ready, 0 timeout, -1 cancelled.
  int wait(short events, Clock::time_point limit) const {
    pollfd p[2] = {{fd_.get(), events, 0}, {cancel_ ? cancel_->fd() : -1, POLLIN, 0}};
    int n;
    do n = ::poll(p, 2, pollTimeout(limit));  // a signal is not a timeout
    while (n < 0 && errno == EINTR);
    if (n < 0) return 0;
    if (p[1].revents) return -1;
    return p[0].revents ? 1 : 0;
  }

  Status connectTcp() {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int rc = getaddrinfo(host_.c_str(), port_.c_str(), &hints, &res); rc != 0)
      return {kUnavailable, fmt::format("resolve {}: {}", host_, gai_strerror(rc))};
    std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, freeaddrinfo);
    std::string last = "no address";
    auto limit = Clock::now() + o_.connect_timeout;
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
      fd_.reset(::socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!fd_) {
        last = std::strerror(errno);
        continue;
      }
      int one = 1;
      setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      if (::connect(fd_.get(), ai->ai_addr, ai->ai_addrlen) == 0) return {};
      if (errno != EINPROGRESS) {
        last = std::strerror(errno);
        continue;
      }
      int w = wait(POLLOUT, limit);
      if (w < 0) return {kCancelled, "cancelled"};
      if (w == 0) {
        if (pastDeadline()) return expired("connecting");
        last = fmt::format("no answer within {} ms", o_.connect_timeout.count());
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) return {};
      last = std::strerror(err);
    }
    fd_.reset();
    return {kUnavailable, fmt::format("connect to {}: {}", o_.target, last)};
  }

  Status handshake() {
    ctx_.reset(SSL_CTX_new(TLS_client_method()));
    if (!ctx_) return {kInternal, "TLS: " + x509::opensslError()};
    SSL_CTX_set_min_proto_version(ctx_.get(), TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_mode(ctx_.get(),
                     SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    static const unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(ctx_.get(), kAlpn, sizeof(kAlpn));
    auto anchors = x509::parseChain(o_.trust_anchor_pem);
    if (!anchors) return {kUnavailable, "trust anchor bundle: " + anchors.error().describe()};
    for (auto& anchor : *anchors)
      X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx_.get()), anchor.get());
    ssl_.reset(SSL_new(ctx_.get()));
    SSL_set_fd(ssl_.get(), fd_.get());
    // The control plane's certificate must name the address we dialled.
    if (isIpLiteral(host_)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), host_.c_str());
    } else {
      SSL_set1_host(ssl_.get(), host_.c_str());
      SSL_set_tlsext_host_name(ssl_.get(), host_.c_str());
    }
    auto limit = Clock::now() + o_.connect_timeout;
    while (true) {
      int rc = SSL_connect(ssl_.get());
      if (rc == 1) break;
      int err = SSL_get_error(ssl_.get(), rc);
      if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        long verify = SSL_get_verify_result(ssl_.get());
        std::string why = verify != X509_V_OK ? fmt::format("certificate verification failed: {}",
                                                            X509_verify_cert_error_string(verify))
                                              : x509::opensslError();
        return {kUnavailable, fmt::format("TLS handshake with {}: {}", o_.target, why)};
      }
      int w = wait(err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, limit);
      if (w < 0) return {kCancelled, "cancelled"};
      if (w == 0) {
        if (pastDeadline()) return expired("in the TLS handshake");
        return {kUnavailable, fmt::format("TLS handshake with {}: no answer within {} ms",
                                          o_.target, o_.connect_timeout.count())};
      }
    }
    const unsigned char* proto = nullptr;
    unsigned int proto_len = 0;
    SSL_get0_alpn_selected(ssl_.get(), &proto, &proto_len);
    if (proto_len != 2 || std::memcmp(proto, "h2", 2) != 0)
      return {kUnavailable, fmt::format("{} did not negotiate HTTP/2 (ALPN h2)", o_.target)};
    return {};
  }

  static nghttp2_nv header(const std::string& name, const std::string& value) {
    return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
            reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
            NGHTTP2_NV_FLAG_NONE};
  }

  Status startStream(const std::string& request) {
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, &Call::onHeader);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &Call::onData);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, &Call::onStreamClose);
    nghttp2_session* s = nullptr;
    int rc = nghttp2_session_client_new(&s, cb, this);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) return {kInternal, "HTTP/2 session: " + std::string(nghttp2_strerror(rc))};
    session_.reset(s);
    // Large windows: a snapshot of a big cluster arrives in one message.
    nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                         {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 4u << 20}};
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, settings, 2);
    nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0, 16 << 20);

    body_.resize(5);
    body_[0] = 0;  // not compressed
    uint32_t len = htonl(static_cast<uint32_t>(request.size()));
    std::memcpy(&body_[1], &len, 4);
    body_ += request;

    std::vector<std::pair<std::string, std::string>> hs = {{":method", "POST"},
                                                           {":scheme", "https"},
                                                           {":path", o_.path},
                                                           {":authority", o_.target},
                                                           {"content-type", "application/grpc"},
                                                           {"te", "trailers"},
                                                           {"user-agent", "sluice-agent"}};
    if (o_.deadline.count() > 0)
      hs.emplace_back("grpc-timeout", fmt::format("{}m", o_.deadline.count()));
    for (const auto& m : o_.metadata) hs.push_back(m);
    std::vector<nghttp2_nv> nva;
    for (const auto& [k, v] : hs) nva.push_back(header(k, v));
    nghttp2_data_provider provider{};
    provider.read_callback = &Call::readBody;
    stream_id_ = nghttp2_submit_request(s, nullptr, nva.data(), nva.size(), &provider, this);
    if (stream_id_ < 0)
      return {kInternal, "HTTP/2 request: " + std::string(nghttp2_strerror(stream_id_))};
    return {};
  }

  // Moves bytes between the socket and the session until the stream closes.
  Status pump() {
    auto last_rx = Clock::now();
    char buf[16384];
    while (!closed_) {
      // Hand nghttp2's output to TLS.
      while (true) {
        if (out_.empty()) {
          const uint8_t* data = nullptr;
          ssize_t n = nghttp2_session_mem_send(session_.get(), &data);
          if (n < 0)
            return {kInternal, "HTTP/2: " + std::string(nghttp2_strerror(static_cast<int>(n)))};
          if (n == 0) break;
          out_.assign(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
        }
        int w = SSL_write(ssl_.get(), out_.data(), static_cast<int>(out_.size()));
        if (w > 0) {
          out_.erase(0, static_cast<size_t>(w));
          continue;
        }
        int err = SSL_get_error(ssl_.get(), w);
        if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) break;
        return {kUnavailable, fmt::format("connection to {} lost while sending", o_.target)};
      }
      if (!failure_.ok()) return failure_;
      if (closed_) break;
      // Read whatever TLS has, then wait for more.
      bool got_any = false;
      while (true) {
        int n = SSL_read(ssl_.get(), buf, sizeof(buf));
        if (n > 0) {
          got_any = true;
          ssize_t rc = nghttp2_session_mem_recv(session_.get(), reinterpret_cast<uint8_t*>(buf),
                                                static_cast<size_t>(n));
          if (rc < 0)
            return {kInternal, fmt::format("HTTP/2 from {}: {}", o_.target,
                                           nghttp2_strerror(static_cast<int>(rc)))};
          if (!failure_.ok()) return failure_;
          continue;
        }
        int err = SSL_get_error(ssl_.get(), n);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
        if (closed_) break;
        return {kUnavailable, fmt::format("connection to {} closed", o_.target)};
      }
      if (got_any) {
        last_rx = Clock::now();
        continue;  // the session may have something to answer (WINDOW_UPDATE, PING ack)
      }
      if (closed_) break;
      if (nghttp2_session_want_read(session_.get()) == 0 &&
          nghttp2_session_want_write(session_.get()) == 0 && out_.empty())
        return {kUnavailable, fmt::format("{} ended the HTTP/2 session", o_.target)};
      Clock::time_point idle_limit =
          o_.idle_timeout.count() > 0 ? last_rx + o_.idle_timeout : Clock::time_point::max();
      int w = wait(static_cast<short>(POLLIN | (out_.empty() ? 0 : POLLOUT)), idle_limit);
      if (w < 0) {
        nghttp2_submit_rst_stream(session_.get(), NGHTTP2_FLAG_NONE, stream_id_, NGHTTP2_CANCEL);
        return {kCancelled, "cancelled"};
      }
      if (w == 0) {
        if (pastDeadline()) return expired("waiting for the answer");
        if (Clock::now() >= idle_limit)
          return {kUnavailable, fmt::format("nothing heard from {} for {} s (not even keepalive "
                                            "pings); presuming it gone",
                                            o_.target, o_.idle_timeout.count() / 1000)};
      }
    }
    return finalStatus();
  }

  Status finalStatus() {
    if (!failure_.ok()) return failure_;
    if (http_status_ != 0 && http_status_ != 200)
      return {codeOfHttpStatus(http_status_),
              fmt::format("{} answered HTTP status {} to {}", o_.target, http_status_, o_.path)};
    if (grpc_status_.empty()) {
      if (reset_code_ != 0)
        return {reset_code_ == NGHTTP2_REFUSED_STREAM ? kUnavailable : kInternal,
                fmt::format("{} reset the stream ({})", o_.target,
                            nghttp2_http2_strerror(reset_code_))};
      return {kInternal, fmt::format("{} ended {} without a grpc-status", o_.target, o_.path)};
    }
    return trailerStatus(grpc_status_, grpc_message_, reader_.midMessage());
  }

  void shutdown() {
    if (!session_) return;
    nghttp2_session_terminate_session(session_.get(), NGHTTP2_NO_ERROR);
    const uint8_t* data = nullptr;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(session_.get(), &data)) > 0)
      if (SSL_write(ssl_.get(), data, static_cast<int>(n)) <= 0) break;
    SSL_shutdown(ssl_.get());
  }

  static ssize_t readBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source*, void* user) {
    auto* self = static_cast<Call*>(user);
    size_t n = std::min(length, self->body_.size() - self->body_off_);
    std::memcpy(buf, self->body_.data() + self->body_off_, n);
    self->body_off_ += n;
    if (self->body_off_ == self->body_.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }

  static int onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* user) {
    auto* self = static_cast<Call*>(user);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->hd.stream_id != self->stream_id_) return 0;
    std::string_view n(reinterpret_cast<const char*>(name), namelen);
    std::string v(reinterpret_cast<const char*>(value), valuelen);
    if (n == ":status") {
      self->http_status_ = std::atoi(v.c_str());
    } else if (n == "grpc-status") {
      self->grpc_status_ = v;
    } else if (n == "grpc-message") {
      self->grpc_message_ = v;
    } else if (n == "grpc-encoding" && v != "identity") {
      self->failure_ = {kInternal, "the control plane compressed its answer (" + v +
                                       ") though no compression was offered"};
    }
    return 0;
  }

  static int onData(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                    size_t len, void* user) {
    auto* self = static_cast<Call*>(user);
    if (stream_id != self->stream_id_ || !self->failure_.ok()) return 0;
    self->failure_ = self->reader_.feed(std::string_view(reinterpret_cast<const char*>(data), len),
                                        self->on_message_);
    if (!self->failure_.ok())
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
    return 0;
  }

  static int onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* user) {
    auto* self = static_cast<Call*>(user);
    if (stream_id != self->stream_id_) return 0;
    self->closed_ = true;
    self->reset_code_ = error_code;
    return 0;
  }

  const CallOptions& o_;
  const std::function<bool(const std::string&)>& on_message_;
  const Canceller* cancel_;
  Clock::time_point start_;
  std::string host_, port_;
  UniqueFd fd_;
  SslCtxPtr ctx_;
  SslPtr ssl_;
  SessionPtr session_;
  int32_t stream_id_ = -1;
  std::string body_;
  size_t body_off_ = 0;
  std::string out_;                             // bytes nghttp2 produced that TLS has not taken yet
  MessageReader reader_{o_.max_message_bytes};  // response DATA into messages
  int http_status_ = 0;
  std::string grpc_status_, grpc_message_;
  uint32_t reset_code_ = 0;
  bool closed_ = false;
  Status failure_;
};

// OpenSSL writes to the socket with write(2): a peer that has gone away
// raises SIGPIPE in this thread. Blocked for the call and drained after it,
// so the caller never depends on the process ignoring SIGPIPE.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeBlock() {
    if (sigismember(&old_, SIGPIPE)) return;  // blocked before us: not ours to drain
    timespec zero{0, 0};
    while (sigtimedwait(&pipe_, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t pipe_, old_;
};

}  // namespace

Canceller::Canceller() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

void Canceller::cancel() const {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(fd_.get(), &one, sizeof(one));
}

Status call(const CallOptions& options, const std::string& request,
            const std::function<bool(const std::string&)>& on_message, const Canceller* cancel) {
  SigpipeBlock no_sigpipe;
  return Call(options, on_message, cancel).run(request);
}

}  // namespace sluice::agent::rpc
