#include "ztunnel/l7/inspect_policy.h"

#include <arpa/inet.h>

#include <algorithm>

namespace sluice::ztunnel::l7 {

bool shouldInspect(const EngineConfig& config, MeshDirectory* directory, const sockaddr_in& dst) {
  if (!config.http_detection) return false;
  uint16_t port = ntohs(dst.sin_port);
  if (std::ranges::find(config.opaque_ports, port) != config.opaque_ports.end()) return false;
  return !directory || !directory->opaquePort(dst.sin_addr.s_addr, port);
}

}  // namespace sluice::ztunnel::l7
