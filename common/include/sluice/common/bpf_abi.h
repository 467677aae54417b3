// C++ view of bpf/include/sluice_abi.h: the one definition of the structs the
// BPF programs and user space share, with size checks.
#pragma once

#include <linux/bpf.h>  // struct bpf_spin_lock
#include <linux/types.h>

extern "C" {
#include "sluice_abi.h"
}

static_assert(sizeof(sluice_enrolled) == 8);
static_assert(sizeof(sluice_orig_dst) == 8);
static_assert(sizeof(sluice_pair_key) == 24);
static_assert(sizeof(sluice_enrolled6) == 16);
static_assert(sizeof(sluice_orig_dst6) == 20);
static_assert(sizeof(sluice_pair_key6) == 48);
static_assert(SLUICE_STAT6_MAX <= SLUICE_STATS6_SLOTS);
static_assert(SLUICE_STAT4_MAX <= SLUICE_STATS4_SLOTS);
static_assert(sizeof(sluice_splice) == 40);
static_assert(sizeof(sluice_splice_sk) == 16);
