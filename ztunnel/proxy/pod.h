// An enrolled pod as the workers share it.
#pragma once

#include <atomic>
#include <string>

#include "sluice/common/unique_fd.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::ztunnel::proxy {

struct PodState {
  PodSpec spec;  // spec.netns_fd == netns.get(); spec.identity is its SPIFFE ID
  UniqueFd netns;
  std::atomic<unsigned> connections{0};  // open + waiting, against max_connections_per_pod
  std::atomic<bool> removed{false};
};

}  // namespace sluice::ztunnel::proxy
