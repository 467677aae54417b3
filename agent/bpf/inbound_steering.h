// The engine's InboundSteering on top of the inbound object's
// sluice_inbound_listeners (SOCKHASH): each pod's 15006 listener under the
// pod's address, where the sk_lookup program (bpf/inbound.bpf.c) finds it
// for a SYN that tc cannot assign (one on the tuple of a connection in
// TIME_WAIT). The kernel drops an entry when its socket closes; an entry
// written again for the same address replaces it (the listeners of one pod
// share their port: SO_REUSEPORT picks among them).
#pragma once

#include "sluice/common/bpf_abi.h"
#include "sluice/common/result.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::agent::bpf {

class MapInboundSteering final : public ztunnel::InboundSteering {
 public:
  // map_fd: Loader::inboundListenersFd(), owned by the loader (outlives this).
  explicit MapInboundSteering(int map_fd) : map_fd_(map_fd) {}
  Result<void> inboundListener(const SockAddr& addr, int fd) override;
  // The map's key for a pod address (family, address in network order).
  static sluice_addr_key keyOf(const IpAddr& ip);

 private:
  int map_fd_;
};

}  // namespace sluice::agent::bpf
