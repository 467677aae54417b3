// SPDX-License-Identifier: GPL-2.0
/* Inbound capture: tc clsact ingress on an enrolled pod's own interface,
 * inside the pod netns. A TCP SYN that no established socket owns and that is
 * not addressed to the proxy's own ports is assigned to the transparent
 * <dst-ip>:15006 listener (bpf_sk_assign), so plaintext from outside the mesh
 * meets the proxy. The accepted socket's getsockname() is the original
 * destination. Everything else passes untouched.
 *
 * IPv6 works the same way towards the proxy's transparent [dst-v6]:15006
 * listener, with one difference: an IPv6 SYN no listener takes (an agent or
 * engine without IPv6 listeners for the pod) is dropped, not passed, so it
 * cannot reach the app around the mesh (no mTLS, no policy): fail closed, and
 * counted (sluice_stats6_v1). So is IPv6 TCP behind a fragment header or
 * behind more extension headers than parse6() walks. Replies to the pod's
 * own connections (SYN-ACK and later) pass.
 *
 * IPv4 TCP fragments (MF set or a non-zero offset) are dropped and counted
 * (sluice_stats4_v1) whatever they carry: the stack would reassemble them and
 * hand a SYN the program never saw whole to the app around the mesh.
 *
 * A SYN on the tuple of a connection in TIME_WAIT (the app's end of a proxied
 * connection it closed first, or the proxy's end towards a client, whose
 * tuple the client may reuse within the minute) is owned, so it passes: the
 * kernel would drop it as a duplicate if it were assigned. The TIME_WAIT
 * socket takes it and the stack looks for a listener, which would be the
 * app's: around the mesh. So tc notes that SYN's tuple (sluice_tw_syn_v1, this
 * CPU's slot: the stack runs on the same CPU, within the same softirq,
 * right after tc) and sluice_sk_lookup (sk_lookup, attached to each enrolled
 * pod netns) gives exactly that lookup the proxy's <pod-ip>:15006 listener
 * (sluice_inbound_listeners); with none (no agent runs) it is dropped, fail
 * closed. Every other lookup passes untouched (the proxy's own connections
 * to the app, which arrive over loopback and never meet tc, above all).
 *
 * An ACK that no socket owns, to a steered port, may complete a SYN cookie:
 * a 15006 listener whose SYN queue a flood filled answers SYNs with cookies
 * and keeps no state, so the stack would give the client's ACK the app's
 * listener, which sent no cookie and resets it. tc checks the cookie (first
 * against the kernel's secret alone, then against the 15006 listener) and
 * assigns a valid one's ACK to it, which accepts the connection; anything
 * else passes untouched. */
#include "lib/common.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * SLUICE_MAX_ENROLLED);
	__type(key, struct sluice_addr_key);
	__type(value, __u64);
} sluice_inbound_listeners SEC(".maps");

/* The last SYN on a TIME_WAIT tuple tc passed on this CPU. */
struct sluice_tw_syn {
	__u64 at_ns; /* 0: none */
	__u32 family;
	__u32 remote[4], local[4]; /* network order; IPv4 in [0] */
	__u16 remote_port, local_port; /* network order */
	__u32 pad;
};
/* How long the slot stays good: the stack's lookup follows tc at once. */
#define SLUICE_TW_SYN_WINDOW_NS 1000000

/* Pinned, so that every loaded copy of this object shares the slot: a
 * restarted agent attaches its tc program to each pod before it swaps the
 * program under the pod's sk_lookup link, and for that moment a SYN the new
 * tc notes must still be found by the old sk_lookup program. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sluice_tw_syn);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_tw_syn_v1 SEC(".maps");

/* This CPU's slot, cleared, for the SYN about to pass; null if none. */
static __always_inline struct sluice_tw_syn *tw_slot(void)
{
	__u32 zero = 0;
	struct sluice_tw_syn *w = bpf_map_lookup_elem(&sluice_tw_syn_v1, &zero);
	if (w)
		__builtin_memset(w, 0, sizeof(*w));
	return w;
}

struct sluice_ip4_tcp {
	__u32 saddr, daddr; /* network order */
	__u16 sport, dport; /* network order */
	__u8 syn, ack, rst;
	struct iphdr iph; /* as received (without options): a SYN cookie's check */
	struct tcphdr th;
};

/* parse(): an IPv4 TCP fragment, whose reassembled packet this program
 * cannot see. */
#define SLUICE_IP4_FRAGMENT 1

/* Parses an Ethernet/IPv4/TCP header; negative when the packet is not one,
 * SLUICE_IP4_FRAGMENT when it is a fragment of one (the caller drops it). */
static __always_inline int parse(struct __sk_buff *skb, struct sluice_ip4_tcp *out)
{
	struct iphdr ip;
	struct tcphdr tcp;
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)) != 0)
		return -1;
	if (ip.protocol != IPPROTO_TCP || ip.ihl < 5)
		return -1;
	if (ip.frag_off & bpf_htons(0x1fff | 0x2000)) /* an offset, or more fragments */
		return SLUICE_IP4_FRAGMENT;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + ip.ihl * 4, &tcp, sizeof(tcp)) != 0)
		return -1;
	out->saddr = ip.saddr;
	out->daddr = ip.daddr;
	out->sport = tcp.source;
	out->dport = tcp.dest;
	out->syn = tcp.syn;
	out->ack = tcp.ack;
	out->rst = tcp.rst;
	out->iph = ip;
	out->th = tcp;
	return 0;
}

struct sluice_ip6_tcp {
	__u32 saddr[4], daddr[4]; /* network order */
	__u16 sport, dport;       /* network order */
	__u8 syn, ack, rst;
	struct ipv6hdr iph; /* as received (the fixed header): a SYN cookie's check */
	struct tcphdr th;
};

#define SLUICE_IP6_MAX_EXT_HEADERS 4
/* parse6(): an IPv6 packet that may carry TCP this program cannot see. */
#define SLUICE_IP6_HIDDEN 1

static __always_inline int ip6_ext_header(__u8 next)
{
	return next == 0 /* hop-by-hop */ || next == 43 /* routing */ ||
	       next == 60 /* destination options */ || next == 44 /* fragment */;
}

/* Parses an Ethernet/IPv6/TCP header, walking up to
 * SLUICE_IP6_MAX_EXT_HEADERS hop-by-hop, routing and destination-options
 * headers; negative when the packet is not one. SLUICE_IP6_HIDDEN when TCP
 * may hide behind what is not walked: a fragment header before TCP (or
 * before another extension header), or more extension headers than the walk
 * takes. The stack reassembles and walks those, so such a SYN would reach
 * the app around the mesh: the caller drops it. Other fragments (UDP,
 * ICMPv6) are not TCP here and pass. */
static __always_inline int parse6(struct __sk_buff *skb, struct sluice_ip6_tcp *out)
{
	struct ipv6hdr ip6;
	struct tcphdr tcp;
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return -1;
	__u32 off = sizeof(struct ethhdr);
	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) != 0)
		return -1;
	off += sizeof(ip6);
	__u8 next = ip6.nexthdr;
	for (int i = 0; i < SLUICE_IP6_MAX_EXT_HEADERS; i++) {
		if (!ip6_ext_header(next))
			break;
		__u8 ext[2]; /* next header, length in 8-octet units past the first 8 */
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) != 0)
			return SLUICE_IP6_HIDDEN;
		if (next == 44) /* fragment: what follows is the reassembled packet's */
			return ext[0] == IPPROTO_TCP || ip6_ext_header(ext[0]) ? SLUICE_IP6_HIDDEN : -1;
		next = ext[0];
		off += ((__u32)ext[1] + 1) * 8;
	}
	if (ip6_ext_header(next))
		return SLUICE_IP6_HIDDEN; /* more extension headers than the walk takes */
	if (next != IPPROTO_TCP)
		return -1;
	if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)) != 0)
		return -1;
	__builtin_memcpy(out->saddr, &ip6.saddr, sizeof(out->saddr));
	__builtin_memcpy(out->daddr, &ip6.daddr, sizeof(out->daddr));
	out->sport = tcp.source;
	out->dport = tcp.dest;
	out->syn = tcp.syn;
	out->ack = tcp.ack;
	out->rst = tcp.rst;
	out->iph = ip6;
	out->th = tcp;
	return 0;
}

/* 1 when a SYN to this port is left alone: the proxy's own ports (HBONE
 * arrives on 15008 and is the proxy's; 15006 directly is too) and excluded
 * ports. */
static __always_inline int port_passes(__u16 dport)
{
	return dport == bpf_htons(SLUICE_HBONE_PORT) || dport == bpf_htons(SLUICE_INBOUND_PORT) ||
	       sluice_port_excluded(dport);
}

/* The state of the socket that owns the SYN's own tuple, or -1 (none, or
 * only a listener). An established or request socket (a retransmitted SYN
 * of a connection already assigned) the stack finds by itself; a TIME_WAIT
 * one the caller notes for sluice_sk_lookup. */
static __always_inline int tuple_owner(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u32 len)
{
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	int state = sk->state;
	bpf_sk_release(sk);
	return state == BPF_TCP_LISTEN ? -1 : state;
}

/* An ACK (neither SYN nor RST) to a steered port whose tuple no socket owns
 * (none, or only the app's listener) and that carries a valid SYN cookie of
 * the pod's 15006 listener (t: the ACK's tuple, its destination port at
 * *dport; iph: its IP header): assigned to that listener, which creates the
 * connection. 1 when it was. Called only for an ACK whose cookie the
 * kernel's secret signs (bpf_tcp_raw_check_syncookie_*: no socket touched),
 * so that every other ACK costs one hash here, not two socket lookups. */
static __always_inline int cookie_ack(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u32 tlen,
				      __u16 *dport, void *iph, __u32 iph_len, struct tcphdr *th)
{
	if (tuple_owner(skb, t, tlen) >= 0)
		return 0;
	*dport = bpf_htons(SLUICE_INBOUND_PORT);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int assigned = sk->state == BPF_TCP_LISTEN &&
		       bpf_tcp_check_syncookie(sk, iph, iph_len, th, sizeof(*th)) == 0 &&
		       bpf_sk_assign(skb, sk, 0) == 0;
	bpf_sk_release(sk);
	return assigned;
}

/* IPv6 TCP to an enrolled pod: a SYN assigned to [dst]:15006, or dropped; a
 * SYN cookie's ACK assigned there (cookie_ack). */
static __always_inline int inbound6(struct __sk_buff *skb, struct sluice_ip6_tcp *p)
{
	if ((p->syn && p->ack) || (!p->syn && (!p->ack || p->rst)) || port_passes(p->dport))
		goto pass;
	struct bpf_sock_tuple t = {};
	__builtin_memcpy(t.ipv6.saddr, p->saddr, sizeof(t.ipv6.saddr));
	__builtin_memcpy(t.ipv6.daddr, p->daddr, sizeof(t.ipv6.daddr));
	t.ipv6.sport = p->sport;
	t.ipv6.dport = p->dport;
	if (!p->syn) {
		if (bpf_tcp_raw_check_syncookie_ipv6(&p->iph, &p->th) == 0 &&
		    cookie_ack(skb, &t, sizeof(t.ipv6), &t.ipv6.dport, &p->iph, sizeof(p->iph), &p->th)) {
			sluice_count6(SLUICE_STAT6_TC_COOKIE_ASSIGNED);
			return TC_ACT_OK;
		}
		goto pass;
	}
	int owner = tuple_owner(skb, &t, sizeof(t.ipv6));
	struct sluice_tw_syn *w;
	if (owner == BPF_TCP_TIME_WAIT && (w = tw_slot())) {
		w->family = AF_INET6;
		__builtin_memcpy(w->remote, p->saddr, sizeof(w->remote));
		__builtin_memcpy(w->local, p->daddr, sizeof(w->local));
		w->remote_port = p->sport;
		w->local_port = p->dport;
		w->at_ns = bpf_ktime_get_ns();
	}
	if (owner >= 0)
		goto pass;
	t.ipv6.dport = bpf_htons(SLUICE_INBOUND_PORT);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		sluice_count6(SLUICE_STAT6_TC_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		sluice_count6(SLUICE_STAT6_TC_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err != 0) {
		sluice_count6(SLUICE_STAT6_TC_ASSIGN_FAILED);
		return TC_ACT_SHOT;
	}
	sluice_count(SLUICE_STAT_TC_ASSIGNED);
	sluice_count6(SLUICE_STAT6_TC_ASSIGNED);
	return TC_ACT_OK;
pass:
	sluice_count(SLUICE_STAT_TC_PASSED);
	return TC_ACT_OK;
}

SEC("tc")
int sluice_tc_inbound(struct __sk_buff *skb)
{
	struct sluice_ip4_tcp p = {};
	struct sluice_ip6_tcp p6 = {};
	/* The stack takes one VLAN tag off before tc. One still here (a second
	 * tag, or 802.1ad) hides the packet from this program, and with VLAN ID 0
	 * the stack strips it after tc and delivers what it carries: a SYN would
	 * reach the app around the mesh. Pods carry no VLANs: fail closed. */
	if (skb->protocol == bpf_htons(ETH_P_8021Q) || skb->protocol == bpf_htons(ETH_P_8021AD)) {
		sluice_count4(SLUICE_STAT4_TC_VLAN_DROPPED);
		return TC_ACT_SHOT;
	}
	int parsed6 = parse6(skb, &p6);
	if (parsed6 == 0)
		return inbound6(skb, &p6);
	if (parsed6 == SLUICE_IP6_HIDDEN) { /* fail closed: TCP the mesh cannot steer */
		sluice_count6(SLUICE_STAT6_TC_HIDDEN_DROPPED);
		return TC_ACT_SHOT;
	}
	int parsed = parse(skb, &p);
	if (parsed == SLUICE_IP4_FRAGMENT) { /* fail closed: a SYN the mesh cannot steer */
		sluice_count4(SLUICE_STAT4_TC_FRAG_DROPPED);
		return TC_ACT_SHOT;
	}
	if (parsed != 0 || (p.syn && p.ack) || (!p.syn && (!p.ack || p.rst)) || port_passes(p.dport))
		goto pass;

	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p.saddr;
	t.ipv4.daddr = p.daddr;
	t.ipv4.sport = p.sport;
	t.ipv4.dport = p.dport;
	if (!p.syn) {
		if (bpf_tcp_raw_check_syncookie_ipv4(&p.iph, &p.th) == 0 &&
		    cookie_ack(skb, &t, sizeof(t.ipv4), &t.ipv4.dport, &p.iph, sizeof(p.iph), &p.th)) {
			sluice_count4(SLUICE_STAT4_TC_COOKIE_ASSIGNED);
			return TC_ACT_OK;
		}
		goto pass;
	}
	int owner = tuple_owner(skb, &t, sizeof(t.ipv4));
	struct sluice_tw_syn *w;
	if (owner == BPF_TCP_TIME_WAIT && (w = tw_slot())) {
		w->family = AF_INET;
		w->remote[0] = p.saddr;
		w->local[0] = p.daddr;
		w->remote_port = p.sport;
		w->local_port = p.dport;
		w->at_ns = bpf_ktime_get_ns();
	}
	if (owner >= 0)
		goto pass;

	/* No listener (no agent runs, or it is restarting) or no assignment:
	 * dropped, fail closed (the app would get it without mTLS or policy);
	 * the client's SYN retransmits find the next agent's listener. */
	t.ipv4.dport = bpf_htons(SLUICE_INBOUND_PORT);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		sluice_count(SLUICE_STAT_TC_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		sluice_count(SLUICE_STAT_TC_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err != 0) {
		sluice_count4(SLUICE_STAT4_TC_ASSIGN_FAILED);
		return TC_ACT_SHOT;
	}
	sluice_count(SLUICE_STAT_TC_ASSIGNED);
	return TC_ACT_OK;
pass:
	sluice_count(SLUICE_STAT_TC_PASSED);
	return TC_ACT_OK;
}

static __always_inline void lookup_count(__u32 family, __u32 stat4, __u32 stat6)
{
	if (family == AF_INET6)
		sluice_count6(stat6);
	else
		sluice_count4(stat4);
}

/* The lookup's tuple in the slot's layout. Every field is read, at its
 * constant offset, before any branch: the verifier refuses a context pointer
 * with an offset added, which clang makes of reads it can merge. */
static __always_inline void lookup_tuple(struct bpf_sk_lookup *ctx, struct sluice_tw_syn *t)
{
	__u32 family = ctx->family, rip4 = ctx->remote_ip4, lip4 = ctx->local_ip4;
	__u32 r0 = ctx->remote_ip6[0], r1 = ctx->remote_ip6[1], r2 = ctx->remote_ip6[2],
	      r3 = ctx->remote_ip6[3];
	__u32 l0 = ctx->local_ip6[0], l1 = ctx->local_ip6[1], l2 = ctx->local_ip6[2],
	      l3 = ctx->local_ip6[3];
	asm volatile("" : "+r"(family), "+r"(rip4), "+r"(lip4), "+r"(r0), "+r"(r1));
	asm volatile("" : "+r"(r2), "+r"(r3), "+r"(l0), "+r"(l1), "+r"(l2), "+r"(l3));
	t->family = family;
	t->remote_port = ctx->remote_port;
	t->local_port = bpf_htons((__u16)ctx->local_port);
	if (family == AF_INET) {
		t->remote[0] = rip4;
		t->local[0] = lip4;
		return;
	}
	t->remote[0] = r0;
	t->remote[1] = r1;
	t->remote[2] = r2;
	t->remote[3] = r3;
	t->local[0] = l0;
	t->local[1] = l1;
	t->local[2] = l2;
	t->local[3] = l3;
}

/* 1 when this lookup is the one for the SYN tc noted last on this CPU (a
 * slot with a note: at_ns set). */
static __always_inline int is_noted_tw_syn(const struct sluice_tw_syn *t, const struct sluice_tw_syn *w)
{
	if (bpf_ktime_get_ns() - w->at_ns > SLUICE_TW_SYN_WINDOW_NS)
		return 0;
	return t->family == w->family && t->remote_port == w->remote_port &&
	       t->local_port == w->local_port && t->remote[0] == w->remote[0] &&
	       t->remote[1] == w->remote[1] && t->remote[2] == w->remote[2] &&
	       t->remote[3] == w->remote[3] && t->local[0] == w->local[0] &&
	       t->local[1] == w->local[1] && t->local[2] == w->local[2] && t->local[3] == w->local[3];
}

SEC("sk_lookup")
int sluice_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	__u32 zero = 0;
	struct sluice_tw_syn *w = bpf_map_lookup_elem(&sluice_tw_syn_v1, &zero);
	if (!w || w->at_ns == 0)
		return SK_PASS;
	struct sluice_tw_syn t = {};
	lookup_tuple(ctx, &t);
	if (!is_noted_tw_syn(&t, w))
		return SK_PASS;
	w->at_ns = 0;
	struct sluice_addr_key key = {};
	key.family = t.family;
	for (int i = 0; i < 4; i++)
		key.addr[i] = w->local[i];
	struct bpf_sock *sk = bpf_map_lookup_elem(&sluice_inbound_listeners, &key);
	if (!sk) {
		lookup_count(key.family, SLUICE_STAT4_LOOKUP_DROPPED, SLUICE_STAT6_LOOKUP_DROPPED);
		return SK_DROP;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err != 0) {
		lookup_count(key.family, SLUICE_STAT4_LOOKUP_DROPPED, SLUICE_STAT6_LOOKUP_DROPPED);
		return SK_DROP;
	}
	lookup_count(key.family, SLUICE_STAT4_LOOKUP_STEERED, SLUICE_STAT6_LOOKUP_STEERED);
	return SK_PASS;
}
