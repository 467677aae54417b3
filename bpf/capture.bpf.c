// SPDX-License-Identifier: GPL-2.0
/* Outbound capture, attached at the cgroup-v2 root (one object, three hooks
 * that share the redirect records):
 *  - cgroup/connect4, cgroup/connect6: a TCP connect() from an enrolled pod
 *    netns is rewritten to 127.0.0.1:15001 (the proxy's listener inside that
 *    same netns); the original destination is remembered by socket cookie.
 *  - sockops: once the client socket is established its 4-tuple is known;
 *    the record is re-keyed by (netns cookie, 4-tuple) so the proxy can find
 *    it from the accepted socket with one map lookup. A redirected socket
 *    also asks for state callbacks, so that its records go when it closes
 *    without the proxy having taken them (refused or reset: no agent).
 *  - cgroup/getsockopt: answers SOL_IP/SO_ORIGINAL_DST from the same record,
 *    for tools that expect the iptables-REDIRECT interface.
 *  - cgroup/getpeername4, cgroup/getpeername6: the client's getpeername()
 *    returns the original destination, not 127.0.0.1:15001, from a record
 *    kept in the client socket's own storage (freed with the socket). */
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
	if (sk)
		bpf_sk_storage_delete(&sluice_sk_orig_dst_v1, sk);
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

/* IPv6 sockets connecting to IPv4-mapped addresses (::ffff:a.b.c.d) are IPv4
 * on the wire; pure IPv6 destinations are not captured yet. */
SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 ||
	    ctx->user_ip6[2] != bpf_htonl(0x0000ffff)) {
		forget_peer(ctx);
		return 1;
	}
	__u32 dst_ip = ctx->user_ip6[3];
	__u16 dst_port = (__u16)ctx->user_port;
	if (!should_redirect(ctx, dst_ip, dst_port)) {
		forget_peer(ctx);
		return 1;
	}
	if (remember(ctx, dst_ip, dst_port) != 0)
		return 1;
	ctx->user_ip6[3] = bpf_htonl(0x7f000001);
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

/* A redirected client socket closes (new state TCP_CLOSE). Its cookie record
 * goes in every case (left only when it never established: refused, no
 * agent). The 4-tuple record goes when the socket closes from ESTABLISHED,
 * CLOSE_WAIT or LAST_ACK: reset before the proxy accepted it (the agent was
 * killed), or the proxy closed first (it took the record already). A client
 * that closed first (FIN_WAIT*, CLOSING) may still sit in the proxy's accept
 * queue with its bytes: that record stays for the proxy, and LRU eviction is
 * the cleanup when nobody ever accepts it. */
static __always_inline void forget_records(struct bpf_sock_ops *skops, __u32 old_state)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	bpf_map_delete_elem(&sluice_cookie_dst_v1, &cookie);
	if (old_state == BPF_TCP_ESTABLISHED || old_state == BPF_TCP_CLOSE_WAIT ||
	    old_state == BPF_TCP_LAST_ACK) {
		struct sluice_pair_key k = pair_key(skops);
		bpf_map_delete_elem(&sluice_orig_dst_v1, &k);
	}
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Before the SYN: a redirected socket wants to hear of its close. */
		cookie = bpf_get_socket_cookie(skops);
		if (bpf_map_lookup_elem(&sluice_cookie_dst_v1, &cookie))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
								 BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			forget_records(skops, skops->args[0]);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		break;
	default:
		return 1;
	}
	cookie = bpf_get_socket_cookie(skops);
	struct sluice_orig_dst *d = bpf_map_lookup_elem(&sluice_cookie_dst_v1, &cookie);
	if (!d)
		return 1;
	struct sluice_orig_dst copy = *d;
	struct sluice_pair_key k = pair_key(skops);
	bpf_map_update_elem(&sluice_orig_dst_v1, &k, &copy, BPF_ANY);
	bpf_map_delete_elem(&sluice_cookie_dst_v1, &cookie);
	sluice_count(SLUICE_STAT_SOCKOPS_REKEYED);
	return 1;
}

struct sluice_sockaddr_in {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

SEC("cgroup/getsockopt")
int sluice_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	/* Asked on the proxy's accepted socket: its peer is the client. */
	struct sluice_pair_key k = {
		.netns_cookie = bpf_get_netns_cookie(ctx),
		.src_ip4 = sk->dst_ip4,
		.dst_ip4 = sk->src_ip4,
		.src_port = (__u16)sk->dst_port,
		.dst_port = bpf_htons((__u16)sk->src_port),
	};
	struct sluice_orig_dst *d = bpf_map_lookup_elem(&sluice_orig_dst_v1, &k);
	if (!d)
		return 1;
	struct sluice_sockaddr_in *out = ctx->optval;
	if ((void *)(out + 1) > ctx->optval_end)
		return 1;
	out->family = AF_INET;
	out->port = d->port;
	out->addr = d->ip4;
	__builtin_memset(out->zero, 0, sizeof(out->zero));
	ctx->optlen = sizeof(*out);
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

/* connect6 redirects only IPv4-mapped destinations: answer in that form. */
SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr *ctx)
{
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
