// HTTP/1.x as a passive observer: libhttp-parser over the client's bytes
// (requests) and the server's (responses), matched in order, so keep-alive
// and pipelining both work. Chunked and length-delimited bodies are counted
// as they pass; a body read to EOF ends at serverEnd(). An upgrade
// (WebSocket: 101), CONNECT or a parse error ends the observation.
#pragma once

#include <http_parser.h>

#include <deque>
#include <string>

#include "ztunnel/l7/exchange.h"

namespace sluice::ztunnel::l7 {

class Http1Observer final : public ProtocolObserver {
 public:
  // Requests sent and not yet answered beyond this: the observer reads no
  // more requests, counts those it holds as their answers come, then ends.
  static constexpr size_t kMaxPipelined = 64;

  explicit Http1Observer(RequestSink& sink);
  bool client(std::string_view bytes) override;
  bool server(std::string_view bytes) override;
  bool serverEnd() override;
  void finish(bool answered_only = false) override;

 private:
  static int onRequestBegin(http_parser* p);
  static int onUrl(http_parser* p, const char* at, size_t n);
  static int onRequestHeaderField(http_parser* p, const char* at, size_t n);
  static int onRequestHeaderValue(http_parser* p, const char* at, size_t n);
  static int onRequestHeaders(http_parser* p);
  static int onRequestBody(http_parser* p, const char* at, size_t n);
  static int onResponseHeaders(http_parser* p);
  static int onResponseBody(http_parser* p, const char* at, size_t n);
  static int onResponseComplete(http_parser* p);
  static const http_parser_settings& requestSettings();
  static const http_parser_settings& responseSettings();
  Exchange* parsing();
  static Http1Observer& self(http_parser* p) { return *static_cast<Http1Observer*>(p->data); }

  RequestSink& sink_;
  http_parser req_{}, resp_{};
  std::deque<Exchange> pending_;  // requests in order; the front is the one answered next
  std::string field_;             // the request header name being read
  bool in_host_ = false;
  bool last_was_value_ = false;
  bool upgraded_ = false;          // a 101 went by: what follows is another protocol
  bool requests_stopped_ = false;  // kMaxPipelined were waiting: no more requests read
};

}  // namespace sluice::ztunnel::l7
