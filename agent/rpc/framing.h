// gRPC's wire format inside a response stream, apart from HTTP/2 and TLS:
// length-prefixed messages (1 byte compressed flag, 4 bytes big-endian
// length, the message) cut out of DATA however it is split, and the call's
// status from its trailers. Pure (no I/O), so tests/fuzz/fuzz_rpc_frames can
// feed it anything.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "agent/rpc/call.h"

namespace sluice::agent::rpc {

class MessageReader {
 public:
  explicit MessageReader(size_t max_message_bytes) : max_(max_message_bytes) {}

  // Appends response DATA and calls on_message for every complete message,
  // in order. Returns the first failure (a compressed or too large message;
  // kCancelled when on_message returns false); after one, the caller stops
  // feeding.
  Status feed(std::string_view data, const std::function<bool(const std::string&)>& on_message);
  // Part of a message has arrived and not the rest.
  bool midMessage() const { return rx_.size() > rx_off_; }

 private:
  size_t max_;
  std::string rx_;  // DATA not yet cut into messages (from rx_off_)
  size_t rx_off_ = 0;
};

// The call's status from its grpc-status and grpc-message trailers (the
// message percent-decoded); an OK that ends inside a message is kInternal.
Status trailerStatus(const std::string& grpc_status, const std::string& grpc_message,
                     bool mid_message);

}  // namespace sluice::agent::rpc
