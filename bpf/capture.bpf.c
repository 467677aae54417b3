// SPDX-License-Identifier: GPL-2.0
/* Outbound capture, attached at the cgroup-v2 root (one object, three hooks
 * that share the redirect records):
 *  - cgroup/connect4, cgroup/connect6: a TCP connect() from an enrolled pod
 *    netns is rewritten to 127.0.0.1:15001 (IPv4 and IPv4-mapped
 *    destinations) or [::1]:15001 (real IPv6 destinations of a pod with an
 *    IPv6 address), the proxy's listeners inside that same netns; the
 *    original destination is remembered by socket cookie. IPv6 records live
 *    in maps of their own (the *6_v1 twins).
 *  - sockops: once the client socket is established its 4-tuple is known;
 *    the record is re-keyed by (netns cookie, 4-tuple) so the proxy can find
 *    it from the accepted socket with one map lookup. A redirected socket
 *    also asks for state callbacks, so that its records go when it closes
 *    without the proxy having taken them (refused or reset: no agent).
 *  - cgroup/getsockopt: answers SOL_IP/SO_ORIGINAL_DST and
 *    SOL_IPV6/IP6T_SO_ORIGINAL_DST from the same records, for tools that
 *    expect the iptables-REDIRECT interface.
 *  - cgroup/getpeername4, cgroup/getpeername6: the client's getpeername()
 *    returns the original destination, not 127.0.0.1:15001 or [::1]:15001, from a record
 *    kept in the client socket's own storage (freed with the socket).
 *  - cgroup/getsockname4, cgroup/getsockname6: the same client's
 *    getsockname() names its pod address, not 127.0.0.1 or ::1 (the port
 *    stays its end of the loopback hop). */
#include "lib/common.h"

char LICENSE[] SEC("license") = "GPL";

/* Written by connect4/6, consumed by sockops. LRU: a connect() that never
 * establishes leaves its record behind, and eviction is the cleanup. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_MAX_PENDING);
	__type(key, __u64); /* socket cookie of the client socket */
	__type(value, struct sluice_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_cookie_dst_v1 SEC(".maps");

/* Written by sockops, read (and deleted) by the proxy on accept. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_MAX_PENDING);
	__type(key, struct sluice_pair_key);
	__type(value, struct sluice_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_orig_dst_v1 SEC(".maps");

/* Written by connect4/6 on the client socket, read by getpeername4/6. Socket
 * local storage lives and dies with the socket: nothing to expire, nothing
 * leaks. Pinned so that sockets redirected before an agent restart keep
 * answering. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sluice_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sk_orig_dst_v1 SEC(".maps");

/* The IPv6 twins of the three maps above. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_MAX_PENDING);
	__type(key, __u64);
	__type(value, struct sluice_orig_dst6);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_cookie_dst6_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_MAX_PENDING);
	__type(key, struct sluice_pair_key6);
	__type(value, struct sluice_orig_dst6);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_orig_dst6_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sluice_orig_dst6);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sk_orig_dst6_v1 SEC(".maps");

/* The pod's own IPv6 address, for enrolled pods that have one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_ENROLLED);
	__type(key, __u64); /* netns cookie */
	__type(value, struct sluice_enrolled6);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_enrolled6_v1 SEC(".maps");

/* Returns 1 when the socket belongs to the proxy. Why a getsockopt and not
 * ctx->sk->mark: bpf_sock.mark is only readable from cgroup/sock programs. */
static __always_inline int is_proxy_socket(void *ctx)
{
	__u32 mark = 0;
	if (bpf_getsockopt(ctx, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
		return 0;
	return (mark & SLUICE_MARK_MASK) == SLUICE_MARK_MINE;
}

/* Decides whether an IPv4 connect from an enrolled netns is redirected.
 * Returns 1 to redirect it, 0 to leave it alone. */
static __always_inline int should_redirect(void *ctx, __u32 dst_ip, __u16 dst_port)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct sluice_enrolled *e = bpf_map_lookup_elem(&sluice_enrolled_v1, &netns);
	if (!e)
		return 0;
	sluice_count(SLUICE_STAT_CONNECT_SEEN);
	if ((bpf_ntohl(dst_ip) >> 24) == 127 || dst_ip == e->pod_ip4 || dst_ip == 0 ||
	    sluice_port_excluded(dst_port) || is_proxy_socket(ctx)) {
		sluice_count(SLUICE_STAT_CONNECT_SKIPPED);
		return 0;
	}
	return 1;
}

static __always_inline int remember(struct bpf_sock_addr *ctx, __u32 dst_ip, __u16 dst_port)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sluice_orig_dst d = { .ip4 = dst_ip, .port = dst_port };
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return -1;
	struct sluice_orig_dst *stored = bpf_sk_storage_get(&sluice_sk_orig_dst_v1, sk, 0,
							    BPF_SK_STORAGE_GET_F_CREATE);
	if (!stored)
		return -1;
	*stored = d;
	if (bpf_map_update_elem(&sluice_cookie_dst_v1, &cookie, &d, BPF_ANY) != 0) {
		bpf_sk_storage_delete(&sluice_sk_orig_dst_v1, sk);
		return -1;
	}
	sluice_count(SLUICE_STAT_CONNECT_REDIRECTED);
	return 0;
}

/* A socket connect()s again after a failed attempt: a record from the earlier,
 * redirected attempt must not make getpeername() lie about this one. */
static __always_inline void forget_peer(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return;
	bpf_sk_storage_delete(&sluice_sk_orig_dst_v1, sk);
	if (ctx->user_family == AF_INET6)
		bpf_sk_storage_delete(&sluice_sk_orig_dst6_v1, sk);
}

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	__u32 dst_ip = ctx->user_ip4;
	__u16 dst_port = (__u16)ctx->user_port; /* network order in the low 16 bits */
	if (!should_redirect(ctx, dst_ip, dst_port)) {
		forget_peer(ctx);
		return 1;
	}
	if (remember(ctx, dst_ip, dst_port) != 0)
		return 1; /* no record => the proxy could not route it: leave it direct */
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(SLUICE_OUTBOUND_PORT);
	return 1;
}

static __always_inline int ip6_equal(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* Decides whether a connect to the real IPv6 destination dst (network-order
 * words) is redirected: only from an enrolled pod with an IPv6 address (the
 * proxy listens on its [::1]:15001), never to loopback, ::, link-local or
 * multicast addresses (the proxy could not reach them for the pod), the pod's
 * own address, an excluded port, nor from the proxy's own sockets. */
static __always_inline int should_redirect6(void *ctx, const __u32 *dst, __u16 dst_port)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&sluice_enrolled_v1, &netns))
		return 0;
	sluice_count(SLUICE_STAT_CONNECT_SEEN);
	struct sluice_enrolled6 *e6 = bpf_map_lookup_elem(&sluice_enrolled6_v1, &netns);
	__u32 first = bpf_ntohl(dst[0]);
	int loopback_or_any = dst[0] == 0 && dst[1] == 0 && dst[2] == 0 &&
			      (dst[3] == 0 || dst[3] == bpf_htonl(1));
	if (!e6 || loopback_or_any || (first >> 22) == (0xfe80 >> 6) /* fe80::/10 */ ||
	    (first >> 24) == 0xff /* ff00::/8 */ || ip6_equal(dst, e6->pod_ip6) ||
	    sluice_port_excluded(dst_port) || is_proxy_socket(ctx)) {
		sluice_count(SLUICE_STAT_CONNECT_SKIPPED);
		return 0;
	}
	return 1;
}

static __always_inline int remember6(struct bpf_sock_addr *ctx, const __u32 *dst, __u16 dst_port)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sluice_orig_dst6 d = { .ip6 = { dst[0], dst[1], dst[2], dst[3] }, .port = dst_port };
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return -1;
	struct sluice_orig_dst6 *stored = bpf_sk_storage_get(&sluice_sk_orig_dst6_v1, sk, 0,
							     BPF_SK_STORAGE_GET_F_CREATE);
	if (!stored)
		return -1;
	*stored = d;
	if (bpf_map_update_elem(&sluice_cookie_dst6_v1, &cookie, &d, BPF_ANY) != 0) {
		bpf_sk_storage_delete(&sluice_sk_orig_dst6_v1, sk);
		return -1;
	}
	sluice_count(SLUICE_STAT_CONNECT_REDIRECTED);
	sluice_count6(SLUICE_STAT6_CONNECT_REDIRECTED);
	return 0;
}

/* IPv4-mapped destinations (::ffff:a.b.c.d) are IPv4 on the wire: they go to
 * the IPv4 path's records and to 127.0.0.1:15001 (as ::ffff:127.0.0.1). Real
 * IPv6 destinations go to [::1]:15001 with records in the *6_v1 maps. */
SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	/* A record of an earlier, failed attempt of this socket (of either
	 * kind) must not make getpeername() lie about this one. */
	forget_peer(ctx);
	__u32 dst[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
	__u16 dst_port = (__u16)ctx->user_port;
	if (dst[0] == 0 && dst[1] == 0 && dst[2] == bpf_htonl(0x0000ffff)) {
		if (!should_redirect(ctx, dst[3], dst_port) || remember(ctx, dst[3], dst_port) != 0)
			return 1;
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(SLUICE_OUTBOUND_PORT);
		return 1;
	}
	if (!should_redirect6(ctx, dst, dst_port) || remember6(ctx, dst, dst_port) != 0)
		return 1; /* no record => the proxy could not route it: leave it direct */
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = 0;
	ctx->user_ip6[3] = bpf_htonl(1);
	ctx->user_port = bpf_htons(SLUICE_OUTBOUND_PORT);
	return 1;
}

/* The record's key as sockops sees the client socket. Byte order:
 * remote_port holds the be16 port shifted left by 16; local_port is in host
 * order. */
static __always_inline struct sluice_pair_key pair_key(struct bpf_sock_ops *skops)
{
	struct sluice_pair_key k = {
		.netns_cookie = bpf_get_netns_cookie(skops),
		.src_ip4 = skops->local_ip4,
		.dst_ip4 = skops->remote_ip4,
		.src_port = bpf_htons((__u16)skops->local_port),
		.dst_port = (__u16)(skops->remote_port >> 16),
	};
	return k;
}

/* 1 for a socket of real IPv6 addresses (its records are in the *6_v1
 * maps); an IPv6 socket connected to an IPv4-mapped address is IPv4 here. */
static __always_inline int real_ip6(struct bpf_sock_ops *skops)
{
	return skops->family == AF_INET6 &&
	       !(skops->remote_ip6[0] == 0 && skops->remote_ip6[1] == 0 &&
		 skops->remote_ip6[2] == bpf_htonl(0x0000ffff));
}

static __always_inline struct sluice_pair_key6 pair_key6(struct bpf_sock_ops *skops)
{
	struct sluice_pair_key6 k = {
		.netns_cookie = bpf_get_netns_cookie(skops),
		.src_ip6 = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
			     skops->local_ip6[3] },
		.dst_ip6 = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
			     skops->remote_ip6[3] },
		.src_port = bpf_htons((__u16)skops->local_port),
		.dst_port = (__u16)(skops->remote_port >> 16),
	};
	return k;
}

/* A redirected client socket closes (new state TCP_CLOSE). Its cookie record
 * goes in every case (left only when it never established: refused, no
 * agent). The 4-tuple record goes when the socket closes from ESTABLISHED,
 * CLOSE_WAIT or LAST_ACK: reset before the proxy accepted it (the agent was
 * killed), or the proxy closed first (it took the record already). A client
 * that closed first (FIN_WAIT*, CLOSING) may still sit in the proxy's accept
 * queue with its bytes: that record stays for the proxy, and LRU eviction is
 * the cleanup when nobody ever accepts it. The same for both families. */
static __always_inline void forget_records(struct bpf_sock_ops *skops, __u32 old_state)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	int v6 = real_ip6(skops);
	if (v6)
		bpf_map_delete_elem(&sluice_cookie_dst6_v1, &cookie);
	else
		bpf_map_delete_elem(&sluice_cookie_dst_v1, &cookie);
	if (old_state != BPF_TCP_ESTABLISHED && old_state != BPF_TCP_CLOSE_WAIT &&
	    old_state != BPF_TCP_LAST_ACK)
		return;
	if (v6) {
		struct sluice_pair_key6 k6 = pair_key6(skops);
		bpf_map_delete_elem(&sluice_orig_dst6_v1, &k6);
	} else {
		struct sluice_pair_key k = pair_key(skops);
		bpf_map_delete_elem(&sluice_orig_dst_v1, &k);
	}
}

/* Established: the cookie record becomes the 4-tuple record. */
static __always_inline void rekey4(struct bpf_sock_ops *skops, __u64 cookie)
{
	struct sluice_orig_dst *d = bpf_map_lookup_elem(&sluice_cookie_dst_v1, &cookie);
	if (!d)
		return;
	struct sluice_orig_dst copy = *d;
	struct sluice_pair_key k = pair_key(skops);
	bpf_map_update_elem(&sluice_orig_dst_v1, &k, &copy, BPF_ANY);
	bpf_map_delete_elem(&sluice_cookie_dst_v1, &cookie);
	sluice_count(SLUICE_STAT_SOCKOPS_REKEYED);
}

static __always_inline void rekey6(struct bpf_sock_ops *skops, __u64 cookie)
{
	struct sluice_orig_dst6 *d = bpf_map_lookup_elem(&sluice_cookie_dst6_v1, &cookie);
	if (!d)
		return;
	struct sluice_orig_dst6 copy = *d;
	struct sluice_pair_key6 k = pair_key6(skops);
	bpf_map_update_elem(&sluice_orig_dst6_v1, &k, &copy, BPF_ANY);
	bpf_map_delete_elem(&sluice_cookie_dst6_v1, &cookie);
	sluice_count(SLUICE_STAT_SOCKOPS_REKEYED);
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Before the SYN: a redirected socket wants to hear of its close. */
		cookie = bpf_get_socket_cookie(skops);
		if (real_ip6(skops) ? bpf_map_lookup_elem(&sluice_cookie_dst6_v1, &cookie) != 0
				    : bpf_map_lookup_elem(&sluice_cookie_dst_v1, &cookie) != 0)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
								 BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			forget_records(skops, skops->args[0]);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(skops);
		if (real_ip6(skops))
			rekey6(skops, cookie);
		else
			rekey4(skops, cookie);
		return 1;
	default:
		return 1;
	}
}

struct sluice_sockaddr_in {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

struct sluice_sockaddr_in6 {
	__u16 family;
	__u16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

/* Asked on the proxy's accepted socket: its peer is the client. */
static __always_inline int original_dst4(struct bpf_sockopt *ctx, struct bpf_sock *sk)
{
	struct sluice_pair_key k = {
		.netns_cookie = bpf_get_netns_cookie(ctx),
		.src_ip4 = sk->dst_ip4,
		.dst_ip4 = sk->src_ip4,
		.src_port = (__u16)sk->dst_port,
		.dst_port = bpf_htons((__u16)sk->src_port),
	};
	struct sluice_orig_dst *d = bpf_map_lookup_elem(&sluice_orig_dst_v1, &k);
	if (!d)
		return 0;
	struct sluice_sockaddr_in *out = ctx->optval;
	if ((void *)(out + 1) > ctx->optval_end)
		return 0;
	out->family = AF_INET;
	out->port = d->port;
	out->addr = d->ip4;
	__builtin_memset(out->zero, 0, sizeof(out->zero));
	ctx->optlen = sizeof(*out);
	return 1;
}

static __always_inline int original_dst6(struct bpf_sockopt *ctx, struct bpf_sock *sk)
{
	struct sluice_pair_key6 k = {
		.netns_cookie = bpf_get_netns_cookie(ctx),
		.src_ip6 = { sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3] },
		.dst_ip6 = { sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3] },
		.src_port = (__u16)sk->dst_port,
		.dst_port = bpf_htons((__u16)sk->src_port),
	};
	struct sluice_orig_dst6 *d = bpf_map_lookup_elem(&sluice_orig_dst6_v1, &k);
	if (!d)
		return 0;
	struct sluice_sockaddr_in6 *out = ctx->optval;
	if ((void *)(out + 1) > ctx->optval_end)
		return 0;
	out->family = AF_INET6;
	out->port = d->port;
	out->flowinfo = 0;
	out->addr[0] = d->ip6[0];
	out->addr[1] = d->ip6[1];
	out->addr[2] = d->ip6[2];
	out->addr[3] = d->ip6[3];
	out->scope_id = 0;
	ctx->optlen = sizeof(*out);
	return 1;
}

/* SOL_IP/SO_ORIGINAL_DST and SOL_IPV6/IP6T_SO_ORIGINAL_DST (both 80). */
SEC("cgroup/getsockopt")
int sluice_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	int answered = ctx->level == SOL_IP ? original_dst4(ctx, sk) : original_dst6(ctx, sk);
	if (!answered)
		return 1;
	ctx->retval = 0;
	sluice_count(SLUICE_STAT_GETSOCKOPT_ANSWERED);
	return 1;
}

/* The client's own view of its redirected socket: its peer is the original
 * destination. Only sockets connect4/6 redirected carry a record; every other
 * socket (the proxy's, accepted ones, pods not enrolled) is left alone. */
static __always_inline struct sluice_orig_dst *redirected_to(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || ctx->type != SOCK_STREAM)
		return 0;
	return bpf_sk_storage_get(&sluice_sk_orig_dst_v1, sk, 0, 0);
}

SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr *ctx)
{
	struct sluice_orig_dst *d = redirected_to(ctx);
	if (!d)
		return 1;
	ctx->user_ip4 = d->ip4;
	ctx->user_port = d->port;
	return 1;
}

/* A real IPv6 destination is answered from its own record; an IPv4-mapped one
 * in the form the client asked for (::ffff:a.b.c.d). */
SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || ctx->type != SOCK_STREAM)
		return 1;
	struct sluice_orig_dst6 *d6 = bpf_sk_storage_get(&sluice_sk_orig_dst6_v1, sk, 0, 0);
	if (d6) {
		ctx->user_ip6[0] = d6->ip6[0];
		ctx->user_ip6[1] = d6->ip6[1];
		ctx->user_ip6[2] = d6->ip6[2];
		ctx->user_ip6[3] = d6->ip6[3];
		ctx->user_port = d6->port;
		return 1;
	}
	struct sluice_orig_dst *d = redirected_to(ctx);
	if (!d)
		return 1;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
	ctx->user_ip6[3] = d->ip4;
	ctx->user_port = d->port;
	return 1;
}

/* A captured client's own address is its pod's, as without the mesh (the
 * port is its end of the hop to the proxy: the server sees the proxy's). */
SEC("cgroup/getsockname4")
int sluice_getsockname4(struct bpf_sock_addr *ctx)
{
	if (!redirected_to(ctx))
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct sluice_enrolled *e = bpf_map_lookup_elem(&sluice_enrolled_v1, &netns);
	if (e && e->pod_ip4)
		ctx->user_ip4 = e->pod_ip4;
	return 1;
}

/* A real IPv6 connection names the pod's IPv6 address; an IPv4-mapped one
 * the pod's IPv4 address in that form (::ffff:a.b.c.d). */
SEC("cgroup/getsockname6")
int sluice_getsockname6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || ctx->type != SOCK_STREAM)
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);
	if (bpf_sk_storage_get(&sluice_sk_orig_dst6_v1, sk, 0, 0)) {
		struct sluice_enrolled6 *e6 = bpf_map_lookup_elem(&sluice_enrolled6_v1, &netns);
		if (!e6)
			return 1;
		ctx->user_ip6[0] = e6->pod_ip6[0];
		ctx->user_ip6[1] = e6->pod_ip6[1];
		ctx->user_ip6[2] = e6->pod_ip6[2];
		ctx->user_ip6[3] = e6->pod_ip6[3];
		return 1;
	}
	if (!redirected_to(ctx))
		return 1;
	struct sluice_enrolled *e = bpf_map_lookup_elem(&sluice_enrolled_v1, &netns);
	if (!e || !e->pod_ip4)
		return 1;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
	ctx->user_ip6[3] = e->pod_ip4;
	return 1;
}
