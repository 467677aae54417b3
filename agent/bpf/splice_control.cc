#include "agent/bpf/splice_control.h"

#include <bpf/libbpf.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "sluice/common/log.h"

namespace sluice::agent::bpf {

namespace {

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

// The app end of the hop whose other end is `fd`: {fd's peer -> fd's end}.
bool peerKey(int fd, sluice_pair_key& key) {
  sockaddr_in local{}, peer{};
  socklen_t len = sizeof(local);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0 ||
      local.sin_family != AF_INET)
    return false;
  len = sizeof(peer);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return false;
  uint64_t cookie = 0;
  len = sizeof(cookie);
  if (getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0) return false;
  key = {cookie, peer.sin_addr.s_addr, local.sin_addr.s_addr, peer.sin_port, local.sin_port, 0};
  return true;
}

}  // namespace

class MapSplicedPair final : public ztunnel::SplicedPair {
 public:
  MapSplicedPair(MapSpliceControl& maps, const sluice_pair_key& client,
                 const sluice_pair_key& server)
      : maps_(maps), client_(client), server_(server) {}
  ~MapSplicedPair() override {
    if (!ended_) (void)end();
  }
  void forwarded(bool up, uint64_t bytes) override {
    sluice_splice e{};
    e.armed = 1;
    e.forwarded = bytes;
    e.peer = up ? server_ : client_;
    (void)maps_.splice_.update(up ? client_ : server_, e, BPF_F_LOCK);
  }
  Spliced end() override {
    ended_ = true;
    // Entries first: from here on neither app's send goes straight across.
    maps_.splice_.erase(client_);
    maps_.splice_.erase(server_);
    maps_.hop_behind_.erase(client_);
    maps_.hop_behind_.erase(server_);
    Spliced s;
    if (auto b = maps_.bytes_.take(client_)) s.up = b->spliced;
    if (auto b = maps_.bytes_.take(server_)) s.down = b->spliced;
    return s;
  }
  Spliced counted() override {
    Spliced s;
    if (ended_) return s;
    if (auto b = maps_.bytes_.lookup(client_)) s.up = b->spliced;
    if (auto b = maps_.bytes_.lookup(server_)) s.down = b->spliced;
    return s;
  }

 private:
  MapSpliceControl& maps_;
  sluice_pair_key client_, server_;
  bool ended_ = false;
};

Result<std::unique_ptr<MapSpliceControl>> MapSpliceControl::open(const std::string& pin_dir) {
  auto c = std::make_unique<MapSpliceControl>();
  auto splice = BpfMap<sluice_pair_key, sluice_splice>::openPinned(pin_dir + "/sluice_splice_v1");
  if (!splice) return tl::unexpected(splice.error());
  auto bytes =
      BpfMap<sluice_pair_key, sluice_splice_bytes>::openPinned(pin_dir + "/sluice_splice_bytes_v1");
  if (!bytes) return tl::unexpected(bytes.error());
  auto sockhash = BpfMap<sluice_pair_key, uint64_t>::openPinned(pin_dir + "/sluice_sockhash_v1");
  if (!sockhash) return tl::unexpected(sockhash.error());
  auto hop_behind = BpfMap<sluice_pair_key, uint8_t>::openPinned(pin_dir + "/sluice_hop_behind_v1");
  if (!hop_behind) return tl::unexpected(hop_behind.error());
  c->splice_ = std::move(*splice);
  c->hop_behind_ = std::move(*hop_behind);
  c->bytes_ = std::move(*bytes);
  c->sockhash_ = std::move(*sockhash);
  c->path_ = UniqueFd(bpf_obj_get((pin_dir + "/sluice_sk_msg_path_v1").c_str()));
  if (!c->path_) return failErrno("cannot open pinned BPF map sluice_sk_msg_path_v1");
  c->stats_ = UniqueFd(bpf_obj_get((pin_dir + "/sluice_splice_stats_v1").c_str()));
  if (!c->stats_) return failErrno("cannot open pinned BPF map sluice_splice_stats_v1");
  return c;
}

size_t MapSpliceControl::removeStale() {
  size_t stale = 0;
  for (const auto& [k, v] : splice_.entries()) stale += splice_.erase(k);
  for (const auto& [k, v] : bytes_.entries()) bytes_.erase(k);
  for (const auto& [k, v] : hop_behind_.entries()) hop_behind_.erase(k);
  if (stale)
    log::get("bpf")->info("splice: removed {} entries of an earlier agent's connections", stale);
  return stale;
}

bool MapSpliceControl::appKeys(int accepted, int delivering, sluice_pair_key& client,
                               sluice_pair_key& server) {
  return peerKey(accepted, client) && peerKey(delivering, server);
}

ztunnel::SpliceControl::Armed MapSpliceControl::arm(int accepted, int delivering, uint64_t up,
                                                    uint64_t down) {
  Armed out;
  // A hop socket of the proxy whose sends went over loopback TCP: its
  // reader may hold TCP-queued bytes, which redirected ones would overtake.
  for (int fd : {accepted, delivering}) {
    uint8_t path = SLUICE_PATH_UNDECIDED;
    if (bpf_map_lookup_elem(path_.get(), &fd, &path) == 0 &&
        (path == SLUICE_PATH_TCP || path == SLUICE_PATH_TCP_BEHIND))
      return out;
  }
  sluice_pair_key client{}, server{};
  if (!appKeys(accepted, delivering, client, server)) return out;
  // Both apps' sockets in the sockhash (the server's enters when its
  // handshake completes, which may trail the proxy's connect).
  if (!sockhash_.lookup(client) || !sockhash_.lookup(server)) {
    out.state = Arm::kNotYet;
    return out;
  }
  auto pair = std::make_unique<MapSplicedPair>(*this, client, server);
  pair->forwarded(true, up);
  pair->forwarded(false, down);
  out.state = Arm::kArmed;
  out.pair = std::move(pair);
  return out;
}

std::vector<uint64_t> MapSpliceControl::stats() const {
  std::vector<uint64_t> sums(SLUICE_SPLICE_STAT_MAX);
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0 || !stats_) return sums;
  std::vector<uint64_t> per(static_cast<size_t>(cpus));
  for (uint32_t i = 0; i < SLUICE_SPLICE_STAT_MAX; ++i)
    if (bpf_map_lookup_elem(stats_.get(), &i, per.data()) == 0)
      for (auto v : per) sums[i] += v;
  return sums;
}

}  // namespace sluice::agent::bpf
