// The agent's gRPC client: one call per TLS connection, HTTP/2 framing by
// nghttp2, TLS by OpenSSL, blocking on the caller's thread. It speaks the
// standard gRPC-over-HTTP/2 wire protocol (length-prefixed protobuf messages,
// grpc-status trailers) to the control plane's gRPC server, so the agent does
// not link gRPC's runtime (about 8 MiB of resident library code).
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "sluice/common/unique_fd.h"

namespace sluice::agent::rpc {

// gRPC status codes used here (google.rpc.Code).
enum Code : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kDeadlineExceeded = 4,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kUnauthenticated = 16,
};

struct Status {
  int code = kOk;
  std::string message;
  bool ok() const { return code == kOk; }
};

// cancel() from any thread makes a call blocked on this token return
// kCancelled promptly; a cancelled token stays cancelled.
class Canceller {
 public:
  Canceller();
  void cancel() const;
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;  // eventfd
};

struct CallOptions {
  std::string target;            // host:port (the control plane)
  std::string trust_anchor_pem;  // the control plane's certificate must chain to it
  std::string path;              // "/package.Service/Method"
  std::vector<std::pair<std::string, std::string>> metadata;  // lower-case names
  std::chrono::milliseconds deadline{0};                      // whole call; 0: none
  std::chrono::milliseconds connect_timeout{10000};
  // Nothing at all received (messages, the server's keepalive PINGs) for this
  // long: the control plane is presumed gone (kUnavailable). 0: never.
  std::chrono::milliseconds idle_timeout{0};
  size_t max_message_bytes = 64u << 20;
};

// Sends `request` (a serialized message) and calls on_message for every
// response message, in order; returning false from it ends the call
// (kCancelled). Returns the call's final status.
Status call(const CallOptions& options, const std::string& request,
            const std::function<bool(const std::string&)>& on_message,
            const Canceller* cancel = nullptr);

}  // namespace sluice::agent::rpc
