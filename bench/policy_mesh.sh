#!/usr/bin/env bash
# `make bench` (policy, through the mesh): new connections/s from a pod on
# node1 to a pod on node2 over HBONE, side by side in one run:
#   none          the destination has no AuthorizationPolicy in scope
#   100 policies  the destination (app=guarded) has 100 in scope: 50 DENY by
#                 namespace and 50 ALLOW by principal, the client's the last
# wrk with "Connection: close" -> nginx: every request is a new connection,
# so every request is one authorization decision at node2. Rounds alternate
# (none first in odd rounds, policies first in even ones); printed: the
# median of each, the median of the per-round ratios, and node2's agent CPU
# time per connection (/proc/<pid>/stat around each run), the direct measure
# of what the decisions cost. BENCH_ROUNDS (default 8), BENCH_SECONDS (4).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lab_env.sh policy
DUR="${BENCH_SECONDS:-4}"
CONC="${BENCH_CONCURRENCY:-32}"
ROUNDS="${BENCH_ROUNDS:-8}"
CTL="$SLUICE_BUILD_DIR/tools/sluicectl"

lab_up 2
$LAB ns label mesh sluice.dev/mesh=enabled
$LAB pod add mesh client --node node1 --sa client >/dev/null
$LAB pod add mesh open --node node2 --sa server --label app=open >/dev/null
$LAB pod add mesh guarded --node node2 --sa server --label app=guarded >/dev/null

. bench/nginx.sh
for pod in open guarded; do
  nginx_conf "$work/nginx-$pod.conf" "$work/nginx-$pod.pid" "$work" "keepalive_timeout 0;"
  $LAB exec mesh/$pod -- nginx -c "$work/nginx-$pod.conf" -p "$work" >/dev/null 2>&1 &
done

{
  for i in $(seq 1 50); do
    cat <<YAML
---
apiVersion: security.sluice.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-$i, namespace: mesh}
spec:
  selector: {matchLabels: {app: guarded}}
  action: DENY
  rules:
  - from:
    - source: {namespaces: ["blocked-$i"]}
YAML
  done
  for i in $(seq 1 50); do
    principal="cluster.local/ns/other-$i/sa/app"
    [ "$i" = 50 ] && principal="cluster.local/ns/mesh/sa/client"
    cat <<YAML
---
apiVersion: security.sluice.dev/v1
kind: AuthorizationPolicy
metadata: {name: allow-$i, namespace: mesh}
spec:
  selector: {matchLabels: {app: guarded}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["$principal"]}
    to:
    - operation: {ports: ["8080"]}
YAML
  done
} > "$work/policies.yaml"
$LAB apply "$work/policies.yaml" >/dev/null
in_force() {
  $LAB node exec node2 -- "$CTL" -o json policies |
    /usr/bin/python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin)["authorization_policies"] if p["workloads"] == ["mesh/guarded"]))'
}
for _ in $(seq 200); do [ "$(in_force)" = 100 ] && break; sleep 0.1; done
[ "$(in_force)" = 100 ] || { echo "bench: the 100 policies did not reach node2" >&2; exit 1; }

wait_http() {  # ip
  for _ in $(seq 100); do
    $LAB exec mesh/client -- curl -sf -m 1 -o /dev/null "http://$1:8080/" && return 0
    sleep 0.1
  done
  echo "bench: nginx at $1 did not answer through the mesh" >&2; exit 1
}
open_ip=$($LAB pod ip mesh open)
guarded_ip=$($LAB pod ip mesh guarded)
wait_http "$open_ip"
wait_http "$guarded_ip"

node2_pid=$(cat "${SLUICE_LAB_DIR:-/run/sluice-lab}/node2/agent.pid")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$node2_pid/stat"; }  # utime + stime
TICK=$(getconf CLK_TCK)
denied_before=$($LAB node exec node2 -- "$CTL" -o json stats | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["proxy"]["denied"])')
declare -a A B R CA CB
for r in $(seq 1 "$ROUNDS"); do
  # Which goes first alternates: a run leaves ~40k client sockets in
  # TIME_WAIT, which slows the run right after it.
  order="open guarded"; [ $((r % 2)) = 0 ] && order="guarded open"
  for which in $order; do
    ip=$open_ip; [ $which = guarded ] && ip=$guarded_ip
    t0=$(cpu_ticks)
    out=$($LAB exec mesh/client -- wrk -t2 -c"$CONC" -d"${DUR}s" -H "Connection: close" "http://$ip:8080/")
    t1=$(cpu_ticks)
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    # node2's agent CPU per connection, in µs (every request is a connection).
    cpu=$(/usr/bin/python3 -c "print('%.1f' % (($t1 - $t0) * 1e6 / $TICK / max($n, 1)))")
    errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    [ -n "$errs" ] && echo "  ($which round $r: $errs)" >&2
    if [ $which = open ]; then A+=("$rps"); CA+=("$cpu"); else B+=("$rps"); CB+=("$cpu"); fi
  done
  # The two destinations of one round ran seconds apart, under the same
  # load from the rest of the machine: their ratio is the steadier figure.
  R+=("$(/usr/bin/python3 -c "print('%.4f' % (${B[-1]} / ${A[-1]}))")")
done
denied_after=$($LAB node exec node2 -- "$CTL" -o json stats | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["proxy"]["denied"])')
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
none=$(median "${A[@]}"); with=$(median "${B[@]}")
ratio=$(median "${R[@]}")
cpu_none=$(median "${CA[@]}"); cpu_with=$(median "${CB[@]}")
echo
echo "Sluice policy benchmark — new connections/s, pod on node1 -> pod on node2 (HBONE), $(nproc) cores,"
echo "wrk -c$CONC Connection: close, ${DUR}s per round, median of $ROUNDS alternating rounds"
printf '%-34s %14s %14s %10s\n' "figure" "no policy" "100 policies" "ratio"
printf '%-34s %14s %14s %10s\n' "new connections/s" "$none" "$with" \
  "$(/usr/bin/python3 -c "print('%.1f%%' % (100.0*$with/$none))")"
printf '%-34s %14s %14s %10s\n' "  median of per-round ratios" "" "" \
  "$(/usr/bin/python3 -c "print('%.1f%%' % (100.0*$ratio))")"
printf '%-34s %14s %14s %10s\n' "node2 agent CPU per connection" "${cpu_none} µs" "${cpu_with} µs" \
  "$(/usr/bin/python3 -c "print('%+.1f µs' % ($cpu_with - $cpu_none))")"
echo "rounds: no policy ${A[*]}; 100 policies ${B[*]}; connections denied meanwhile: $((denied_after - denied_before))"
