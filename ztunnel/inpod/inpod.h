// Sockets and settings inside a pod's network namespace. The proxy process
// stays in the node netns; only the calling thread enters the pod's netns,
// and only around socket creation and netns-scoped configuration.
#pragma once

#include <cstdint>

#include "sluice/common/addr.h"
#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::ztunnel::inpod {

// Prepares the pod netns for transparent inbound proxying (idempotent):
// tcp_fwmark_accept=1 (net.ipv4's covers IPv6 too) and
// `ip rule fwmark 0x5101 lookup 151` + `local 0.0.0.0/0 dev lo table 151`
// so the app's replies to a spoofed client address come back to the
// proxy's socket; with ipv6 also their IPv6 twins (`ip -6 rule ...`,
// `local ::/0 dev lo table 151`) and net.ipv6.fwmark_reflect=1.
Result<void> prepareNetns(int netns_fd, bool ipv6 = false);

// A listening TCP socket on `addr` inside the netns, SO_REUSEPORT (one per
// worker), carrying the proxy mark; IPv6 ones IPV6_V6ONLY.
// transparent=true sets IP_TRANSPARENT (IPV6_TRANSPARENT). backlog:
// connections the kernel completes before the proxy accepts them.
Result<UniqueFd> listenIn(int netns_fd, const SockAddr& addr, bool transparent, int backlog = 4096);

// Prepares `s`, an unconnected TCP socket of `family` made inside a pod's
// netns (socketInNetns), for an upstream connection: mark, TCP_NODELAY; with
// `bind` (not empty, of `family`) bound to that address with IP_TRANSPARENT
// / IPV6_TRANSPARENT (the client's address on the inbound side).
Result<void> prepareUpstream(const UniqueFd& s, uint32_t mark, int family, const IpAddr& bind);

}  // namespace sluice::ztunnel::inpod
