// An enrolled pod as the workers share it.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

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
  // Inbound connections (15006, HBONE streams) by source address
  // (SourceShare): one source holds at most half of max_connections_per_pod,
  // so a flood from one client cannot take every other peer's place.
  std::mutex sources_mu;
  std::unordered_map<IpAddr, unsigned> inbound_by_source;
};

// One inbound connection's place among its source's (PodState::
// inbound_by_source), given back when it is destroyed. Any worker.
class SourceShare {
 public:
  SourceShare() = default;
  // Empty (false) when `source` holds `share` places of the pod already.
  static SourceShare take(std::shared_ptr<PodState> pod, const IpAddr& source, unsigned share) {
    {
      std::lock_guard lk(pod->sources_mu);
      unsigned& held = pod->inbound_by_source[source];
      if (held >= share) {
        if (held == 0) pod->inbound_by_source.erase(source);
        return {};
      }
      ++held;
    }
    SourceShare s;
    s.pod_ = std::move(pod);
    s.source_ = source;
    return s;
  }
  SourceShare(SourceShare&& o) noexcept
      : pod_(std::exchange(o.pod_, nullptr)), source_(o.source_) {}
  SourceShare& operator=(SourceShare&& o) noexcept {
    if (this != &o) {
      release();
      pod_ = std::exchange(o.pod_, nullptr);
      source_ = o.source_;
    }
    return *this;
  }
  SourceShare(const SourceShare&) = delete;
  SourceShare& operator=(const SourceShare&) = delete;
  ~SourceShare() { release(); }
  explicit operator bool() const { return pod_ != nullptr; }
  // How many places `source` holds in `pod` (tests, log lines).
  static unsigned held(PodState& pod, const IpAddr& source) {
    std::lock_guard lk(pod.sources_mu);
    auto it = pod.inbound_by_source.find(source);
    return it == pod.inbound_by_source.end() ? 0 : it->second;
  }

 private:
  void release() {
    if (!pod_) return;
    std::lock_guard lk(pod_->sources_mu);
    if (auto it = pod_->inbound_by_source.find(source_);
        it != pod_->inbound_by_source.end() && --it->second == 0)
      pod_->inbound_by_source.erase(it);
    pod_ = nullptr;
  }
  std::shared_ptr<PodState> pod_;
  IpAddr source_;
};

// The places one source may hold: half of the pod's limit.
inline unsigned sourceShare(unsigned max_connections_per_pod) {
  return std::max(1u, max_connections_per_pod / 2);
}

// Enrolled pods of this node by each of their addresses (IPv4, IPv6):
// published by the engine, read lock-free by workers.
using PodIndex = std::unordered_map<IpAddr, std::shared_ptr<PodState>>;
using PodIndexRef = std::atomic<std::shared_ptr<const PodIndex>>;

}  // namespace sluice::ztunnel::proxy
