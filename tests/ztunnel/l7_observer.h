// What the l7 observer tests share: a RequestSink that keeps what it was
// told, and a feeder that hands an Inspector bytes in pieces.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ztunnel/l7/inspector.h"

namespace sluice::ztunnel::l7test {

struct Seen {
  std::string method, authority, path;
  int status, grpc_status;
  uint64_t request_bytes, response_bytes;
  std::string protocol;
};

struct Sink final : l7::RequestSink {
  std::vector<Seen> seen;
  void l7Request(const RequestRecord& r) override {
    seen.push_back({std::string(r.method), std::string(r.authority), std::string(r.path), r.status,
                    r.grpc_status, r.request_bytes, r.response_bytes, toString(r.protocol)});
  }
};

// Feeds `s` in pieces of `step` bytes (0: all at once).
inline bool feed(l7::Inspector& in, std::string_view s, bool client, size_t step = 0) {
  if (step == 0) step = s.size();
  for (size_t i = 0; i < s.size(); i += step) {
    auto piece = s.substr(i, step);
    if (!(client ? in.clientBytes(piece) : in.serverBytes(piece))) return false;
  }
  return true;
}

}  // namespace sluice::ztunnel::l7test
