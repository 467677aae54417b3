// One HTTP request on its way through an observer, and where finished ones
// go. Only what a RequestRecord carries is kept (method, authority, path:
// small, bounded copies of header values); bodies are counted, never copied.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "sluice/ztunnel/engine.h"

namespace sluice::ztunnel::l7 {

// Receives each finished exchange (worker thread; the record's views are
// valid during the call only).
class RequestSink {
 public:
  virtual void l7Request(const RequestRecord& request) = 0;

 protected:
  ~RequestSink() = default;
};

struct Exchange {
  using Clock = std::chrono::steady_clock;
  // Header values longer than this are cut (a path of 8 KiB is no label).
  static constexpr size_t kMaxValue = 1024;

  AppProtocol protocol = AppProtocol::kHttp1;
  std::string method, authority, path;
  int status = 0;
  int grpc_status = -1;
  uint64_t request_bytes = 0, response_bytes = 0;
  Clock::time_point start{};
  int64_t start_unix_ms = 0;
  bool head = false;  // HEAD: the response has no body whatever its headers say
  bool sent = false;  // HTTP/1: the request's headers are complete

  void begin() {
    start = Clock::now();
    start_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  }
  // A header value that may arrive in pieces.
  static void append(std::string& to, std::string_view piece) {
    if (to.size() < kMaxValue) to.append(piece.substr(0, kMaxValue - to.size()));
  }
  // Reports it: duration up to now; the path without its query string.
  void report(RequestSink& sink) const {
    RequestRecord r;
    r.protocol = protocol;
    r.method = method;
    r.authority = authority;
    std::string_view p = path;
    r.path = p.substr(0, p.find('?'));
    // What no HTTP or gRPC peer may answer is not taken as said: a status
    // outside 100-599 is no response (0), and a gRPC status beyond the
    // spec's 0-16 is UNKNOWN (2), as gRPC's own clients read it.
    r.status = status >= 100 && status <= 599 ? status : 0;
    r.grpc_status = grpc_status > 16 ? 2 : grpc_status;
    r.request_bytes = request_bytes;
    r.response_bytes = response_bytes;
    r.start_unix_ms = start_unix_ms;
    r.duration_us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
    sink.l7Request(r);
  }
};

// A parser for one protocol, fed with both directions' bytes in the order
// they pass (client bytes before the server could answer them). A false
// return means it gave up (unparsable, an upgrade, a tunnel): it is not fed
// again and the connection stays a plain byte relay.
class ProtocolObserver {
 public:
  virtual ~ProtocolObserver() = default;
  virtual bool client(std::string_view bytes) = 0;
  virtual bool server(std::string_view bytes) = 0;
  virtual bool serverEnd() { return true; }  // the server's EOF (ends a body read to EOF)
  // The connection ended: exchanges still open are reported without a
  // response (status 0). `answered_only` (the server's bytes could not be
  // followed, maybe by a limit of ours): only those whose response headers
  // came are reported, with them; the others are dropped, not failed.
  virtual void finish(bool answered_only = false) = 0;
};

}  // namespace sluice::ztunnel::l7
