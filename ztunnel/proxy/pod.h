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

#include "sluice/common/addr.h"
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
  // mutable: NetnsSockets reads plain_clients through a const pod.
  mutable std::mutex sources_mu;
  std::unordered_map<IpAddr, unsigned> inbound_by_source;
  // Plaintext inbound connections (15006) by client address and port. An
  // upstream socket bound to a client's address must not take the port of
  // one of them: the app's end would have the very tuple of the proxy's
  // accepted socket, which takes its SYN (NetnsSockets::upstream).
  std::unordered_map<SockAddr, unsigned> plain_clients;
  std::unordered_map<IpAddr, unsigned> plain_sources;  // the same by address alone
  std::atomic<unsigned> plain_client_count{0};         // sum of plain_clients: 0 skips the lock

  // Whether a plaintext inbound connection from `client` (address and port) is open.
  bool plainClient(const SockAddr& client) const {
    if (plain_client_count.load(std::memory_order_acquire) == 0) return false;
    std::lock_guard lk(sources_mu);
    return plain_clients.count(client) != 0;
  }
  // Whether one from `source` is open, whatever its port.
  bool plainSource(const IpAddr& source) const {
    if (plain_client_count.load(std::memory_order_acquire) == 0) return false;
    std::lock_guard lk(sources_mu);
    return plain_sources.count(source) != 0;
  }
};

// One inbound connection's place among its source's (PodState::
// inbound_by_source), and for a plaintext one its client port (PodState::
// plain_clients), given back when it is destroyed. Any worker.
class SourceShare {
 public:
  SourceShare() = default;
  // Empty (false) when `source` holds `share` places of the pod already.
  // client_port: a plaintext (15006) connection's, else 0 (HBONE streams).
  static SourceShare take(std::shared_ptr<PodState> pod, const IpAddr& source, unsigned share,
                          uint16_t client_port = 0) {
    {
      std::lock_guard lk(pod->sources_mu);
      unsigned& held = pod->inbound_by_source[source];
      if (held >= share) {
        if (held == 0) pod->inbound_by_source.erase(source);
        return {};
      }
      ++held;
      if (client_port) {
        ++pod->plain_clients[SockAddr(source, client_port)];
        ++pod->plain_sources[source];
        pod->plain_client_count.fetch_add(1, std::memory_order_release);
      }
    }
    SourceShare s;
    s.pod_ = std::move(pod);
    s.source_ = source;
    s.port_ = client_port;
    return s;
  }
  SourceShare(SourceShare&& o) noexcept
      : pod_(std::exchange(o.pod_, nullptr)), source_(o.source_), port_(o.port_) {}
  SourceShare& operator=(SourceShare&& o) noexcept {
    if (this != &o) {
      release();
      pod_ = std::exchange(o.pod_, nullptr);
      source_ = o.source_;
      port_ = o.port_;
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
    dropOne(pod_->inbound_by_source, source_);
    if (port_) {
      dropOne(pod_->plain_clients, SockAddr(source_, port_));
      dropOne(pod_->plain_sources, source_);
      pod_->plain_client_count.fetch_sub(1, std::memory_order_release);
    }
    pod_ = nullptr;
  }
  // One count less for `key`; the entry goes at zero.
  template <class Map, class Key>
  static void dropOne(Map& counts, const Key& key) {
    if (auto it = counts.find(key); it != counts.end() && --it->second == 0) counts.erase(it);
  }
  std::shared_ptr<PodState> pod_;
  IpAddr source_;
  uint16_t port_ = 0;
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
