#!/usr/bin/env bash
# Runs every test through ctest and ends with one summary line.
# Root-only kernel tests are part of the suite: without root (or without the
# kernel feature) they FAIL rather than skip.
set -uo pipefail
build="${1:-build}"
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "run-tests: the kernel and end-to-end tests need root (they load BPF and create namespaces)" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi
log="$build/test-output.log"
start=$(date +%s)
ctest --test-dir "$build" --output-on-failure --timeout 600 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# Leftover check: the suite must leave nothing behind.
left=$(ip netns list 2>/dev/null | grep -E '^(slb-|sluice-test)' || true)
if [ -n "$left" ]; then
  echo "run-tests: FAIL: network namespaces left behind: $left"
  rc=1
fi
summary=$(grep -E '^[0-9]+% tests passed' "$log" | tail -1)
echo "TEST SUMMARY: ${summary:-no ctest summary} ($(( $(date +%s) - start ))s, exit $rc)"
exit $rc
