#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang-14 + ASan/UBSan in
# build-fuzz/ and runs each over its checked-in seed corpus.
#   tools/fuzz.sh                 every target for FUZZ_SECONDS (default 300) each (`make fuzz`)
#   tools/fuzz.sh --smoke         every target for FUZZ_SMOKE_SECONDS (default 10) each (`make test`)
#   tools/fuzz.sh [--smoke] T...  only the named targets (fuzz_cni_config, ...)
# Inputs libFuzzer finds go to build-fuzz/corpus/<target>/ (seeds stay
# untouched); a crash, hang (FUZZ_TIMEOUT s per input, default 10), leak or
# sanitizer report leaves its input in build-fuzz/artifacts/<target>/ and fails
# the run. Reproduce one with: build-fuzz/tests/fuzz/<target> <input file>.
# Ends with one summary line. Missing clang-14 / libFuzzer fails under CI=true,
# otherwise the run is skipped with a message (tools/deps.sh installs them).
set -uo pipefail
cd "$(dirname "$0")/.."
build="${FUZZ_BUILD:-build-fuzz}"
seconds="${FUZZ_SECONDS:-300}"
if [ "${1:-}" = "--smoke" ]; then
  seconds="${FUZZ_SMOKE_SECONDS:-10}"
  shift
fi
all=(fuzz_cni_config fuzz_cni_protocol fuzz_local_yaml fuzz_kube fuzz_policy fuzz_rpc_frames fuzz_l7
  fuzz_admin_http fuzz_hbone_raw fuzz_hbone_h2)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

if ! command -v clang++-14 >/dev/null ||
  [ ! -f "$(clang++-14 --print-runtime-dir 2>/dev/null)/libclang_rt.fuzzer-x86_64.a" ]; then
  echo "FUZZ SUMMARY: SKIPPED: clang++-14 with libFuzzer is missing (make deps installs clang-14 and libfuzzer-14-dev)"
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi

start=$(date +%s)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DSLUICE_FUZZ=ON -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 >/dev/null || exit 1
fi
# The build lock is shared with the other builds on this machine.
if ! flock /tmp/sluice-build.lock cmake --build "$build" -j"${JOBS:-2}" --target "${targets[@]}" \
  >"$build/fuzz-build.log" 2>&1; then
  tail -40 "$build/fuzz-build.log"
  echo "FUZZ SUMMARY: FAIL: the fuzz targets do not build (log: $build/fuzz-build.log)"
  exit 1
fi
built=$(date +%s)

failed=()
for t in "${targets[@]}"; do
  seeds="tests/fuzz/corpus/$t"
  work="$build/corpus/$t"
  artifacts="$build/artifacts/$t/"
  mkdir -p "$work" "$artifacts"
  log="$build/fuzz-$t.log"
  # -detect_leaks: an input must not leak memory; -error_exitcode: any report fails.
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:${ASAN_OPTIONS:-}" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}" \
    "$build/tests/fuzz/$t" -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" \
    -rss_limit_mb=2048 -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$artifacts" \
    "$work" "$seeds" >"$log" 2>&1
  rc=$?
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  if [ $rc -ne 0 ]; then
    failed+=("$t")
    # The report (a sanitizer's stack, or a target's own message before its
    # abort) without libFuzzer's progress lines, and the input itself: CI
    # keeps neither the log nor the artifact.
    grep -vE '^#[0-9]+[[:space:]]|^INFO:|^MS: ' "$log" | tail -60
    for f in "$artifacts"crash-* "$artifacts"timeout-* "$artifacts"leak-* "$artifacts"oom-*; do
      [ -f "$f" ] || continue
      echo "fuzz: input $(basename "$f") ($(stat -c %s "$f") bytes), base64 (first 8 KiB):"
      head -c 8192 "$f" | base64 -w 100
    done
    echo "fuzz: FAIL $t (exit $rc, ${runs:-?} runs; log: $log, input: $artifacts)"
  else
    echo "fuzz: ok   $t (${seconds}s, ${runs:-?} runs, ${cov:-cov ?})"
  fi
done
n=${#targets[@]}
echo "FUZZ SUMMARY: $((n - ${#failed[@]}))/$n targets clean, ${seconds}s each" \
  "(build $((built - start))s, total $(( $(date +%s) - start ))s)${failed[*]:+; failed: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
