// A gRPC response body as the agent's client reads it: DATA split where the
// input says, cut into length-prefixed messages, then the trailers. Layout:
// byte 0 how many leading bytes are trailers (grpc-status, '\n',
// grpc-message), byte 1 the DATA chunk size (1-256), the rest DATA.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "agent/rpc/framing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::agent::rpc;
  if (size < 2) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);
  std::string_view trailers = in.substr(0, std::min<size_t>(data[0], in.size()));
  std::string_view body = in.substr(trailers.size());
  size_t chunk = size_t{data[1]} + 1;
  // A small limit so that the too-large path is reachable.
  MessageReader reader(1024);
  size_t messages = 0;
  Status s;
  for (size_t off = 0; off < body.size() && s.ok(); off += chunk)
    s = reader.feed(body.substr(off, chunk),
                    [&](const std::string& m) { return ++messages < 50 || m.empty(); });
  size_t nl = trailers.find('\n');
  std::string status(trailers.substr(0, nl));
  std::string message(nl == std::string_view::npos ? "" : trailers.substr(nl + 1));
  (void)trailerStatus(status, message, reader.midMessage());
  return 0;
}
