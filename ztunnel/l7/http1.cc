#include "ztunnel/l7/http1.h"

#include <strings.h>

namespace sluice::ztunnel::l7 {

Http1Observer::Http1Observer(RequestSink& sink) : sink_(sink) {
  http_parser_init(&req_, HTTP_REQUEST);
  http_parser_init(&resp_, HTTP_RESPONSE);
  req_.data = this;
  resp_.data = this;
}

int Http1Observer::onRequestBegin(http_parser* p) {
  Http1Observer& o = self(p);
  if (o.pending_.size() >= kMaxPipelined) {
    o.requests_stopped_ = true;
    return -1;
  }
  o.pending_.emplace_back().begin();
  o.field_.clear();
  o.in_host_ = false;
  o.last_was_value_ = false;
  return 0;
}

// The request whose headers are being read; null for trailers (after a
// chunked body), whose exchange may already be answered and gone.
Exchange* Http1Observer::parsing() {
  return pending_.empty() || pending_.back().sent ? nullptr : &pending_.back();
}

int Http1Observer::onUrl(http_parser* p, const char* at, size_t n) {
  if (Exchange* e = self(p).parsing()) Exchange::append(e->path, {at, n});
  return 0;
}

int Http1Observer::onRequestHeaderField(http_parser* p, const char* at, size_t n) {
  Http1Observer& o = self(p);
  if (o.last_was_value_) o.field_.clear();
  o.last_was_value_ = false;
  if (o.field_.size() < 16) o.field_.append(at, std::min<size_t>(n, 16 - o.field_.size()));
  return 0;
}

int Http1Observer::onRequestHeaderValue(http_parser* p, const char* at, size_t n) {
  Http1Observer& o = self(p);
  if (!o.last_was_value_) o.in_host_ = strcasecmp(o.field_.c_str(), "host") == 0;
  o.last_was_value_ = true;
  Exchange* e = o.parsing();
  if (e && o.in_host_) Exchange::append(e->authority, {at, n});
  return 0;
}

int Http1Observer::onRequestHeaders(http_parser* p) {
  if (p->method == HTTP_CONNECT) return -1;  // a tunnel: what follows is not HTTP
  Exchange* ep = self(p).parsing();
  if (!ep) return -1;
  Exchange& e = *ep;
  e.method = http_method_str(static_cast<http_method>(p->method));
  e.head = p->method == HTTP_HEAD;
  e.sent = true;
  return 0;
}

int Http1Observer::onRequestBody(http_parser* p, const char*, size_t n) {
  // Empty when the server answered before the body ended (413): not counted.
  if (!self(p).pending_.empty()) self(p).pending_.back().request_bytes += n;
  return 0;
}

int Http1Observer::onResponseHeaders(http_parser* p) {
  Http1Observer& o = self(p);
  // An answer to nothing, or to a request whose headers are still coming:
  // not HTTP after all (and the exchange being parsed must stay).
  if (o.pending_.empty() || !o.pending_.front().sent) return -1;
  Exchange& e = o.pending_.front();
  e.status = p->status_code;
  if (p->status_code == 101) {
    o.upgraded_ = true;
    return 0;
  }
  // 1 skips the body: a HEAD response, and 1xx / 204 / 304 have none,
  // whatever their headers say (a 304 may carry the Content-Length of the
  // representation it stands for: RFC 9110 §8.6, RFC 9112 §6.3).
  int s = p->status_code;
  return e.head || s < 200 || s == 204 || s == 304 ? 1 : 0;
}

int Http1Observer::onResponseBody(http_parser* p, const char*, size_t n) {
  Http1Observer& o = self(p);
  if (!o.pending_.empty()) o.pending_.front().response_bytes += n;
  return 0;
}

int Http1Observer::onResponseComplete(http_parser* p) {
  Http1Observer& o = self(p);
  if (o.pending_.empty()) return -1;
  // An interim response (100 Continue, 103 Early Hints): the final one follows.
  if (p->status_code >= 100 && p->status_code < 200 && p->status_code != 101) return 0;
  o.pending_.front().report(o.sink_);
  o.pending_.pop_front();
  return 0;
}

const http_parser_settings& Http1Observer::requestSettings() {
  static const http_parser_settings s = [] {
    http_parser_settings r{};
    r.on_message_begin = &Http1Observer::onRequestBegin;
    r.on_url = &Http1Observer::onUrl;
    r.on_header_field = &Http1Observer::onRequestHeaderField;
    r.on_header_value = &Http1Observer::onRequestHeaderValue;
    r.on_headers_complete = &Http1Observer::onRequestHeaders;
    r.on_body = &Http1Observer::onRequestBody;
    return r;
  }();
  return s;
}

const http_parser_settings& Http1Observer::responseSettings() {
  static const http_parser_settings s = [] {
    http_parser_settings r{};
    r.on_headers_complete = &Http1Observer::onResponseHeaders;
    r.on_body = &Http1Observer::onResponseBody;
    r.on_message_complete = &Http1Observer::onResponseComplete;
    return r;
  }();
  return s;
}

bool Http1Observer::client(std::string_view bytes) {
  if (upgraded_) return false;
  if (req_.upgrade) return true;       // waiting for the answer to an Upgrade request
  if (requests_stopped_) return true;  // the held requests' answers still count
  size_t n = http_parser_execute(&req_, &requestSettings(), bytes.data(), bytes.size());
  if (HTTP_PARSER_ERRNO(&req_) != HPE_OK) return requests_stopped_;
  // An Upgrade request (WebSocket) stops the parser at the end of its
  // headers; its answer decides (101: another protocol from then on).
  return req_.upgrade ? !pending_.empty() : n == bytes.size();
}

bool Http1Observer::server(std::string_view bytes) {
  size_t n = http_parser_execute(&resp_, &responseSettings(), bytes.data(), bytes.size());
  if (upgraded_) {
    // Reported at once: the "response" lasts as long as the upgraded connection.
    if (!pending_.empty()) pending_.front().report(sink_);
    pending_.clear();
    return false;
  }
  if (HTTP_PARSER_ERRNO(&resp_) != HPE_OK || n != bytes.size()) return false;
  // The answer to an Upgrade request was not 101: the request parser stopped
  // at its headers and cannot go on.
  if (req_.upgrade && pending_.empty()) return false;
  // Every request read was answered; the ones not read cannot be matched.
  if (requests_stopped_ && pending_.empty()) return false;
  return true;
}

bool Http1Observer::serverEnd() {
  http_parser_execute(&resp_, &responseSettings(), nullptr, 0);  // a body read to EOF ends
  return HTTP_PARSER_ERRNO(&resp_) == HPE_OK;
}

void Http1Observer::finish(bool answered_only) {
  // Status 0 unless its headers came; a request whose own headers never
  // ended was not made.
  for (auto& e : pending_)
    if (e.sent && (!answered_only || e.status != 0)) e.report(sink_);
  pending_.clear();
}

}  // namespace sluice::ztunnel::l7
