// The plugin's side of the CNI <-> agent protocol (common/cni_protocol.h):
// one request and its reply over the agent's unix socket.
#pragma once

#include <string>

#include "cni-plugin/config.h"
#include "sluice/common/cni_protocol.h"

namespace sluice::cni {

// Bounded by cfg.timeout_ms overall; the error says what failed.
tl::expected<CniReply, std::string> callAgent(const PluginConfig& cfg, const CniRequest& req);

}  // namespace sluice::cni
