// HTTP inspection (ztunnel/l7) on hostile bytes from both ends of a
// connection. The input is a script of chunks: one byte (top bit: server,
// else client; low 7 bits: length), then that many bytes; a length of 0
// is the server's EOF. Whatever the bytes, the inspector must neither crash
// nor leak nor report nonsense (a request record must have a method).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "ztunnel/l7/inspector.h"

namespace {
struct Sink final : sluice::ztunnel::l7::RequestSink {
  void l7Request(const sluice::ztunnel::RequestRecord& r) override {
    if (r.status < 0 || r.duration_us < 0) std::abort();
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::ztunnel;
  Sink sink;
  l7::Inspector in(sink, std::chrono::seconds(10));
  size_t i = 0;
  while (i < size) {
    uint8_t head = data[i++];
    size_t n = std::min<size_t>(head & 0x7f, size - i);
    std::string_view chunk(reinterpret_cast<const char*>(data + i), n);
    i += n;
    if (head & 0x80) {
      if (n == 0)
        in.serverEnd();
      else
        in.serverBytes(chunk);
    } else if (n > 0) {
      in.clientBytes(chunk);
    }
  }
  in.finish();
  return 0;
}
