// Which app connections get HTTP inspection: all, unless it is turned off
// (EngineConfig::http_detection) or the destination port is opaque. The
// destination's own declaration (MeshDirectory::opaquePort: annotation,
// appProtocol) comes first; without one, the default opaque ports
// (server-first protocols, EngineConfig::opaque_ports) are not inspected.
#pragma once

#include <netinet/in.h>

#include "sluice/ztunnel/engine.h"

namespace sluice::ztunnel::l7 {

// `directory` may be null (no view: the defaults only). Non-blocking.
bool shouldInspect(const EngineConfig& config, MeshDirectory* directory, const SockAddr& dst);

}  // namespace sluice::ztunnel::l7
