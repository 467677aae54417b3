// The engine's OrigDstResolver on top of the pinned sluice_orig_dst_v1 and
// sluice_orig_dst6_v1 maps: one lookup-and-delete per accepted outbound
// connection.
#pragma once

#include <cstring>

#include "agent/bpf/loader.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::bpf {

class MapOrigDstResolver final : public ztunnel::OrigDstResolver {
 public:
  MapOrigDstResolver(OrigDstMap& map, OrigDst6Map& map6) : map_(map), map6_(map6) {}

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

  std::optional<sockaddr_in6> originalDst6(uint64_t netns_cookie, const sockaddr_in6& peer,
                                           const sockaddr_in6& local) override {
    sluice_pair_key6 key{};
    key.netns_cookie = netns_cookie;
    std::memcpy(key.src_ip6, &peer.sin6_addr, sizeof(key.src_ip6));
    std::memcpy(key.dst_ip6, &local.sin6_addr, sizeof(key.dst_ip6));
    key.src_port = peer.sin6_port;
    key.dst_port = local.sin6_port;
    auto d = map6_.take(key);
    if (!d) return std::nullopt;
    sockaddr_in6 out{};
    out.sin6_family = AF_INET6;
    std::memcpy(&out.sin6_addr, d->ip6, sizeof(out.sin6_addr));
    out.sin6_port = d->port;
    return out;
  }

 private:
  OrigDstMap& map_;  // bpf(2) map syscalls are thread-safe
  OrigDst6Map& map6_;
};

}  // namespace sluice::agent::bpf
