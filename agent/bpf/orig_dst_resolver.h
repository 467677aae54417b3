// The engine's OrigDstResolver on top of the pinned sluice_orig_dst_v1 map:
// one lookup-and-delete per accepted outbound connection.
#pragma once

#include "agent/bpf/loader.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::bpf {

class MapOrigDstResolver final : public ztunnel::OrigDstResolver {
 public:
  explicit MapOrigDstResolver(OrigDstMap& map) : map_(map) {}

  std::optional<sockaddr_in> originalDst(uint64_t netns_cookie, const sockaddr_in& peer,
                                         const sockaddr_in& local) override {
    sluice_pair_key key{};
    key.netns_cookie = netns_cookie;
    key.src_ip4 = peer.sin_addr.s_addr;
    key.dst_ip4 = local.sin_addr.s_addr;
    key.src_port = peer.sin_port;
    key.dst_port = local.sin_port;
    auto d = map_.take(key);
    if (!d) return std::nullopt;
    sockaddr_in out{};
    out.sin_family = AF_INET;
    out.sin_addr.s_addr = d->ip4;
    out.sin_port = d->port;
    return out;
  }

 private:
  OrigDstMap& map_;  // bpf(2) map syscalls are thread-safe
};

}  // namespace sluice::agent::bpf
