#!/usr/bin/env bash
# `make bench`: time to apply a control plane snapshot of 10,000 workloads and
# 1,000 Services (control plane recompute; agent decode + apply + proxy
# directory rebuild). Target: under one second on the agent.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${SLUICE_BUILD_DIR:-$PWD/build}"
"$BUILD/bench/snapshot_apply" "${BENCH_WORKLOADS:-10000}" "${BENCH_SERVICES:-1000}" 5
