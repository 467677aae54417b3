// One client connection of the admin HTTP server: HTTP/1.0 and 1.1 requests
// parsed with libhttp-parser, responses queued and written without blocking.
// No routing and no event loop (agent/admin/server.cc does both): the server
// reads when the socket is readable, takes each complete request, answers it,
// and writes when the socket is writable.
//
// Bounds on what a client makes the agent hold: a request's head is at most
// 16 KiB (larger: 400 and close), requests carry no body (one with a body:
// 413 and close), unparsed input stays below 64 KiB, and answering pauses
// while 1 MiB of answers is unsent (the server stops reading a connection
// whose answers the client does not take). Per connection, that is: the
// server caps their number (256) and the answers queued on all of them
// together (16 MiB: beyond it no connection takes a new request).
#pragma once

#include <http_parser.h>

#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "sluice/common/unique_fd.h"

namespace sluice::agent::admin {

struct Request {
  http_method method = HTTP_GET;
  std::string target;  // path and query string, as sent
  bool http10 = false;
  bool keep_alive = false;
  bool has_origin = false;  // an Origin header (a browser's request)
};

class Connection {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr size_t kMaxHead = 16 * 1024;
  static constexpr size_t kMaxPending = 1 << 20;  // answers queued, not yet taken

  explicit Connection(UniqueFd fd);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int fd() const { return fd_.get(); }

  // Reads what the socket holds. False: the socket failed. The client's end
  // of input (eof()) still gets the answers it asked for.
  bool readSome();
  bool eof() const { return eof_; }
  // The next complete request read so far; parsing waits until it is answered.
  // A malformed or refused one is answered here (400, 413) and the connection
  // closes once that is written: nullopt then, and for "nothing complete yet".
  std::optional<Request> next();

  // The answer to the request `next()` returned. A HEAD gets the head only.
  void respond(int status, std::string_view content_type, std::string body,
               std::string_view extra_headers = {});
  // The same without a copy of the body: held until written.
  void respond(int status, std::string_view content_type, std::shared_ptr<const std::string> body,
               std::string_view extra_headers = {});

  // A streamed answer: the head now, the body in pieces (chunked for HTTP/1.1,
  // until close for 1.0), then the end, and the connection closes. Input
  // read meanwhile is discarded. A HEAD gets the head and the end at once.
  void startStream(std::string_view content_type, std::string_view extra_headers = {});
  void streamData(std::string data);
  void endStream();
  bool streaming() const { return streaming_; }

  // Writes what is queued. False: the socket failed (the peer is gone).
  bool flush();
  size_t pending() const { return pending_; }
  // Answering waits for the client to take what is queued (1 MiB).
  bool blocked() const { return pending_ >= kMaxPending; }
  // Answered, written, and both sides have closed: the server closes it.
  bool done() const { return shut_ && eof_; }
  // The socket has unread input the server should read now (false while the
  // client has not taken answers already queued or input is at its bound).
  bool wantsRead() const;

  // 10 s without a request completing (idle or part of one sent) or without
  // a queued answer moving: the connection is dropped. A stream waiting for
  // data is not idle.
  bool expired(Clock::time_point now) const;

 private:
  static int onUrl(http_parser* p, const char* at, size_t n);
  static int onHeaderField(http_parser* p, const char* at, size_t n);
  static int onHeaderValue(http_parser* p, const char* at, size_t n);
  static int onHeadersComplete(http_parser* p);
  static int onMessageComplete(http_parser* p);
  void refuse(int status, std::string_view why);
  void queue(std::string bytes);
  std::string head(int status, std::string_view content_type, size_t length,
                   std::string_view extra_headers, bool chunked_or_open);

  struct Piece {
    std::string owned;
    std::shared_ptr<const std::string> shared;
    size_t offset = 0;
    std::string_view rest() const {
      std::string_view all = shared ? std::string_view(*shared) : std::string_view(owned);
      return all.substr(offset);
    }
  };

  UniqueFd fd_;
  http_parser parser_{};
  std::string in_;  // bytes read and not yet parsed
  Request building_;
  std::string header_field_;
  bool in_origin_value_ = false;
  bool last_was_value_ = false;
  size_t head_bytes_ = 0;  // of the request being parsed
  bool body_refused_ = false;
  std::optional<Request> ready_;      // parsed, not yet answered
  std::optional<Request> answering_;  // taken by next(), not yet answered
  bool streaming_ = false;
  bool close_after_ = false;  // no more requests: close once the answers are written
  bool shut_ = false;         // our FIN sent
  bool eof_ = false;          // the client's FIN read
  std::deque<Piece> out_;
  size_t pending_ = 0;
  Clock::time_point last_progress_ = Clock::now();
};

}  // namespace sluice::agent::admin
