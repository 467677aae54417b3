// An enrolled pod as the workers share it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"
#include "ztunnel/proxy/socket_stash.h"

namespace sluice::ztunnel::proxy {

struct PodState {
  PodSpec spec;  // spec.netns_fd == netns.get(); spec.identity is its SPIFFE ID
  UniqueFd netns;
  std::atomic<unsigned> connections{0};  // open + waiting, against max_connections_per_pod
  std::atomic<bool> removed{false};
  // Upstream sockets made in netns ahead of need (NetnsSockets); cleared
  // when the pod is removed. mutable: taking one changes no pod state.
  mutable SocketStash stash;
};

// Enrolled pods of this node by each of their addresses (IPv4, IPv6):
// published by the engine, read lock-free by workers.
using PodIndex = std::unordered_map<IpAddr, std::shared_ptr<PodState>>;
using PodIndexRef = std::atomic<std::shared_ptr<const PodIndex>>;

}  // namespace sluice::ztunnel::proxy
