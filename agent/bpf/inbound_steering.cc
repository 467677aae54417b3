#include "agent/bpf/inbound_steering.h"

#include <bpf/bpf.h>

#include <cstring>

#include "sluice/common/fmt.h"

namespace sluice::agent::bpf {

sluice_addr_key MapInboundSteering::keyOf(const IpAddr& ip) {
  sluice_addr_key k{};
  k.family = static_cast<__u32>(ip.family());
  if (ip.isV4()) {
    k.addr[0] = ip.v4net();
  } else if (ip.isV6()) {
    in6_addr a = ip.v6addr();
    std::memcpy(k.addr, a.s6_addr, sizeof(k.addr));
  }
  return k;
}

Result<void> MapInboundSteering::inboundListener(const SockAddr& addr, int fd) {
  sluice_addr_key key = keyOf(addr.ip());
  __u64 value = static_cast<__u64>(fd);
  if (bpf_map_update_elem(map_fd_, &key, &value, BPF_ANY) != 0)
    return failErrno(fmt::format(
        "registering the listener {} for inbound steering (sluice_inbound_listeners) failed",
        addr.str()));
  return {};
}

}  // namespace sluice::agent::bpf
