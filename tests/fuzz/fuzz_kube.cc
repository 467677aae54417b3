// Kubernetes API responses through the list + watch source's decoders. The
// first byte picks the resource (bits 0-1: Namespace, Pod, Service,
// EndpointSlice; with bit 3 set, bit 0: AuthorizationPolicy or
// PeerAuthentication of security.sluice.dev/v1, through the policy parser and
// the status condition) and the form (bit 2: 0 a list page, 1 a watch
// stream, cut into lines as the client does); the rest is the body.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "controlplane/kube/decode.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::controlplane::kube;
  if (size < 1) return 0;
  static const std::string kKinds[] = {"Namespace", "Pod", "Service", "EndpointSlice"};
  static const std::string kPolicyKinds[] = {"AuthorizationPolicy", "PeerAuthentication"};
  const bool policy = (data[0] & 8) != 0;
  const std::string& kind = policy ? kPolicyKinds[data[0] & 1] : kKinds[data[0] & 3];
  const std::string api_version = policy ? "security.sluice.dev/v1" : "";
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  if ((data[0] & 4) == 0) {
    (void)decodeListPage(body, kind, api_version);
    return 0;
  }
  while (!body.empty()) {
    size_t nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    (void)decodeWatchEvent(line, kind, api_version);
    if (nl == std::string_view::npos) break;
    body.remove_prefix(nl + 1);
  }
  return 0;
}
