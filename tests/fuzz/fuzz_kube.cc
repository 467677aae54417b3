// Kubernetes API responses through the list + watch source's decoders. The
// first byte picks the resource (bits 0-1: Namespace, Pod, Service,
// EndpointSlice) and the form (bit 2: 0 a list page, 1 a watch stream, cut
// into lines as the client does); the rest is the body.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "controlplane/kube/decode.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::controlplane::kube;
  if (size < 1) return 0;
  static const std::string kKinds[] = {"Namespace", "Pod", "Service", "EndpointSlice"};
  const std::string& kind = kKinds[data[0] & 3];
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  if ((data[0] & 4) == 0) {
    (void)decodeListPage(body, kind);
    return 0;
  }
  while (!body.empty()) {
    size_t nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    (void)decodeWatchEvent(line, kind);
    if (nl == std::string_view::npos) break;
    body.remove_prefix(nl + 1);
  }
  return 0;
}
