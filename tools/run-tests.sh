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
# A sanitizer build (make asan) writes every ASan/UBSan/LSan report, from a
# test or from any process a test started, into $build/sanitizer-logs
# (tools/sanitizer/defaults.cc): start empty, fail below on any report.
sanlogs="$build/sanitizer-logs"
[ -d "$sanlogs" ] && find "$sanlogs" -mindepth 1 -delete
ctest --test-dir "$build" --output-on-failure --timeout 600 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# Leftover check: the suite must leave nothing behind (in its own lab instance:
# SLUICE_LAB_PREFIX, tools/lab --help; another lab beside it is not its business).
left=$(ip netns list 2>/dev/null | grep -E "^(${SLUICE_LAB_PREFIX:-slb}-|sluice-test)" || true)
if [ -n "$left" ]; then
  echo "run-tests: FAIL: network namespaces left behind: $left"
  rc=1
fi
if [ -d "$sanlogs" ]; then
  reports=$(find "$sanlogs" -type f -size +0 | sort)
  if [ -n "$reports" ]; then
    for r in $reports; do
      echo "run-tests: FAIL: sanitizer report $r:"
      cat "$r"
    done 2>&1 | tee -a "$log"
    rc=1
  fi
  san="; sanitizer reports: $(echo -n "$reports" | grep -c .)"
fi
# The fuzz targets, briefly (tests/fuzz; `make fuzz` runs them longer). Their
# own clang build in build-fuzz/, whichever build the suite above used.
if [ "${SLUICE_TEST_FUZZ:-1}" = 1 ]; then
  bash tools/fuzz.sh --smoke 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
summary=$(grep -E '^[0-9]+% tests passed' "$log" | tail -1)
fuzz=$(grep -E '^FUZZ SUMMARY' "$log" | tail -1 | sed 's/^FUZZ SUMMARY: /; fuzz: /')
echo "TEST SUMMARY: ${summary:-no ctest summary}${san:-}${fuzz} ($(( $(date +%s) - start ))s, exit $rc)"
exit $rc
