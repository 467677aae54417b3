// SPDX-License-Identifier: GPL-2.0
/* Inbound capture: tc clsact ingress on an enrolled pod's own interface,
 * inside the pod netns. A TCP SYN that no established socket owns and that is
 * not addressed to the proxy's own ports is assigned to the transparent
 * <dst-ip>:15006 listener (bpf_sk_assign), so plaintext from outside the mesh
 * meets the proxy. The accepted socket's getsockname() is the original
 * destination. Everything else passes untouched.
 *
 * IPv6: the proxy has no IPv6 listeners yet, so an IPv6 connection to an
 * enrolled pod would reach the app around the mesh (no mTLS, no policy). Its
 * SYN is dropped instead (fail closed) unless the port is excluded; replies
 * to the pod's own IPv6 connections (SYN-ACK and later) pass. */
#include "lib/common.h"

char LICENSE[] SEC("license") = "GPL";

struct sluice_ip4_tcp {
	__u32 saddr, daddr; /* network order */
	__u16 sport, dport; /* network order */
	__u8 syn, ack;
};

/* Parses an Ethernet/IPv4/TCP header; negative when the packet is not one. */
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
	if (ip.frag_off & bpf_htons(0x1fff | 0x2000)) /* fragments: leave to the stack */
		return -1;
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

/* 1 for an IPv6 TCP SYN (no ACK) to a port that is not excluded. Extension
 * headers are not walked: a SYN behind one is not TCP here, and passes. */
static __always_inline int ip6_syn_to_refuse(struct __sk_buff *skb)
{
	struct ipv6hdr ip6;
	struct tcphdr tcp;
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return 0;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip6, sizeof(ip6)) != 0)
		return 0;
	if (ip6.nexthdr != IPPROTO_TCP)
		return 0;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + sizeof(ip6), &tcp, sizeof(tcp)) != 0)
		return 0;
	return tcp.syn && !tcp.ack && !sluice_port_excluded(tcp.dest);
}

SEC("tc")
int sluice_tc_inbound(struct __sk_buff *skb)
{
	struct sluice_ip4_tcp p = {};
	if (ip6_syn_to_refuse(skb))
		return TC_ACT_SHOT;
	if (parse(skb, &p) != 0 || !p.syn || p.ack)
		goto pass;
	if (p.dport == bpf_htons(SLUICE_HBONE_PORT) || p.dport == bpf_htons(SLUICE_INBOUND_PORT) ||
	    sluice_port_excluded(p.dport))
		goto pass;

	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p.saddr;
	t.ipv4.daddr = p.daddr;
	t.ipv4.sport = p.sport;
	t.ipv4.dport = p.dport;
	/* A retransmitted SYN of a connection already assigned has a request or
	 * established socket on its own tuple: the stack finds it by itself. */
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		int listening = sk->state == BPF_TCP_LISTEN;
		bpf_sk_release(sk);
		if (!listening)
			goto pass;
	}

	t.ipv4.dport = bpf_htons(SLUICE_INBOUND_PORT);
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		sluice_count(SLUICE_STAT_TC_NO_LISTENER);
		goto pass;
	}
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		goto pass;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err == 0) {
		sluice_count(SLUICE_STAT_TC_ASSIGNED);
		return TC_ACT_OK;
	}
pass:
	sluice_count(SLUICE_STAT_TC_PASSED);
	return TC_ACT_OK;
}
