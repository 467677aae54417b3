#!/usr/bin/env bash
# Agent RSS, broken down by mapping (bench/rss.py), at the points that matter:
#   node1 with 0 pods, idle
#   node1 with 50 enrolled pods, idle (and the per-pod delta)
#   node1 and node2 after a load (same node, then cross node over HBONE mTLS:
#     iperf3 1 and 16 streams both directions, wrk -c32 keep-alive and
#     Connection: close), once the agents' idle ticks ran
#   node1 restarted with --sockmap=on, 50 pods, idle; then after the same-node load
# Sockmap is off by default (the first three points); the last one is the
# bench/run.sh figure. BENCH_SECONDS per load (default 3), RSS_SETTLE seconds
# after each change before reading (default 7: the workers trim every 5 s).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lab_env.sh rss
DUR="${BENCH_SECONDS:-3}"
SETTLE="${RSS_SETTLE:-7}"

snap() {  # node label
  local pid
  pid=$(cat "$LAB_DIR/$1/agent.pid")
  echo
  echo "== $1: $2"
  /usr/bin/python3 bench/rss.py "$pid" --json "$work/$1-${2// /_}.json"
}

lab_up 2
$LAB ns label mesh sluice.dev/mesh=enabled
sleep "$SETTLE"
snap node1 "0 pods idle"
$LAB pod add mesh client --node node1 --sa client >/dev/null
$LAB pod add mesh local --node node1 --sa server >/dev/null
$LAB pod add mesh remote --node node2 --sa server >/dev/null
for i in $(seq 1 48); do $LAB pod add mesh idle$i --node node1 --sa idle >/dev/null; done
enrolled=$($LAB node exec node1 -- "$SLUICE_BUILD_DIR/tools/sluicectl" -o json stats |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["enrolled_pods"])')
sleep "$SETTLE"
snap node1 "$enrolled pods idle"
echo
echo "== node1: per-pod delta ($enrolled pods - 0 pods) / $enrolled"
/usr/bin/python3 bench/rss.py --diff "$work/node1-0_pods_idle.json" \
  "$work/node1-${enrolled}_pods_idle.json" --per "$enrolled"

. bench/mesh_load.sh
mesh_servers local remote
mesh_load "$DUR" local remote
sleep "$SETTLE"
snap node1 "$enrolled pods after load"
snap node2 "1 pod after load"

SLUICE_AGENT_ARGS="${SLUICE_AGENT_ARGS:-} --sockmap=on" $LAB agent restart node1 >/dev/null
sleep "$SETTLE"
snap node1 "$enrolled pods idle sockmap on"
mesh_load "$DUR" local
sleep "$SETTLE"
snap node1 "$enrolled pods after load sockmap on"
