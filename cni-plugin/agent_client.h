// The plugin's side of the CNI <-> agent protocol (common/cni_protocol.h):
// one request and its reply over the agent's unix socket.
#pragma once

#include <string>

#include "cni-plugin/config.h"
#include "sluice/common/cni_protocol.h"

namespace sluice::cni {

// Why a call got no reply. Only kUnreachable (no socket, or nothing listens
// on it: the agent is not running) lets failOpen start a pod unmeshed; an
// agent that is up but busy or slow is asked again by the runtime.
enum class AgentFailure {
  kUnreachable,  // connect(): no such socket, or connection refused
  kBusy,         // connect(): the agent's accept backlog is full until the deadline
  kNoAnswer,     // connected, but no well-formed reply (timeout, closed early, garbage)
};

struct AgentError {
  AgentFailure kind = AgentFailure::kNoAnswer;
  std::string message;
};

// Bounded by cfg.timeout_ms overall; the error says what failed. An agent's
// refusal (busy included: CniReply::code) is a reply, not an error.
tl::expected<CniReply, AgentError> callAgent(const PluginConfig& cfg, const CniRequest& req);

}  // namespace sluice::cni
