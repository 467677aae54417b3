/* Structs and constants shared by the BPF programs and the C++ agent/proxy.
 * Includes nothing: the BPF side gets __u32 & co. from vmlinux.h, the C++ side
 * from <linux/types.h> (see common/bpf_abi.h, which also static_asserts sizes).
 * Multi-byte IP addresses and ports are stored in NETWORK byte order unless a
 * field comment says otherwise. */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

/* SO_MARK carried by every socket the proxy owns. The BPF programs never
 * redirect a socket whose mark matches (mark & SLUICE_MARK_MASK). */
#define SLUICE_MARK_MINE 0x5100
#define SLUICE_MARK_MASK 0xff00
/* Proxy -> app sockets on the inbound side (spoofed client source). The pod
 * netns has `ip rule fwmark 0x5101 lookup 151` + `local 0.0.0.0/0 dev lo table
 * 151`, and tcp_fwmark_accept=1 so the app's accepted socket inherits this mark:
 * its replies are delivered locally to the transparent proxy socket. */
#define SLUICE_MARK_INBOUND_APP 0x5101
#define SLUICE_INBOUND_ROUTE_TABLE 151

#define SLUICE_OUTBOUND_PORT 15001 /* 127.0.0.1:15001 in each enrolled pod netns */
#define SLUICE_INBOUND_PORT 15006  /* <pod-ip>:15006, transparent plaintext inbound */
#define SLUICE_HBONE_PORT 15008    /* <pod-ip>:15008, HBONE (mTLS) inbound */

#define SLUICE_MAX_ENROLLED 4096
#define SLUICE_MAX_PENDING 65536
#define SLUICE_MAX_EXCLUDED_PORTS 64

/* sluice_enrolled_v1: key = netns cookie (__u64). */
struct sluice_enrolled {
	__u32 pod_ip4; /* pod IPv4 address, network order; never redirected */
	__u32 flags;   /* reserved, zero */
};

/* Original destination of a redirected connection. Value of
 * sluice_cookie_dst_v1 (key: socket cookie), sluice_orig_dst_v1 and
 * sluice_sk_orig_dst_v1 (BPF_MAP_TYPE_SK_STORAGE: the client socket's own
 * record, written by connect4/6 and read by getpeername4/6). */
struct sluice_orig_dst {
	__u32 ip4;  /* original destination IPv4, network order */
	__u16 port; /* original destination port, network order */
	__u16 pad;  /* zero */
};

/* Key of sluice_orig_dst_v1: the redirected connection as seen from the
 * client socket inside the pod netns (src = client, dst = 127.0.0.1:15001).
 * The proxy rebuilds it from an accepted socket as (peer, local). */
struct sluice_pair_key {
	__u64 netns_cookie; /* netns the client socket lives in */
	__u32 src_ip4;      /* network order */
	__u32 dst_ip4;      /* network order */
	__u16 src_port;     /* network order */
	__u16 dst_port;     /* network order */
	__u32 pad;          /* zero */
};

/* IPv6 capture: twins of the maps above as maps of their own (new pins), so
 * an agent upgrade hands the IPv4 maps over unchanged. Addresses are four
 * 32-bit words in network order (the layout of struct in6_addr). */

/* sluice_enrolled6_v1: key = netns cookie (__u64), for an enrolled pod with
 * an IPv6 address (the proxy then listens on [::1]:15001, [pod-v6]:15006 and
 * [pod-v6]:15008). connect6 captures real IPv6 destinations only from such a
 * pod, and never its own address. */
struct sluice_enrolled6 {
	__u32 pod_ip6[4]; /* network order */
};

/* Original IPv6 destination: value of sluice_cookie_dst6_v1 (key: socket
 * cookie), sluice_orig_dst6_v1 and sluice_sk_orig_dst6_v1 (SK_STORAGE of the
 * client socket, read by getpeername6). */
struct sluice_orig_dst6 {
	__u32 ip6[4]; /* network order */
	__u16 port;   /* network order */
	__u16 pad;    /* zero */
};

/* Key of sluice_orig_dst6_v1: the connection from the client socket to
 * [::1]:15001 inside the pod netns; the proxy rebuilds it as (peer, local). */
struct sluice_pair_key6 {
	__u64 netns_cookie;
	__u32 src_ip6[4]; /* network order */
	__u32 dst_ip6[4]; /* network order */
	__u16 src_port;   /* network order */
	__u16 dst_port;   /* network order */
	__u32 pad;        /* zero */
};

/* Key of sluice_inbound_listeners (inbound.bpf.c: a SOCKHASH, one per agent
 * run, of the proxy's <pod-ip>:15006 listeners for sluice_sk_lookup, which
 * steers a SYN on the tuple of a connection in TIME_WAIT; the kernel drops an
 * entry when its socket closes): a pod address. */
struct sluice_addr_key {
	__u32 family;  /* AF_INET or AF_INET6 */
	__u32 addr[4]; /* network order; IPv4 in addr[0], the rest zero */
};

/* sluice_excluded_ports_v1: key = port (__u16, network order), value = __u8 1.
 * Destination ports never redirected by connect4/6 nor captured by tc. */

/* sluice_stats_v1: per-CPU array indexed by enum sluice_stat. Its size is
 * part of the pinned map: growing it makes a restarted agent refuse the pin
 * left by the previous build (libbpf compares max_entries). */
enum sluice_stat {
	SLUICE_STAT_CONNECT_SEEN = 0,       /* connect4/6 runs in enrolled netns */
	SLUICE_STAT_CONNECT_REDIRECTED = 1, /* rewritten to 127.0.0.1:15001 */
	SLUICE_STAT_CONNECT_SKIPPED = 2,    /* loopback, own IP, excluded, proxy socket */
	SLUICE_STAT_SOCKOPS_REKEYED = 3,    /* cookie record re-keyed by 4-tuple */
	SLUICE_STAT_GETSOCKOPT_ANSWERED = 4,/* SO_ORIGINAL_DST answered */
	SLUICE_STAT_TC_ASSIGNED = 5,        /* inbound SYN assigned to 15006 */
	SLUICE_STAT_TC_NO_LISTENER = 6,     /* IPv4 SYN, no 15006 listener: dropped */
	SLUICE_STAT_TC_PASSED = 7,          /* packets left alone */
	SLUICE_STAT_MAX = 8,
};

/* sluice_stats6_v1: per-CPU array of SLUICE_STATS6_SLOTS counters indexed by
 * enum sluice_stat6 (its own map: sluice_stats_v1 cannot grow). IPv6 events
 * are also counted in sluice_stats_v1 as IPv4 ones are (seen, redirected,
 * skipped, re-keyed, answered, assigned); these are the IPv6-only ones. The
 * spare slots let later counters come without changing the pin. */
#define SLUICE_STATS6_SLOTS 16
enum sluice_stat6 {
	SLUICE_STAT6_CONNECT_REDIRECTED = 0, /* real IPv6 rewritten to [::1]:15001 */
	SLUICE_STAT6_TC_ASSIGNED = 1,        /* IPv6 SYN assigned to [pod-v6]:15006 */
	SLUICE_STAT6_TC_NO_LISTENER = 2,     /* IPv6 SYN, no 15006 listener: dropped */
	SLUICE_STAT6_TC_ASSIGN_FAILED = 3,   /* IPv6 SYN, bpf_sk_assign refused: dropped */
	SLUICE_STAT6_TC_HIDDEN_DROPPED = 4,  /* IPv6 TCP behind a fragment header or >4 ext headers */
	SLUICE_STAT6_LOOKUP_STEERED = 5,     /* a TIME_WAIT tuple's SYN to [pod-v6]:15006 (sk_lookup) */
	SLUICE_STAT6_LOOKUP_DROPPED = 6,     /* the same, no [pod-v6]:15006 listener: dropped */
	SLUICE_STAT6_TC_COOKIE_ASSIGNED = 7, /* an ACK with a valid SYN cookie of [pod-v6]:15006 assigned to it */
	SLUICE_STAT6_MAX = 8,
};

/* sluice_stats4_v1: per-CPU array of SLUICE_STATS4_SLOTS counters indexed by
 * enum sluice_stat4: IPv4 counters (the sockmap programs are IPv4-only too)
 * that came after sluice_stats_v1 was pinned
 * (it cannot grow, see above; sluice_stats6_v1 is the IPv6 ones'). An agent
 * whose pin set lacks it (an upgrade from an earlier build) creates and pins
 * it beside the maps it re-uses. The spare slots let later counters come
 * without changing the pin. */
#define SLUICE_STATS4_SLOTS 16
enum sluice_stat4 {
	SLUICE_STAT4_TC_FRAG_DROPPED = 0, /* IPv4 TCP fragment (MF or an offset) to an enrolled pod */
	SLUICE_STAT4_SOCKMAP_BEHIND = 1,  /* hop sockets moved to TCP: reader fell behind */
	SLUICE_STAT4_SPLICE_REFUSED = 2,  /* splice switches put off: the target's hop is on TCP */
	SLUICE_STAT4_SOCKMAP_CAUGHT_UP = 3, /* hop sockets back from TCP: their reader caught up */
	SLUICE_STAT4_SPLICE_BEHIND = 4,   /* spliced sockets handed back to the proxy: peer behind */
	SLUICE_STAT4_TC_ASSIGN_FAILED = 5, /* IPv4 SYN, bpf_sk_assign refused: dropped */
	SLUICE_STAT4_LOOKUP_STEERED = 6,   /* a TIME_WAIT tuple's SYN to <pod-ip>:15006 (sk_lookup) */
	SLUICE_STAT4_LOOKUP_DROPPED = 7,   /* the same, no <pod-ip>:15006 listener: dropped */
	SLUICE_STAT4_TC_COOKIE_ASSIGNED = 8, /* an ACK with a valid SYN cookie of <pod-ip>:15006 assigned to it */
	SLUICE_STAT4_TC_VLAN_DROPPED = 9,  /* a frame still VLAN-tagged at tc (a second tag, or 802.1ad) */
	SLUICE_STAT4_MAX = 10,
};

/* Same-node acceleration (sockmap.bpf.c, loaded with --sockmap=on).
 * sluice_sockhash_v1: BPF_MAP_TYPE_SOCKHASH keyed by struct sluice_pair_key
 * read from the socket itself: src = its own end, dst = its peer (both in
 * the socket's netns). Holds the two ends of each pod-local hop: outbound the
 * app's socket to 127.0.0.1:15001 and the proxy's accepted one; inbound the
 * proxy's delivering socket and the app's accepted one (both carry
 * SLUICE_MARK_INBOUND_APP). Entries leave with their socket. */
#define SLUICE_MAX_SOCKHASH 65536

/* sluice_sk_msg_path_v1 (SK_STORAGE, __u8): which path a sending socket's
 * bytes take, decided at its first send. A reader takes redirected bytes
 * before TCP-queued ones, so a stream may go from redirect to TCP (its
 * redirected bytes are all queued by then); from TCP back to redirect only
 * once its reader has read every TCP byte (TCP_BEHIND, caught up), and a
 * stream that started on TCP stays there. */
enum sluice_msg_path {
	SLUICE_PATH_UNDECIDED = 0,
	SLUICE_PATH_REDIRECT = 1, /* peer was in the sockhash: ingress redirect */
	SLUICE_PATH_TCP = 2,      /* peer was not (yet) in it: loopback TCP */
	SLUICE_PATH_TCP_BEHIND = 3, /* was redirect; its reader fell behind: TCP until caught up */
};

/* Backpressure of redirected sends. An ingress redirect is charged to the
 * receiving socket but not limited by its receive buffer, so a sender faster
 * than its reader would queue until the node's tcp_mem runs out (and then
 * every TCP socket of the node is short of memory). A send that finds more
 * than this many bytes waiting in its target's redirect queue (the psock's
 * msg_tot_len) is still redirected; the sender's later sends take loopback
 * TCP, whose receive window pushes back. The bound is per socket: 4 MiB,
 * about what TCP's autotuning grants one receiver (tcp_rmem max 6 MiB). A
 * sender on TCP redirects again once its reader has caught up: every byte
 * it sent over TCP acknowledged and read, and under half the bound waiting
 * (sluice_redir_target_v1 remembers the reader). A spliced app -> app send
 * that finds more than SLUICE_SPLICE_QUEUE_LIMIT waiting for the peer app is handed back:
 * X's later sends go to the proxy's socket again (its own hop, bounded as
 * any), the proxy relays, and its hop to the slow app is bounded in turn; X
 * switches straight to Y again once the proxy has written on all it sent
 * and under half the bound waits for Y (sluice_splice_peer_v1 remembers Y). */
#define SLUICE_SOCKMAP_QUEUE_LIMIT (4u << 20)
/* A spliced pair's bound is larger: a hand-back puts the proxy, the slowest
 * part of the path, back in it, and a sender that never pauses is not seen
 * caught up again while it runs (docs/performance.md, stop 31). 16 MiB is
 * what one plain TCP connection may hold in its buffers (tcp_rmem max
 * 6 MiB + tcp_wmem max 4 MiB, both ends) with room for a reader that is
 * descheduled a few milliseconds. */
#define SLUICE_SPLICE_QUEUE_LIMIT (16u << 20)

/* sluice_hop_behind_v1 (LRU hash, key: an app socket's sockhash key, value
 * __u8 1): the proxy's hop socket sending to that app is on TCP
 * (SLUICE_PATH_TCP_BEHIND; it deletes the entry when it redirects again, the
 * agent at the pair's end). The other app's send that would switch a splice
 * to this app looks here first: its redirected bytes would overtake the
 * TCP-queued ones, so that direction stays with the proxy meanwhile.
 * sluice_redir_target_v1 (SK_STORAGE of a hop socket, struct redir_target in
 * sockmap.bpf.c): the socket its sends are redirected to and its cookie.
 * sluice_splice_peer_v1 (SK_STORAGE of a handed-back app socket, struct
 * splice_peer in sockmap.bpf.c): the peer app it was spliced to. */

/* sluice_sockmap_stats_v1: per-CPU array indexed by enum sluice_sockmap_stat
 * (its own map: sluice_stats_v1 cannot grow, see above). */
enum sluice_sockmap_stat {
	SLUICE_SOCKMAP_ADDED_OUT_APP = 0,   /* app socket to 127.0.0.1:15001 added */
	SLUICE_SOCKMAP_ADDED_OUT_PROXY = 1, /* proxy's accepted 15001 socket added */
	SLUICE_SOCKMAP_ADDED_IN_PROXY = 2,  /* proxy's delivering socket added */
	SLUICE_SOCKMAP_ADDED_IN_APP = 3,    /* app's accepted inbound socket added */
	SLUICE_SOCKMAP_ADD_FAILED = 4,      /* bpf_sock_hash_update refused */
	SLUICE_SOCKMAP_MSG_REDIRECTED = 5,  /* sendmsg calls redirected to the peer */
	SLUICE_SOCKMAP_BYTES_REDIRECTED = 6,/* bytes of those */
	SLUICE_SOCKMAP_MSG_TCP = 7,         /* sendmsg calls left on loopback TCP */
	SLUICE_SOCKMAP_STAT_MAX = 8,
};

/* Same-node splice (issue 11, sockmap.bpf.c): for a meshed pair on one node
 * the two apps' sockets X and Y are joined (X's sends ingress-redirected
 * straight into Y) once the proxy, which relays X -> its socket -> its
 * delivering socket -> Y until then, has written on every byte X sent.
 * Written by three owners, never one field by two:
 *  - sluice_splice_v1 (hash, key: X's sockhash key): the proxy arms and
 *    updates it (BPF_F_LOCK: in place, under the lock), BPF only reads it;
 *    deleting it ends the splice (X's next send goes to the proxy's socket,
 *    which the proxy has reset by then).
 *  - sluice_splice_sk_v1 (SK_STORAGE of X): BPF only (what X sent).
 *  - sluice_splice_bytes_v1 (hash, key: X's key): created and counted by
 *    BPF at the switch; the proxy reads it and deletes it once X is done. */
struct sluice_splice {
	struct bpf_spin_lock lock;
	__u32 armed;                 /* 1: switch once sent == forwarded */
	__u64 forwarded;             /* bytes of X the proxy has written on to Y's hop */
	struct sluice_pair_key peer; /* Y's sockhash key (redirect target) */
};

/* X's own count, from its first send (sockops creates it when X enters the
 * sockhash, so a socket of an earlier build, whose first bytes were never
 * counted, is never spliced). */
struct sluice_splice_sk {
	__u64 sent;    /* bytes X sent, through the proxy or spliced (its TCP
			* ones from its write_seq: sockmap.bpf.c) */
	__u32 counted; /* 1: counted from X's first byte */
	__u32 state;   /* enum sluice_splice_state */
};

enum sluice_splice_state {
	SLUICE_SPLICE_PROXIED = 0, /* through the proxy (armed or not) */
	SLUICE_SPLICE_ACTIVE = 1,  /* straight to Y (until Y falls behind: BEHIND) */
	SLUICE_SPLICE_ENDED = 2,   /* was active, the entry went: TCP to the proxy's socket */
	SLUICE_SPLICE_REFUSED = 3, /* not switched: the proxy's hop to Y is on TCP (until it catches up) */
	SLUICE_SPLICE_BEHIND = 4,  /* was active, Y fell behind: to the proxy again, which relays */
};

struct sluice_splice_bytes {
	__u64 spliced; /* bytes X sent straight to Y */
	__u64 msgs;    /* sends of those */
};

/* sluice_splice_stats_v1: per-CPU array indexed by enum sluice_splice_stat
 * (its own map: sluice_sockmap_stats_v1 cannot grow without a restarted agent
 * refusing the pin, see sluice_stat). */
enum sluice_splice_stat {
	SLUICE_SPLICE_SWITCHED = 0, /* directions switched to straight app -> app */
	SLUICE_SPLICE_BYTES = 1,    /* bytes sent straight app -> app */
	SLUICE_SPLICE_ENDS = 2,     /* sends of a spliced socket whose entry had gone */
	SLUICE_SPLICE_STAT_MAX = 3,
};
#define SLUICE_MAX_SPLICE 65536

#endif /* SLUICE_ABI_H */
