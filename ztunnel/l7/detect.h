// Which application protocol a connection speaks, from the first bytes the
// client sent (never from the server's). Pure: no state, no allocation.
#pragma once

#include <cstddef>
#include <string_view>

namespace sluice::ztunnel::l7 {

enum class Detected : unsigned char {
  kNeedMore,  // a prefix of something we recognise: wait for more client bytes
  kHttp1,     // an HTTP/1.0 or 1.1 request line (not CONNECT)
  kHttp2,     // the HTTP/2 client preface (prior knowledge, h2c)
  kOpaque,    // anything else: relayed as bytes, never parsed
};
const char* toString(Detected d);

// Detection gives up (kOpaque) if the request line is not complete within
// this many bytes.
inline constexpr size_t kMaxDetectBytes = 1024;

// `head` is everything the client sent so far (at least one byte).
Detected detect(std::string_view head);

}  // namespace sluice::ztunnel::l7
