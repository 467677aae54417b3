#!/usr/bin/env bash
# `make bench`: a Prometheus scrape of the agent's metrics endpoint holding
# 10,000 series (the real TcpMetrics, AgentMetrics page and admin::Server,
# fetched over a socket), side by side with no series; and the RSS those
# series cost. Target: a scrape of 10,000 series in under 50 ms (p50 and p99).
# Then the TCP metrics' share of a new connection (opened + transferred +
# closed on pre-built records, one and two workers, 1 or 1,000 label sets).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${SLUICE_BUILD_DIR:-$PWD/build}"
"$BUILD/bench/metrics_scrape" "${BENCH_SERIES:-10000}" "${BENCH_SCRAPES:-200}"
"$BUILD/bench/metrics_conns" "${BENCH_CONNS:-300000}"
