// The engine's SpliceControl (same-node splice, issue 11) on top of the maps
// of bpf/sockmap.bpf.c, pinned under --bpf-pin-dir while --sockmap=on runs:
// sluice_splice_v1 (written here, BPF_F_LOCK), sluice_splice_bytes_v1 (read
// and deleted here), the sockhash and sluice_sk_msg_path_v1 (read here, to
// refuse a connection one of whose hops is on loopback TCP).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agent/bpf/map.h"
#include "sluice/common/bpf_abi.h"
#include "sluice/common/result.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::bpf {

class MapSpliceControl final : public ztunnel::SpliceControl {
 public:
  // Opens the pinned maps.
  static Result<std::unique_ptr<MapSpliceControl>> open(const std::string& pin_dir);
  // Deletes every splice, spliced-bytes and hop-behind entry left behind by
  // an agent that is gone (killed with live spliced pairs: their proxy
  // sockets are gone, so their apps' next sends go to them and meet a
  // reset). Never while a predecessor runs (an upgrade): its pairs are live,
  // and its freeze takes their spliced bytes into their records. Returns how
  // many splice entries there were.
  size_t removeStale();
  Armed arm(int accepted, int delivering, uint64_t up, uint64_t down) override;
  // Sum of the per-CPU splice counters (enum sluice_splice_stat order).
  std::vector<uint64_t> stats() const;

  // The sockhash keys of the two apps of a same-node connection: the
  // client's from the proxy's accepted socket, the server's from its
  // delivering socket (each the other end of that hop). False: a socket
  // that is not an IPv4 TCP connection (any more).
  static bool appKeys(int accepted, int delivering, sluice_pair_key& client,
                      sluice_pair_key& server);

 private:
  friend class MapSplicedPair;
  BpfMap<sluice_pair_key, sluice_splice> splice_;
  BpfMap<sluice_pair_key, sluice_splice_bytes> bytes_;
  BpfMap<sluice_pair_key, uint64_t> sockhash_;
  BpfMap<sluice_pair_key, uint8_t> hop_behind_;  // entries of a pair go at its end
  UniqueFd path_;   // sluice_sk_msg_path_v1 (sk storage: looked up by socket fd)
  UniqueFd stats_;  // sluice_splice_stats_v1
};

}  // namespace sluice::agent::bpf
