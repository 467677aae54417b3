#include "agent/admin/http_connection.h"

#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>
#include <climits>
#include <nlohmann/json.hpp>

#include "sluice/common/fmt.h"
#include "sluice/common/json_text.h"

namespace sluice::agent::admin {

namespace {

constexpr size_t kMaxInput = 64 * 1024;  // read, not yet parsed
constexpr auto kIdle = std::chrono::seconds(10);
constexpr auto kLinger = std::chrono::seconds(1);  // after our FIN, for the client's

const char* reasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Content Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
  }
  return "Unknown";
}

Connection& self(http_parser* p) { return *static_cast<Connection*>(p->data); }

}  // namespace

// The parser's callbacks: the request line and the two headers the server
// needs; everything else is parsed (so a malformed request is refused) and
// dropped.
int Connection::onUrl(http_parser* p, const char* at, size_t n) {
  Connection& c = self(p);
  c.head_bytes_ += n;
  if (c.head_bytes_ > kMaxHead) return -1;
  c.building_.target.append(at, n);
  return 0;
}

int Connection::onHeaderField(http_parser* p, const char* at, size_t n) {
  Connection& c = self(p);
  c.head_bytes_ += n + 4;  // ": " and CRLF
  if (c.head_bytes_ > kMaxHead) return -1;
  if (c.last_was_value_) c.header_field_.clear();
  c.last_was_value_ = false;
  if (c.header_field_.size() < 64) c.header_field_.append(at, std::min<size_t>(n, 64));
  return 0;
}

int Connection::onHeaderValue(http_parser* p, const char* /*at*/, size_t n) {
  Connection& c = self(p);
  c.head_bytes_ += n;
  if (c.head_bytes_ > kMaxHead) return -1;
  c.last_was_value_ = true;
  if (strcasecmp(c.header_field_.c_str(), "origin") == 0) c.building_.has_origin = true;
  return 0;
}

int Connection::onHeadersComplete(http_parser* p) {
  Connection& c = self(p);
  // No request here carries a body (parameters are in the query string).
  if ((p->flags & F_CHUNKED) || (p->content_length > 0 && p->content_length != ULLONG_MAX)) {
    c.body_refused_ = true;
    return -1;
  }
  c.building_.method = static_cast<http_method>(p->method);
  c.building_.http10 = p->http_major == 1 && p->http_minor == 0;
  c.building_.keep_alive = http_should_keep_alive(p) != 0 && !p->upgrade;
  return 0;
}

int Connection::onMessageComplete(http_parser* p) {
  Connection& c = self(p);
  c.ready_ = std::move(c.building_);
  c.building_ = {};
  c.header_field_.clear();
  c.last_was_value_ = false;
  c.head_bytes_ = 0;
  http_parser_pause(p, 1);  // one request answered at a time
  return 0;
}

Connection::Connection(UniqueFd fd) : fd_(std::move(fd)) {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
}

bool Connection::readSome() {
  std::array<char, 16 * 1024> buf;
  while (true) {
    // Input while streaming or after our answer's end is not parsed: read
    // it only to see the client go.
    const bool discard = streaming_ || close_after_;
    size_t room = discard ? buf.size() : std::min(buf.size(), kMaxInput - in_.size());
    if (room == 0) return true;
    ssize_t n = ::recv(fd_.get(), buf.data(), room, MSG_DONTWAIT);
    if (n > 0) {
      if (!discard) in_.append(buf.data(), size_t(n));
      continue;
    }
    if (n == 0) {
      eof_ = true;  // a half-closed client still gets its answers
      return true;
    }
    return errno == EAGAIN || errno == EINTR;
  }
}

std::optional<Request> Connection::next() {
  if (answering_ || close_after_ || pending_ >= kMaxPending) return std::nullopt;
  if (!ready_ && (!in_.empty() || eof_)) {
    static const http_parser_settings settings = [] {
      http_parser_settings s{};
      s.on_url = onUrl;
      s.on_header_field = onHeaderField;
      s.on_header_value = onHeaderValue;
      s.on_headers_complete = onHeadersComplete;
      s.on_message_complete = onMessageComplete;
      return s;
    }();
    if (HTTP_PARSER_ERRNO(&parser_) == HPE_PAUSED) http_parser_pause(&parser_, 0);
    size_t n = http_parser_execute(&parser_, &settings, in_.data(), in_.size());
    in_.erase(0, n);
    http_errno err = HTTP_PARSER_ERRNO(&parser_);
    if (body_refused_) {
      refuse(413, "a request body is not accepted here (parameters go in the query string)");
      return std::nullopt;
    }
    if (head_bytes_ > kMaxHead) {
      refuse(400, fmt::format("request head over {} bytes", kMaxHead));
      return std::nullopt;
    }
    if (err != HPE_OK && err != HPE_PAUSED) {
      refuse(400, fmt::format("malformed HTTP request: {}", http_errno_description(err)));
      return std::nullopt;
    }
  }
  if (!ready_) {
    if (eof_) close_after_ = true;  // nothing more will come
    return std::nullopt;
  }
  answering_ = std::move(ready_);
  ready_.reset();
  last_progress_ = Clock::now();
  return answering_;
}

std::string Connection::head(int status, std::string_view content_type, size_t length,
                             std::string_view extra_headers, bool open_ended) {
  const Request& r = *answering_;
  std::string h = fmt::format("HTTP/1.{} {} {}\r\nContent-Type: {}\r\n", r.http10 ? 0 : 1, status,
                              reasonPhrase(status), content_type);
  if (!open_ended)
    h += fmt::format("Content-Length: {}\r\n", length);
  else if (!r.http10)
    h += "Transfer-Encoding: chunked\r\n";
  // A stream's connection closes at its end: what the client sent meanwhile
  // was not read as requests.
  if (!r.keep_alive || open_ended)
    h += "Connection: close\r\n";
  else if (r.http10)
    h += "Connection: keep-alive\r\n";
  h += extra_headers;
  h += "\r\n";
  return h;
}

void Connection::respond(int status, std::string_view content_type, std::string body,
                         std::string_view extra_headers) {
  if (!answering_) return;
  std::string bytes = head(status, content_type, body.size(), extra_headers, false);
  if (answering_->method != HTTP_HEAD) bytes += body;
  queue(std::move(bytes));
  if (!answering_->keep_alive) close_after_ = true;
  answering_.reset();
}

void Connection::respond(int status, std::string_view content_type,
                         std::shared_ptr<const std::string> body, std::string_view extra_headers) {
  if (!answering_) return;
  queue(head(status, content_type, body->size(), extra_headers, false));
  if (answering_->method != HTTP_HEAD && !body->empty()) {
    pending_ += body->size();
    out_.push_back({.owned = {}, .shared = std::move(body), .offset = 0});
  }
  if (!answering_->keep_alive) close_after_ = true;
  answering_.reset();
}

void Connection::startStream(std::string_view content_type, std::string_view extra_headers) {
  if (!answering_) return;
  queue(head(200, content_type, 0, extra_headers, true));
  streaming_ = true;
  close_after_ = true;  // once it ends
  if (answering_->method == HTTP_HEAD) endStream();
}

void Connection::streamData(std::string data) {
  if (!streaming_ || data.empty() || answering_->method == HTTP_HEAD) return;
  if (answering_->http10)
    queue(std::move(data));
  else
    queue(fmt::format("{:x}\r\n{}\r\n", data.size(), data));
}

void Connection::endStream() {
  if (!streaming_) return;
  streaming_ = false;
  if (!answering_->http10 && answering_->method != HTTP_HEAD) queue("0\r\n\r\n");
  answering_.reset();
}

void Connection::refuse(int status, std::string_view why) {
  // The request could not be read: answer as HTTP/1.1, then close.
  answering_ = Request{};
  respond(status, "application/json", jsonText(nlohmann::json{{"error", why}}) + "\n");
  close_after_ = true;
  in_.clear();
}

void Connection::queue(std::string bytes) {
  if (bytes.empty()) return;
  pending_ += bytes.size();
  out_.push_back({.owned = std::move(bytes), .shared = nullptr, .offset = 0});
}

bool Connection::flush() {
  while (pending_ > 0) {
    std::array<iovec, 16> iov;
    size_t count = 0;
    for (auto it = out_.begin(); it != out_.end() && count < iov.size(); ++it, ++count) {
      std::string_view rest = it->rest();
      iov[count] = {const_cast<char*>(rest.data()), rest.size()};
    }
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = count;
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    last_progress_ = Clock::now();
    pending_ -= size_t(n);
    for (size_t left = size_t(n); left > 0;) {
      size_t here = out_.front().rest().size();
      if (left < here) {
        out_.front().offset += left;
        break;
      }
      left -= here;
      out_.pop_front();
    }
  }
  if (close_after_ && !streaming_ && !shut_) {
    // All written: our FIN, then the client's (closing with its input
    // unread would reset the connection and could lose the answer).
    ::shutdown(fd_.get(), SHUT_WR);
    shut_ = true;
    last_progress_ = Clock::now();
  }
  return true;
}

bool Connection::wantsRead() const {
  if (eof_) return false;
  if (streaming_ || close_after_) return true;
  return pending_ < kMaxPending && in_.size() < kMaxInput;
}

bool Connection::expired(Clock::time_point now) const {
  if (shut_) return now - last_progress_ > kLinger;
  if (streaming_ && pending_ == 0) return false;
  return now - last_progress_ > kIdle;
}

}  // namespace sluice::agent::admin
