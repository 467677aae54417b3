// The agent's CNI socket protocol: one JSON line each way. Decoding must
// never throw; what decodes must encode and decode again to the same thing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sluice/common/cni_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::cni;
  std::string line(reinterpret_cast<const char*>(data), size);
  if (auto req = decodeRequest(line)) {
    auto again = decodeRequest(encode(*req));
    if (!again || again->command != req->command || again->ips != req->ips ||
        again->container_id != req->container_id || again->pod_uid != req->pod_uid)
      std::abort();
  }
  if (auto reply = decodeReply(line)) {
    auto again = decodeReply(encode(*reply));
    if (!again || again->ok != reply->ok || again->error != reply->error ||
        again->code != reply->code)
      std::abort();
  }
  return 0;
}
