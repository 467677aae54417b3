// Which app connections get HTTP inspection: all, unless it is turned off
// (EngineConfig::http_detection) or the destination port is opaque — by
// default (server-first protocols) or for the destination workload
// (MeshDirectory::opaquePort: annotation, appProtocol).
#pragma once

#include <netinet/in.h>

#include "sluice/ztunnel/engine.h"

namespace sluice::ztunnel::l7 {

// `directory` may be null (no view: the defaults only). Non-blocking.
bool shouldInspect(const EngineConfig& config, MeshDirectory* directory, const sockaddr_in& dst);

}  // namespace sluice::ztunnel::l7
