// SPDX-License-Identifier: GPL-2.0
/* Same-node acceleration (--sockmap=on): the pod-local hops between an app
 * and the proxy skip the loopback TCP stack.
 *  - sockops (a second program at the cgroup-v2 root, beside capture's):
 *    when a socket of a pod-local hop is established it goes into
 *    sluice_sockhash_v1, keyed by its own 4-tuple and netns.
 *  - sk_msg (attached to that sockhash): a send on such a socket is moved
 *    straight into its peer's receive queue (ingress redirect). The proxy
 *    still reads every byte from its socket; only the kernel path changes.
 * Only data is redirected: handshake, FIN and RST still travel over TCP, and
 * a socket leaves the sockhash when it closes. A sender whose reader falls
 * behind moves to TCP (SLUICE_SOCKMAP_QUEUE_LIMIT). */
#include "lib/common.h"
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SLUICE_MAX_SOCKHASH);
	__type(key, struct sluice_pair_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sockhash_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8); /* enum sluice_msg_path */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sk_msg_path_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_SOCKMAP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sockmap_stats_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_SPLICE);
	__type(key, struct sluice_pair_key);
	__type(value, struct sluice_splice);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_splice_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sluice_splice_sk);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_splice_sk_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_SPLICE);
	__type(key, struct sluice_pair_key);
	__type(value, struct sluice_splice_bytes);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_splice_bytes_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_SPLICE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_splice_stats_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_MAX_SPLICE);
	__type(key, struct sluice_pair_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_hop_behind_v1 SEC(".maps");

/* The socket a hop socket's sends are redirected to, as found at its first
 * redirect (a hop's peer never changes), to see later whether it caught up. */
struct redir_target {
	__u64 sk;     /* its struct sock, a plain number: read with probe reads only */
	__u64 cookie; /* its socket cookie then: the same socket still, if equal */
	__u32 flags;  /* REDIR_* (was a __u64 went_tcp: the same bit 0 on little endian) */
	__u32 seq;    /* REDIR_SEQ: its write_seq when its TCP bytes were last counted */
};

/* It has sent over TCP (TCP_BEHIND) at least once. */
#define REDIR_WENT_TCP 1
/* An app socket whose TCP bytes are counted from its write_seq (from its
 * handshake on): its splice `sent` is exact whatever took TCP. */
#define REDIR_SEQ 2

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct redir_target);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_redir_target_v1 SEC(".maps");

/* The peer app a spliced app socket was handed back from (its reader fell
 * behind), to see later whether it caught up. */
struct splice_peer {
	__u64 sk;     /* its struct sock, a plain number: read with probe reads only */
	__u64 cookie; /* its socket cookie then */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct splice_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_splice_peer_v1 SEC(".maps");

/* Bytes waiting in `target`'s redirect queue (its psock's msg_tot_len); 0 when
 * unknown. Probe reads: a read that fails gives 0. */
static __always_inline __u32 queued_at(struct sock *target)
{
	unsigned long user_data = 0;
	__u32 queued = 0;
	/* A kernel without the counter (it came with FIONREAD for sockmap:
	 * 6.18.14, 6.12.75, 6.6.128, 6.19): no bound. The loader says so
	 * (/config_dump bpf.sockmap.detail). */
	if (!bpf_core_field_exists(((struct sk_psock *)0)->msg_tot_len))
		return 0;
	if (!target || bpf_probe_read_kernel(&user_data, sizeof(user_data), &target->sk_user_data))
		return 0;
	/* sk_user_data's low bits are flags; SK_USER_DATA_PSOCK (4): a psock. */
	if (!(user_data & 4))
		return 0;
	struct sk_psock *psock = (void *)(user_data & ~7UL);
	if (bpf_probe_read_kernel(&queued, sizeof(queued), &psock->msg_tot_len))
		return 0;
	return queued;
}

/* The socket this send was just redirected to: bpf_msg_redirect_hash left it
 * in the kernel's struct sk_msg (the context); held by the sockhash for this
 * program's run. */
static __always_inline struct sock *redirect_target(struct sk_msg_md *md)
{
	struct sk_msg *msg = (void *)md;
	struct sock *target = 0;
	if (bpf_probe_read_kernel(&target, sizeof(target), &msg->sk_redir))
		return 0;
	return target;
}

/* A socket's cookie (sockops gave every hop socket one); 0 when unread. */
static __always_inline __u64 cookie_of(struct sock *s)
{
	__u64 c = 0;
	if (!s || bpf_probe_read_kernel(&c, sizeof(c), &s->__sk_common.skc_cookie))
		return 0;
	return c;
}

/* Whether the socket remembered as (sk, cookie) is still that socket. */
static __always_inline int still_there(__u64 sk, __u64 cookie)
{
	return cookie && cookie_of((struct sock *)sk) == cookie;
}

/* Remembers `target` (the socket this send was redirected to) in t, once. */
static __always_inline void remember_target(struct redir_target *t, struct sock *target)
{
	__u64 c = cookie_of(target);
	if (t->sk || !c)
		return;
	t->sk = (__u64)target;
	t->cookie = c;
}

/* Whether the reader `sk` (a plain number, probe reads) has read its TCP
 * receive queue to the end: copied_seq == rcv_nxt. */
static __always_inline int tcp_queue_read(__u64 sk)
{
	struct tcp_sock *tp = (void *)sk;
	__u32 copied = 0, rcv_nxt = 0;
	return !bpf_probe_read_kernel(&copied, sizeof(copied), &tp->copied_seq) &&
	       !bpf_probe_read_kernel(&rcv_nxt, sizeof(rcv_nxt), &tp->rcv_nxt) && copied == rcv_nxt;
}

/* A sender on TCP_BEHIND may redirect again once nothing it sent over TCP can
 * still be read after a redirected byte: all of it acknowledged by its reader
 * (so in the reader's TCP queue), that queue read to the end, and the
 * reader's redirect queue under half the bound. Runs under the sender's lock. */
static __always_inline int caught_up(struct bpf_sock *sk, struct redir_target *t)
{
	struct tcp_sock *own = bpf_skc_to_tcp_sock(sk);
	if (!own || own->write_seq != own->snd_una)
		return 0;
	if (!still_there(t->sk, t->cookie))
		return 0; /* gone: stay on TCP (reset by then) */
	return tcp_queue_read(t->sk) && queued_at((struct sock *)t->sk) < SLUICE_SOCKMAP_QUEUE_LIMIT / 2;
}

static __always_inline void splice_count(__u32 stat, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sluice_splice_stats_v1, &stat);
	if (v)
		*v += n;
}

static __always_inline void sockmap_count(__u32 stat, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sluice_sockmap_stats_v1, &stat);
	if (v)
		*v += n;
}

/* Which end of a pod-local hop this just-established socket is, as the stat
 * counting its insertion; -1 when it is none. Outbound: the app's socket to
 * 127.0.0.1:15001 (active) and the proxy's accepted one (passive). Inbound:
 * both ends carry SLUICE_MARK_INBOUND_APP (the proxy sets it on its
 * delivering socket; the app's accepted socket inherits it from the SYN). */
static __always_inline int hop_end(struct bpf_sock_ops *skops, int active)
{
	const __u32 loopback = bpf_htonl(0x7f000001);
	if (active && skops->remote_ip4 == loopback &&
	    (__u16)(skops->remote_port >> 16) == bpf_htons(SLUICE_OUTBOUND_PORT))
		return SLUICE_SOCKMAP_ADDED_OUT_APP;
	if (!active && skops->local_ip4 == loopback && skops->local_port == SLUICE_OUTBOUND_PORT)
		return SLUICE_SOCKMAP_ADDED_OUT_PROXY;
	__u32 mark = 0;
	if (bpf_getsockopt(skops, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0 &&
	    mark == SLUICE_MARK_INBOUND_APP)
		return active ? SLUICE_SOCKMAP_ADDED_IN_PROXY : SLUICE_SOCKMAP_ADDED_IN_APP;
	return -1;
}

/* IPv4, or an IPv6 socket talking IPv4 (v4-mapped: what a dual-stack [::]
 * listener accepts, or an app's AF_INET6 socket captured by connect6); the
 * IPv4 fields of both program contexts hold its addresses then. */
static __always_inline int talks_ipv4(struct bpf_sock_ops *skops)
{
	if (skops->family == AF_INET)
		return 1;
	return skops->family == AF_INET6 && skops->remote_ip6[0] == 0 &&
	       skops->remote_ip6[1] == 0 && skops->remote_ip6[2] == bpf_htonl(0x0000ffff);
}

/* A proxy hop socket closes: the entry its falling behind left for the app
 * it sends to (keyed by that app's socket) goes with it. A pair the agent
 * spliced has its entries erased at its end; this is every other pair's. */
static __always_inline void forget_hop_behind(struct bpf_sock_ops *skops)
{
	struct sluice_pair_key app = {
		.netns_cookie = bpf_get_netns_cookie(skops),
		.src_ip4 = skops->remote_ip4,
		.dst_ip4 = skops->local_ip4,
		.src_port = (__u16)(skops->remote_port >> 16),
		.dst_port = bpf_htons((__u16)skops->local_port),
	};
	bpf_map_delete_elem(&sluice_hop_behind_v1, &app);
}

SEC("sockops")
int sluice_sockmap_sockops(struct bpf_sock_ops *skops)
{
	int active;
	if (skops->op == BPF_SOCK_OPS_STATE_CB) {
		if (skops->args[1] == BPF_TCP_CLOSE && talks_ipv4(skops))
			forget_hop_behind(skops);
		return 1;
	}
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		active = 1;
	else if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		active = 0;
	else
		return 1;
	if (!talks_ipv4(skops))
		return 1;
	__u64 netns = bpf_get_netns_cookie(skops);
	if (!bpf_map_lookup_elem(&sluice_enrolled_v1, &netns))
		return 1;
	int end = hop_end(skops, active);
	if (end < 0)
		return 1;
	/* Byte order: local_port is host order, remote_port the be16 port
	 * shifted left by 16 (PLATFORM.md). */
	struct sluice_pair_key k = {
		.netns_cookie = netns,
		.src_ip4 = skops->local_ip4,
		.dst_ip4 = skops->remote_ip4,
		.src_port = bpf_htons((__u16)skops->local_port),
		.dst_port = (__u16)(skops->remote_port >> 16),
	};
	if (bpf_sock_hash_update(skops, &sluice_sockhash_v1, &k, BPF_ANY) != 0) {
		sockmap_count(SLUICE_SOCKMAP_ADD_FAILED, 1);
		return 1;
	}
	sockmap_count(end, 1);
	/* Its cookie now (the kernel makes one on first use): the sk_msg program
	 * tells the socket it remembers from a later one by it. */
	bpf_get_socket_cookie(skops);
	/* A proxy's end hears of its close (forget_hop_behind). */
	if (end == SLUICE_SOCKMAP_ADDED_OUT_PROXY || end == SLUICE_SOCKMAP_ADDED_IN_PROXY)
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
	/* An app's end may be spliced later: count its bytes from the first. */
	if (end == SLUICE_SOCKMAP_ADDED_OUT_APP || end == SLUICE_SOCKMAP_ADDED_IN_APP) {
		struct bpf_sock *sk = skops->sk;
		/* One load, checked: clang would otherwise load the field
		 * again for the call, unchecked for the verifier. */
		asm volatile("" : "+r"(sk));
		if (sk) {
			struct sluice_splice_sk *st = bpf_sk_storage_get(
				&sluice_splice_sk_v1, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
			if (st)
				st->counted = 1;
			/* Its TCP bytes are counted from write_seq on: from the
			 * first byte after the SYN (data queued before the
			 * handshake ended is counted too). */
			struct redir_target *t = bpf_sk_storage_get(
				&sluice_redir_target_v1, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
			if (t) {
				t->seq = skops->snd_una;
				t->flags |= REDIR_SEQ;
			}
		}
	}
	return 1;
}

/* The splice of a counted app socket (struct sluice_splice). Returns 1 when
 * this send was redirected straight to the peer app. The switch happens in
 * the send that finds sent == forwarded: that send runs under X's socket
 * lock, so X has nothing in flight, and the proxy has written on every byte
 * X sent before; what X sends from now on lands behind them in Y's queue. */
static __always_inline int splice_send(struct bpf_sock *sk, struct sluice_splice_sk *st,
				       struct sluice_pair_key *own, struct sk_msg_md *msg,
				       __u32 size, int counted_all)
{
	if (!sk || st->state == SLUICE_SPLICE_ENDED)
		return 0;
	struct sluice_splice *e = bpf_map_lookup_elem(&sluice_splice_v1, own);
	if (!e) {
		if (st->state == SLUICE_SPLICE_ACTIVE) {
			/* Torn down (policy, pod gone, agent restart): from now on
			 * to the proxy's socket over TCP, reset by then. */
			st->state = SLUICE_SPLICE_ENDED;
			splice_count(SLUICE_SPLICE_ENDS, 1);
		}
		return 0;
	}
	struct sluice_pair_key peer;
	__u64 forwarded;
	__u32 armed;
	bpf_spin_lock(&e->lock);
	peer = e->peer;
	forwarded = e->forwarded;
	armed = e->armed;
	bpf_spin_unlock(&e->lock);
	/* Proxied or refused: straight to Y once the proxy has written on
	 * all X sent. */
	struct sluice_splice_bytes *b = bpf_map_lookup_elem(&sluice_splice_bytes_v1, own);
	__u64 spliced = b ? b->spliced : 0;
	if (st->state != SLUICE_SPLICE_ACTIVE) {
		if (!armed || forwarded + spliced != st->sent || !counted_all)
			return 0;
		/* Handed back: straight again only once Y has read most of what
		 * waits for it (else every send would switch and hand back) and
		 * all of its TCP queue (the proxy's hop to Y went to TCP after
		 * the hand-back: checked here too, not only by the LRU entry
		 * below, which could have been evicted). */
		if (st->state == SLUICE_SPLICE_BEHIND) {
			struct splice_peer *y = bpf_sk_storage_get(&sluice_splice_peer_v1, sk, 0, 0);
			if (!y || !still_there(y->sk, y->cookie) || !tcp_queue_read(y->sk) ||
			    queued_at((struct sock *)y->sk) >= SLUICE_SOCKMAP_QUEUE_LIMIT / 2)
				return 0;
		}
		/* The proxy's hop to Y is on TCP: bytes of it may still wait in
		 * Y's TCP queue, which Y reads after redirected ones. Again
		 * once that hop has caught up and redirects (it deletes this).
		 * A handed-back X stays BEHIND (its checks above still apply). */
		if (bpf_map_lookup_elem(&sluice_hop_behind_v1, &peer)) {
			if (st->state == SLUICE_SPLICE_PROXIED) {
				st->state = SLUICE_SPLICE_REFUSED;
				sluice_count4(SLUICE_STAT4_SPLICE_REFUSED);
			}
			return 0;
		}
	}
	if (bpf_msg_redirect_hash(msg, &sluice_sockhash_v1, &peer, BPF_F_INGRESS) != SK_PASS) {
		/* The peer app's socket has closed: nothing to splice to. */
		if (st->state == SLUICE_SPLICE_ACTIVE) {
			st->state = SLUICE_SPLICE_ENDED;
			splice_count(SLUICE_SPLICE_ENDS, 1);
		}
		return 0;
	}
	if (st->state != SLUICE_SPLICE_ACTIVE) {
		st->state = SLUICE_SPLICE_ACTIVE;
		if (!b) {
			struct sluice_splice_bytes zero = {};
			bpf_map_update_elem(&sluice_splice_bytes_v1, own, &zero, BPF_NOEXIST);
			b = bpf_map_lookup_elem(&sluice_splice_bytes_v1, own);
		}
		splice_count(SLUICE_SPLICE_SWITCHED, 1);
	}
	if (b) {
		__sync_fetch_and_add(&b->spliced, size);
		__sync_fetch_and_add(&b->msgs, 1);
	}
	splice_count(SLUICE_SPLICE_BYTES, size);
	struct sock *target = redirect_target(msg);
	if (queued_at(target) > SLUICE_SPLICE_QUEUE_LIMIT) {
		/* Y fell behind: this send still queues for Y; from the next on
		 * X sends to the proxy's socket again (its own hop, bounded as
		 * any) and the proxy relays, its hop to Y bounded in turn. Y
		 * reads what waits in its redirect queue first: the order holds. */
		st->state = SLUICE_SPLICE_BEHIND;
		sluice_count4(SLUICE_STAT4_SPLICE_BEHIND);
		struct splice_peer *y = bpf_sk_storage_get(&sluice_splice_peer_v1, sk, 0,
							   BPF_SK_STORAGE_GET_F_CREATE);
		if (y) {
			y->sk = (__u64)target;
			y->cookie = cookie_of(target);
		}
	}
	return 1;
}

/* Runs on every send of a socket in the sockhash. The peer's key is this
 * socket's own 4-tuple reversed (same netns). A socket's first send decides
 * its path for good: when the peer is not in the sockhash yet (the app wrote
 * before the proxy's side finished its handshake), that stream stays on TCP,
 * since the reader would otherwise take later redirected bytes before the
 * earlier TCP ones. */
SEC("sk_msg")
int sluice_sk_msg(struct sk_msg_md *msg)
{
	__u8 *path = 0;
	struct bpf_sock *sk = msg->sk;
	__u32 size = msg->size;
	struct sluice_splice_sk *st = 0;
	struct redir_target *t = 0;
	if (sk)
		st = bpf_sk_storage_get(&sluice_splice_sk_v1, sk, 0, 0);
	struct sluice_splice_sk *by_seq = 0;
	if (st && st->counted) {
		/* Not every byte sent over TCP passes this program: after a TCP
		 * push that failed, tcp_bpf keeps the last verdict for the next
		 * send without running it. So a socket's TCP bytes are counted
		 * from its write_seq (REDIR_SEQ, set at its handshake), its
		 * redirected ones here; a socket without (its handshake was
		 * before this program) counts every send here and is never
		 * spliced once it sent over TCP: its `sent` may be short, and a
		 * switch on it could overtake bytes the proxy still holds. (A
		 * spliced send, the hot path, needs neither storage: while
		 * spliced nothing goes over TCP.) */
		int counted_all = 1;
		if (st->state != SLUICE_SPLICE_ACTIVE && sk) {
			t = bpf_sk_storage_get(&sluice_redir_target_v1, sk, 0,
					       BPF_SK_STORAGE_GET_F_CREATE);
			path = bpf_sk_storage_get(&sluice_sk_msg_path_v1, sk, 0,
						  BPF_SK_STORAGE_GET_F_CREATE);
			struct tcp_sock *tp = t && (t->flags & REDIR_SEQ) ? bpf_skc_to_tcp_sock(sk) : 0;
			if (t && tp) {
				/* Under X's lock; a u32 difference: far less
				 * than 4 GiB go over TCP between two runs. */
				__u32 w = tp->write_seq;
				st->sent += (__u32)(w - t->seq);
				t->seq = w;
				by_seq = st;
			}
			counted_all = by_seq || (t && !(t->flags & REDIR_WENT_TCP) && path &&
						 *path != SLUICE_PATH_TCP);
		}
		struct sluice_pair_key own = {
			.netns_cookie = bpf_get_netns_cookie(msg),
			.src_ip4 = msg->local_ip4,
			.dst_ip4 = msg->remote_ip4,
			.src_port = bpf_htons((__u16)msg->local_port),
			.dst_port = (__u16)(msg->remote_port >> 16),
		};
		int spliced = splice_send(sk, st, &own, msg, size, counted_all);
		/* Under X's socket lock: no other send of X runs. By write_seq,
		 * this send is counted here only if redirected (below). */
		if (spliced || !by_seq)
			st->sent += size;
		if (spliced)
			return SK_PASS;
		if (st->state == SLUICE_SPLICE_ENDED)
			return SK_PASS; /* TCP: the proxy's reset socket answers */
	}
	if (sk && !t)
		t = bpf_sk_storage_get(&sluice_redir_target_v1, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (sk && !path)
		path = bpf_sk_storage_get(&sluice_sk_msg_path_v1, sk, 0,
					  BPF_SK_STORAGE_GET_F_CREATE);
	if (!path || *path == SLUICE_PATH_TCP) {
		sockmap_count(SLUICE_SOCKMAP_MSG_TCP, 1);
		return SK_PASS;
	}
	struct sluice_pair_key peer = {
		.netns_cookie = bpf_get_netns_cookie(msg),
		.src_ip4 = msg->remote_ip4,
		.dst_ip4 = msg->local_ip4,
		.src_port = (__u16)(msg->remote_port >> 16),
		.dst_port = bpf_htons((__u16)msg->local_port),
	};
	if (*path == SLUICE_PATH_TCP_BEHIND) {
		if (!sk || !t || !t->sk || !caught_up(sk, t)) {
			sockmap_count(SLUICE_SOCKMAP_MSG_TCP, 1);
			return SK_PASS;
		}
		/* Caught up: redirect again (below). */
		*path = SLUICE_PATH_REDIRECT;
		if (!st)
			bpf_map_delete_elem(&sluice_hop_behind_v1, &peer);
		sluice_count4(SLUICE_STAT4_SOCKMAP_CAUGHT_UP);
	}
	if (bpf_msg_redirect_hash(msg, &sluice_sockhash_v1, &peer, BPF_F_INGRESS) == SK_PASS) {
		*path = SLUICE_PATH_REDIRECT;
		if (by_seq)
			by_seq->sent += size;
		sockmap_count(SLUICE_SOCKMAP_MSG_REDIRECTED, 1);
		sockmap_count(SLUICE_SOCKMAP_BYTES_REDIRECTED, size);
		struct sock *target = redirect_target(msg);
		if (t)
			remember_target(t, target);
		if (queued_at(target) > SLUICE_SOCKMAP_QUEUE_LIMIT) {
			/* The reader fell behind: this send still queues behind
			 * the others, the next ones take TCP (read after them)
			 * until it has caught up (caught_up, above). */
			*path = SLUICE_PATH_TCP_BEHIND;
			if (t)
				t->flags |= REDIR_WENT_TCP;
			if (!st) { /* the proxy's hop to an app: no splice to it now */
				__u8 one = 1;
				bpf_map_update_elem(&sluice_hop_behind_v1, &peer, &one, BPF_ANY);
			}
			sluice_count4(SLUICE_STAT4_SOCKMAP_BEHIND);
		}
		return SK_PASS;
	}
	/* Not redirected: SK_PASS without a redirect target sends over TCP.
	 * A socket that redirected before and whose peer has gone (closed)
	 * lands here too: TCP then answers with a reset, as it should. */
	if (*path == SLUICE_PATH_UNDECIDED)
		*path = SLUICE_PATH_TCP;
	sockmap_count(SLUICE_SOCKMAP_MSG_TCP, 1);
	return SK_PASS;
}
