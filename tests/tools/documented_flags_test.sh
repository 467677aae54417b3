#!/usr/bin/env bash
# Every flag a binary (or subcommand) documents in --help is accepted: given
# with a value, the binary may fail for other reasons (a missing required flag,
# an unreachable address), but never with "unknown flag". Short spellings
# ("-o, --output") are checked too.
set -uo pipefail
build="$1"
fail=0
check() {  # check BINARY [SUBCOMMAND]
  local bin="$1"; shift
  local flags
  flags=$("$bin" "$@" --help 2>&1 | grep -oE -- '(^|[[ ])--?[a-z][a-z0-9-]*' | grep -oE -- '--?[a-z][a-z0-9-]*' | sort -u)
  [ -n "$flags" ] || { echo "FAIL: $bin $* --help lists no flags"; fail=1; return; }
  for f in $flags; do
    case "$f" in --help | -h) continue ;; esac
    out=$(timeout 5 "$bin" "$@" "$f" 1 2>&1 </dev/null)
    if grep -qiE "unknown (flag|option)" <<<"$out"; then
      echo "FAIL: $bin $* documents $f but rejects it: $out"; fail=1
    fi
  done
  echo "checked $(wc -w <<<"$flags") documented flags of $(basename "$bin") $*"
}
check "$build/agent/sluice-agent"
check "$build/controlplane/sluice-controlplane"
check "$build/tools/sluicectl"
check "$build/tools/sluicectl" connections
check "$build/tools/sluicectl" stat
check "$build/tools/sluicectl" top
check "$build/tools/sluicectl" tap
check "$build/tools/sluicectl" check
check "$build/tools/sluicectl" install
check "$build/cni-plugin/sluice-cni" install
check "$build/cni-plugin/sluice-cni" uninstall
check "$build/agent/sluice-agent" uninstall
exit $fail
