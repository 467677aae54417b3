/* Helpers shared by Sluice's BPF objects. */
#ifndef SLUICE_BPF_COMMON_H
#define SLUICE_BPF_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice_abi.h"

#define SOL_SOCKET 1
#define SO_MARK 36
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100  /* VLAN */
#define ETH_P_8021AD 0x88A8 /* 802.1ad (QinQ) */
#define BPF_F_CURRENT_NETNS (-1)

/* Maps shared by several programs are declared once per object with
 * LIBBPF_PIN_BY_NAME: the agent points the pin root at its --bpf-pin-dir, so
 * every object sees the same map and the maps survive an agent restart. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_ENROLLED);
	__type(key, __u64); /* netns cookie */
	__type(value, struct sluice_enrolled);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_enrolled_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_EXCLUDED_PORTS);
	__type(key, __u16); /* port, network order */
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_excluded_ports_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_stats_v1 SEC(".maps");

static __always_inline void sluice_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&sluice_stats_v1, &stat);
	if (v)
		*v += 1;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_STATS6_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_stats6_v1 SEC(".maps");

static __always_inline void sluice_count6(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&sluice_stats6_v1, &stat);
	if (v)
		*v += 1;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_STATS4_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_stats4_v1 SEC(".maps");

static __always_inline void sluice_count4(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&sluice_stats4_v1, &stat);
	if (v)
		*v += 1;
}

static __always_inline int sluice_port_excluded(__u16 port_net)
{
	return bpf_map_lookup_elem(&sluice_excluded_ports_v1, &port_net) != 0;
}

#endif
