#!/usr/bin/env bash
# `make bench`: the cost of one authorization decision with 1,000
# AuthorizationPolicies in scope (allowed, denied, unmatched connection).
# Target: under 1 us per decision.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${SLUICE_BUILD_DIR:-$PWD/build}"
"$BUILD/bench/policy_eval" "${BENCH_DECISIONS:-1000000}" 5
