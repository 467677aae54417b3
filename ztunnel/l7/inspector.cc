#include "ztunnel/l7/inspector.h"

#include "ztunnel/l7/http1.h"
#include "ztunnel/l7/http2.h"

namespace sluice::ztunnel::l7 {

namespace {

// The 9-byte header of a SETTINGS frame on stream 0: what an HTTP/2 server
// may send before it has read anything.
bool looksLikeH2ServerPreface(std::string_view s) {
  if (s.size() < 9) return false;
  auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  return b(3) == 0x04 && (b(5) | b(6) | b(7) | b(8)) == 0;
}

}  // namespace

Inspector::Inspector(RequestSink& sink, std::chrono::milliseconds detect_timeout)
    : sink_(sink), deadline_(Clock::now() + detect_timeout) {}

Inspector::~Inspector() = default;

void Inspector::attach(relay::Pipe& client, relay::Pipe& server) {
  client_pipe_ = &client;
  client.setTap(this);
  server.setTap(this);
}

void Inspector::stop() {
  state_ = State::kDone;
  observer_.reset();
  head_ = std::string();
  early_server_ = std::string();
}

void Inspector::finish() {
  if (observer_ && state_ == State::kObserving) observer_->finish();
  stop();
}

bool Inspector::start(Detected d, std::string_view last) {
  if (d == Detected::kHttp1) {
    protocol_ = AppProtocol::kHttp1;
    observer_ = std::make_unique<Http1Observer>(sink_);
  } else {
    protocol_ = AppProtocol::kHttp2;
    observer_ = std::make_unique<Http2Observer>(sink_);
  }
  state_ = State::kObserving;
  std::string head = std::move(head_), early = std::move(early_server_);
  bool ok = (head.empty() || observer_->client(head)) && observer_->client(last) &&
            (early.empty() || observer_->server(early));
  if (!ok) stop();
  return ok;
}

bool Inspector::clientBytes(std::string_view bytes) {
  if (state_ == State::kObserving) {
    if (!observer_->client(bytes)) stop();
    return state_ != State::kDone;
  }
  if (state_ == State::kDone || bytes.empty()) return state_ != State::kDone;
  if (Clock::now() > deadline_) {
    stop();
    return false;
  }
  // Usually the first read holds the whole request line: decided without a copy.
  Detected d;
  if (head_.empty()) {
    d = detect(bytes);
  } else {
    head_.append(bytes.substr(0, kMaxDetectBytes));
    d = detect(head_);
  }
  switch (d) {
    case Detected::kNeedMore:
      if (head_.empty()) head_.assign(bytes);
      return true;
    case Detected::kOpaque:
      stop();
      return false;
    default:
      if (!head_.empty()) {
        // head_ already holds `bytes` (detection saw them together).
        head_.resize(head_.size() - std::min(bytes.size(), kMaxDetectBytes));
      }
      return start(d, bytes);
  }
}

bool Inspector::serverBytes(std::string_view bytes) {
  if (state_ == State::kObserving) {
    if (!observer_->server(bytes)) {
      // Not followed any further (not HTTP, or past a limit of ours, such
      // as http_parser's 80 KiB of headers): what was answered counts.
      observer_->finish(/*answered_only=*/true);
      stop();
    }
    return state_ != State::kDone;
  }
  if (state_ == State::kDone) return false;
  // The server spoke before the client's request was recognised: a
  // server-first protocol, unless it is an HTTP/2 server's SETTINGS.
  if (early_server_.size() + bytes.size() <= kMaxEarlyServerBytes &&
      looksLikeH2ServerPreface(early_server_.empty() ? bytes : std::string_view(early_server_))) {
    early_server_.append(bytes);
    return true;
  }
  stop();
  return false;
}

void Inspector::serverEnd() {
  if (state_ == State::kObserving && !observer_->serverEnd()) finish();
}

bool Inspector::tapped(const relay::Pipe& p, const char* data, size_t n) {
  return &p == client_pipe_ ? clientBytes({data, n}) : serverBytes({data, n});
}

void Inspector::tapEnded(const relay::Pipe& p) {
  if (&p != client_pipe_) serverEnd();
}

}  // namespace sluice::ztunnel::l7
