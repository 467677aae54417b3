// Sockets and settings inside a pod's network namespace. The proxy process
// stays in the node netns; only the calling thread enters the pod's netns,
// and only around socket creation and netns-scoped configuration.
#pragma once

#include <cstdint>

#include "sluice/common/result.h"
#include "sluice/common/unique_fd.h"

namespace sluice::ztunnel::inpod {

// Prepares the pod netns for transparent inbound proxying (idempotent):
// tcp_fwmark_accept=1 and `ip rule fwmark 0x5101 lookup 151` +
// `local 0.0.0.0/0 dev lo table 151` so the app's replies to a spoofed
// client address come back to the proxy's socket.
Result<void> prepareNetns(int netns_fd);

// A listening TCP socket inside the netns, SO_REUSEPORT (one per worker),
// carrying the proxy mark. transparent=true sets IP_TRANSPARENT.
// backlog: connections the kernel completes before the proxy accepts them.
Result<UniqueFd> listenIn(int netns_fd, uint32_t ip_net, uint16_t port, bool transparent,
                          int backlog = 4096);

// An unconnected TCP socket inside the netns for an upstream connection:
// mark, TCP_NODELAY; with bind_ip (network order, non-zero) bound to that
// address with IP_TRANSPARENT (the client's address on the inbound side).
Result<UniqueFd> upstreamSocket(int netns_fd, uint32_t mark, uint32_t bind_ip);

}  // namespace sluice::ztunnel::inpod
