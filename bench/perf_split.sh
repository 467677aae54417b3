#!/usr/bin/env bash
# Where a recorded process spends its time: share of the samples of a
# `perf record` file per library (kernel, libcrypto, libssl, libc, nghttp2,
# the agent's own code, other) and the top kernel symbols (self time).
# Used on the files bench/mtls.sh writes with BENCH_PERF_DIR=dir:
#   bash bench/perf_split.sh dir/sockmap-iperf1.data [top-N]
set -euo pipefail
data=$1
top=${2:-12}
perf report -i "$data" --no-children --sort dso --stdio 2>/dev/null |
  /usr/bin/python3 -c '
import re, sys
groups = [("kernel", r"kernel|\[k"), ("libcrypto", r"libcrypto"), ("libssl", r"libssl"),
          ("libc", r"^libc[.-]|ld-linux"), ("nghttp2", r"nghttp2"), ("agent", r"sluice-agent"),
          ("liburing", r"liburing")]
share = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
    if not m:
        continue
    name = next((g for g, rx in groups if re.search(rx, m.group(2))), "other")
    share[name] = share.get(name, 0.0) + float(m.group(1))
print("  ".join(f"{k} {v:.1f}%" for k, v in sorted(share.items(), key=lambda kv: -kv[1])))'
echo "top kernel symbols (self, % of the recorded samples):"
perf report -i "$data" --no-children --sort sym --stdio 2>/dev/null |
  awk -v n="$top" '/^ +[0-9.]+%.*\[k\]/ {printf "  %7s %s\n", $1, $NF; if (++i >= n) exit}'
