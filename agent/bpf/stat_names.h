// The BPF programs' counters (sluice_stats_v1, indexed by enum sluice_stat,
// then sluice_stats6_v1 from kStat6Base, indexed by enum sluice_stat6, then
// sluice_stats4_v1 from kStat4Base, indexed by enum sluice_stat4: the order
// of Loader::stats()), named once for the admin API (/stats "bpf") and the
// metrics endpoint (sluice_bpf_<name>_total).
#pragma once

#include <array>
#include <cstddef>

#include "sluice/common/bpf_abi.h"

namespace sluice::agent::bpf {

// Index of enum sluice_stat6's first counter in Loader::stats().
inline constexpr size_t kStat6Base = SLUICE_STAT_MAX;
// Index of enum sluice_stat4's first counter in Loader::stats().
inline constexpr size_t kStat4Base = kStat6Base + SLUICE_STAT6_MAX;

struct StatInfo {
  const char* name;
  const char* help;
};

inline constexpr std::array<StatInfo, kStat4Base + SLUICE_STAT4_MAX> kStats = {{
    {"connect_seen", "connect() calls seen in enrolled pods (cgroup/connect4 and connect6)"},
    {"connect_redirected",
     "Outbound connects captured: rewritten to the pod's 127.0.0.1:15001 or [::1]:15001"},
    {"connect_skipped",
     "Connects left alone: loopback, the pod's own IP, an excluded port, or the proxy's own"},
    {"sockops_rekeyed", "Captured connections re-keyed by 4-tuple for the proxy (sockops)"},
    {"getsockopt_answered", "SO_ORIGINAL_DST answers given by the cgroup/getsockopt program"},
    {"tc_assigned", "Inbound connections steered to the pod's 15006 listener (tc ingress)"},
    {"tc_no_listener",
     "Inbound IPv4 SYNs to an enrolled pod dropped: no 15006 listener (fail closed: no agent "
     "runs, or it is restarting)"},
    {"tc_passed", "Packets the tc ingress program left alone"},
    // sluice_stats6_v1 (kStat6Base + enum sluice_stat6)
    {"ip6_connect_redirected",
     "Outbound connects to real IPv6 destinations captured ([::1]:15001)"},
    {"ip6_tc_assigned", "Inbound IPv6 connections steered to the pod's [pod-v6]:15006 listener"},
    {"ip6_tc_no_listener_dropped",
     "Inbound IPv6 SYNs to an enrolled pod dropped: no [pod-v6]:15006 listener (fail closed)"},
    {"ip6_tc_assign_failed_dropped",
     "Inbound IPv6 SYNs dropped: the kernel refused to assign them to the 15006 listener"},
    {"ip6_tc_hidden_dropped",
     "Inbound IPv6 TCP packets dropped: behind a fragment header or more than 4 extension "
     "headers, which the mesh cannot steer (fail closed)"},
    {"ip6_lookup_steered",
     "Inbound IPv6 SYNs on the tuple of a connection in TIME_WAIT steered to [pod-v6]:15006 "
     "(sk_lookup), not to the app's listener"},
    {"ip6_lookup_dropped",
     "Inbound IPv6 SYNs on the tuple of a connection in TIME_WAIT dropped: no [pod-v6]:15006 "
     "listener (fail closed: no agent runs)"},
    {"ip6_tc_cookie_assigned",
     "Inbound IPv6 ACKs that complete a SYN cookie of [pod-v6]:15006 (its SYN queue was full: a "
     "SYN flood) assigned to it, not to the app's listener, which would reset them"},
    // sluice_stats4_v1 (kStat4Base + enum sluice_stat4)
    {"ip4_tc_frag_dropped",
     "Inbound IPv4 TCP fragments to an enrolled pod dropped: reassembled, a SYN would reach the "
     "app around the mesh (fail closed)"},
    {"sockmap_behind_tcp",
     "Pod-local hop sockets (--sockmap=on) moved to loopback TCP until their reader caught up: "
     "it had more than 4 MiB of redirected bytes waiting (sockmap backpressure)"},
    {"splice_refused",
     "Splice switches put off: the proxy's hop to the target app was on loopback TCP"},
    {"sockmap_caught_up",
     "Pod-local hop sockets back from loopback TCP to redirecting: their reader caught up"},
    {"splice_behind",
     "Spliced app sockets handed back to the proxy: the peer app had more than 4 MiB waiting"},
    {"ip4_tc_assign_failed_dropped",
     "Inbound IPv4 SYNs dropped: the kernel refused to assign them to the 15006 listener"},
    {"ip4_lookup_steered",
     "Inbound IPv4 SYNs on the tuple of a connection in TIME_WAIT steered to <pod-ip>:15006 "
     "(sk_lookup), not to the app's listener"},
    {"ip4_lookup_dropped",
     "Inbound IPv4 SYNs on the tuple of a connection in TIME_WAIT dropped: no <pod-ip>:15006 "
     "listener (fail closed: no agent runs)"},
    {"ip4_tc_cookie_assigned",
     "Inbound IPv4 ACKs that complete a SYN cookie of <pod-ip>:15006 (its SYN queue was full: a "
     "SYN flood) assigned to it, not to the app's listener, which would reset them"},
    {"tc_vlan_dropped",
     "Inbound frames to an enrolled pod dropped still VLAN-tagged (a second tag, or 802.1ad): "
     "the stack may strip a VLAN 0 tag after tc and deliver TCP the mesh never saw (fail "
     "closed)"},
}};

// sluice_sockmap_stats_v1 (enum sluice_sockmap_stat), in /config_dump "bpf"
// "sockmap" "stats" while --sockmap=on runs.
inline constexpr std::array<StatInfo, SLUICE_SOCKMAP_STAT_MAX> kSockmapStats = {{
    {"added_outbound_app", "App sockets to 127.0.0.1:15001 put in the sockhash"},
    {"added_outbound_proxy", "Proxy's accepted 127.0.0.1:15001 sockets put in the sockhash"},
    {"added_inbound_proxy", "Proxy's delivering sockets (inbound) put in the sockhash"},
    {"added_inbound_app", "App's accepted inbound sockets put in the sockhash"},
    {"add_failed", "Sockets the kernel refused to put in the sockhash (left on TCP)"},
    {"msg_redirected", "Sends moved straight to the peer socket (sk_msg ingress redirect)"},
    {"bytes_redirected", "Bytes of those sends"},
    {"msg_tcp", "Sends of sockhash sockets left on loopback TCP (peer not in the sockhash)"},
}};

// sluice_splice_stats_v1 (enum sluice_splice_stat): the same-node splice, in
// /config_dump "bpf" "sockmap" "splice" and sluice_bpf_splice_<name>_total.
inline constexpr std::array<StatInfo, SLUICE_SPLICE_STAT_MAX> kSpliceStats = {{
    {"switched", "Directions of same-node connections switched to straight app -> app"},
    {"bytes", "Bytes sent straight from app to app (spliced)"},
    {"ends", "Sends of a spliced app socket after its splice was torn down (to the proxy)"},
}};

}  // namespace sluice::agent::bpf
