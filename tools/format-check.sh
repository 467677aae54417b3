#!/usr/bin/env bash
# Fails when a C++ file differs from .clang-format (BPF C under bpf/ keeps the
# kernel's style). `make format` fixes what it reports.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "format-check: clang-format is not installed (make deps)"; exit 1; }
bad=()
while IFS= read -r f; do
  [ -f "$f" ] || continue
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done < <(git ls-files --cached --others --exclude-standard '*.cc' '*.h' | grep -v '^bpf/')
if [ ${#bad[@]} -gt 0 ]; then
  echo "format-check: ${#bad[@]} file(s) differ from .clang-format (run 'make format'):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
# fmt's formatting core is compiled once (common/src/fmt_core.cc): a product
# source that includes fmt's headers itself gets its own copy of it (~15 KB
# of resident text per file in the agent). Tests and benches may.
direct=$(git grep -n '#include <fmt/' -- 'agent/*.cc' 'agent/*.h' 'ztunnel/*.cc' 'ztunnel/*.h' \
  'common/*.cc' 'common/*.h' 'controlplane/*.cc' 'controlplane/*.h' 'cni-plugin/*.cc' \
  'cni-plugin/*.h' 'tools/*.cc' 'tools/*.h' ':!common/include/sluice/common/fmt.h' \
  ':!common/src/fmt_core.cc')
if [ -n "$direct" ]; then
  echo "format-check: include \"sluice/common/fmt.h\" instead of fmt's headers (its formatting core is compiled once):"
  printf '  %s\n' "$direct"
  exit 1
fi
echo "format-check: every C++ file follows .clang-format"
