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
 * hand a SYN the program never saw whole to the app around the mesh. */
#include "lib/common.h"

char LICENSE[] SEC("license") = "GPL";

struct sluice_ip4_tcp {
	__u32 saddr, daddr; /* network order */
	__u16 sport, dport; /* network order */
	__u8 syn, ack;
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
	return 0;
}

struct sluice_ip6_tcp {
	__u32 saddr[4], daddr[4]; /* network order */
	__u16 sport, dport;       /* network order */
	__u8 syn, ack;
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

/* 1 when an established or request socket already owns the SYN's own tuple
 * (a retransmitted SYN of a connection already assigned): the stack finds it
 * by itself. */
static __always_inline int tuple_owned(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u32 len)
{
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int listening = sk->state == BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return !listening;
}

/* IPv6 SYN to an enrolled pod: assigned to [dst]:15006, or dropped. */
static __always_inline int inbound6(struct __sk_buff *skb, struct sluice_ip6_tcp *p)
{
	if (!p->syn || p->ack || port_passes(p->dport))
		goto pass;
	struct bpf_sock_tuple t = {};
	__builtin_memcpy(t.ipv6.saddr, p->saddr, sizeof(t.ipv6.saddr));
	__builtin_memcpy(t.ipv6.daddr, p->daddr, sizeof(t.ipv6.daddr));
	t.ipv6.sport = p->sport;
	t.ipv6.dport = p->dport;
	if (tuple_owned(skb, &t, sizeof(t.ipv6)))
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
	if (parsed != 0 || !p.syn || p.ack || port_passes(p.dport))
		goto pass;

	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p.saddr;
	t.ipv4.daddr = p.daddr;
	t.ipv4.sport = p.sport;
	t.ipv4.dport = p.dport;
	if (tuple_owned(skb, &t, sizeof(t.ipv4)))
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
