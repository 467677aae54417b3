#!/usr/bin/env bash
# `make bench`: pod -> pod on one node, no mesh vs Sluice plaintext capture
# with --sockmap=off and then (the agent restarted) --sockmap=on, measured
# side by side in one run on the same lab:
#   iperf3 throughput (1 and 4 streams), HTTP requests/s at fixed concurrency
#   (wrk -> nginx, small response), p50/p99 latency with one connection and
#   at that concurrency, agent RSS idle with 50 enrolled pods (read
#   RSS_SETTLE seconds, default 7, after the last pod came, then again on
#   a fresh agent restarted with the default --sockmap=off). The
#   one-connection figures are the median of BENCH_LATENCY_ROUNDS short runs
#   (default 7 of 2 s) per column: one run is one sample of the machine's
#   background load.
# The "no mesh" pair lives in an unenrolled namespace on the same node.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lab_env.sh run
DUR="${BENCH_SECONDS:-5}"
CONC="${BENCH_CONCURRENCY:-32}"
ROUNDS="${BENCH_LATENCY_ROUNDS:-7}"
ROUND_SECONDS="${BENCH_LATENCY_SECONDS:-2}"

lab_up 1
$LAB ns label mesh sluice.dev/mesh=enabled
$LAB ns label plain team=bench
for ns in mesh plain; do
  $LAB pod add $ns server --node node1 --sa server >/dev/null
  $LAB pod add $ns client --node node1 --sa client >/dev/null
done

. bench/nginx.sh
start_servers() {  # ns
  local ns=$1
  $LAB exec $ns/server -- iperf3 -s -p 5201 >/dev/null 2>&1 &
  nginx_conf "$work/nginx-$ns.conf" "$work/nginx-$ns.pid" "$work"
  $LAB exec $ns/server -- nginx -c "$work/nginx-$ns.conf" -p "$work" >/dev/null 2>&1 &
}
start_servers mesh
start_servers plain
. bench/wait_port.sh

declare -A R
. bench/proc_cpu.sh  # agent CPU seconds per 1000 requests
to_us() { /usr/bin/python3 -c "
v='$1'
m={'us':1,'ms':1000,'s':1000000}
for u in ('us','ms','s'):
    if v.endswith(u): print('%.0f' % (float(v[:-len(u)])*m[u])); break"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1}
  END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.0f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# One connection, $ROUNDS rounds: the median p50, p99 and requests/s, and
# the rounds' p50 range (R[col,p50_1_range]).
latency1() {  # ns column ip
  local ns=$1 col=$2 ip=$3 out p50=() p99=() rps=()
  for _ in $(seq "$ROUNDS"); do
    out=$($LAB exec $ns/client -- wrk -t1 -c1 -d"${ROUND_SECONDS}s" --latency "http://$ip:8080/")
    p50+=("$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")")
    p99+=("$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")")
    rps+=("$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")")
  done
  R[$col,p50_1]="$(median "${p50[@]}")us"
  R[$col,p99_1]="$(median "${p99[@]}")us"
  R[$col,rps1]=$(median "${rps[@]}")
  R[$col,p50_1_range]="$(printf '%s\n' "${p50[@]}" | sort -n | sed -n '1p;$p' | paste -sd-)"
}
measure() {  # ns column
  local ns=$1 col=$2 ip
  ip=$($LAB pod ip $ns server)
  wait_port $ns/client "$ip" 5201
  wait_port $ns/client "$ip" 8080
  for streams in 1 4; do
    gbps=$($LAB exec $ns/client -- iperf3 -c "$ip" -p 5201 -t "$DUR" -P $streams -J |
      /usr/bin/python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
    R[$col,iperf$streams]=$gbps
  done
  # Latency twice: with one connection (what the mesh adds to a request)
  # and at $CONC connections (saturated: wrk, nginx and the proxy share the
  # cores, so latency there is mostly queueing behind CPU).
  local agent=""
  [ "$col" = plain ] || agent=$(cat "${SLUICE_LAB_DIR:-/run/sluice-lab}/node1/agent.pid")
  latency1 "$ns" "$col" "$ip"
  local c=$CONC
  [ -z "$agent" ] || cpu0=$(cpu_seconds "$agent")
  out=$($LAB exec $ns/client -- wrk -t"$(( c < 2 ? 1 : 2 ))" -c"$c" -d"${DUR}s" --latency "http://$ip:8080/")
  [ -z "$agent" ] || R[$col,cpu$c]=$(awk -v a="$cpu0" -v b="$(cpu_seconds "$agent")" \
    '/requests in/ {printf "%.3f", (b - a) * 1000 / $1}' <<<"$out")
  R[$col,rps$c]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  R[$col,p50_$c]=$(awk '$1=="50%" {print $2}' <<<"$out")
  R[$col,p99_$c]=$(awk '$1=="99%" {print $2}' <<<"$out")
}
measure plain plain
measure mesh mesh
# The same mesh pair with the pod-local hops on sockmap: the agent restarted
# with --sockmap=on (capture continues across the restart).
sockmap_on node1
measure mesh sockmap
# What the same-node splice took (iperf3 is spliced once detection finds no
# HTTP; wrk's HTTP stays proxied on sockmap, its requests inspected).
splice=$($LAB node exec node1 -- curl -sf http://127.0.0.1:15000/config_dump |
  /usr/bin/python3 -c 'import json,sys; s=json.load(sys.stdin)["bpf"]["sockmap"]["splice"]; print(s["mode"], " ".join(f"{k}={v}" for k, v in s.get("stats", {}).items()))')

# Agent RSS, idle, with 50 enrolled pods (the two above + 48 more).
# Read once the workers' idle ticks ran (each trims the heap every 5 s):
# idle, not the tail of the load above.
for i in $(seq 1 48); do $LAB pod add mesh idle$i --node node1 --sa idle >/dev/null; done
sleep "${RSS_SETTLE:-7}"
agent_pid=$(cat "${SLUICE_LAB_DIR:-/run/sluice-lab}/node1/agent.pid")
rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$agent_pid/status)
enrolled=$($LAB node exec node1 -- "$SLUICE_BUILD_DIR/tools/sluicectl" -o json stats | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["enrolled_pods"])')
# And a fresh agent (restarted, default --sockmap=off) with the same 50 pods,
# idle: the issue's figure, without what the load left (connection history,
# metrics series).
SLUICE_AGENT_ARGS="${SLUICE_AGENT_ARGS:-}" $LAB agent restart node1 >/dev/null
sleep "${RSS_SETTLE:-7}"
fresh_pid=$(cat "${SLUICE_LAB_DIR:-/run/sluice-lab}/node1/agent.pid")
fresh_kib=$(awk '/VmRSS/ {print $2}' /proc/$fresh_pid/status)

pct() { /usr/bin/python3 -c "print('%.0f%%' % (100.0*float('$1')/float('$2')))"; }
echo
echo "Sluice benchmark — pod -> pod on one node, $(nproc) cores, ${DUR}s per figure, load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo "columns: no mesh | Sluice (sockmap off) | Sluice (sockmap on); ratios to no mesh"
row() {  # label plain off on
  printf '%-34s %12s %12s %8s %12s %8s\n' "$1" "$2" "$3" "$(pct $3 $2)" "$4" "$(pct $4 $2)"
}
printf '%-34s %12s %12s %8s %12s %8s\n' "figure" "no mesh" "sockmap off" "ratio" "sockmap on" "ratio"
row "iperf3 1 stream (Gbit/s)" "${R[plain,iperf1]}" "${R[mesh,iperf1]}" "${R[sockmap,iperf1]}"
row "iperf3 4 streams (Gbit/s)" "${R[plain,iperf4]}" "${R[mesh,iperf4]}" "${R[sockmap,iperf4]}"
row "HTTP requests/s (wrk -c$CONC)" "${R[plain,rps$CONC]}" "${R[mesh,rps$CONC]}" "${R[sockmap,rps$CONC]}"
row "HTTP requests/s (wrk -c1, median)" "${R[plain,rps1]}" "${R[mesh,rps1]}" "${R[sockmap,rps1]}"
printf '%-34s %12s %12s %8s %12s\n' "agent CPU s / 1000 requests, -c$CONC" "-" "${R[mesh,cpu$CONC]}" "" \
  "${R[sockmap,cpu$CONC]}"
added() { printf '%+dus' $(($1 - $2)); }
for c in 1 "$CONC"; do
  for q in p50 p99; do
    p=$(to_us ${R[plain,${q}_$c]}); m=$(to_us ${R[mesh,${q}_$c]}); s=$(to_us ${R[sockmap,${q}_$c]})
    label="HTTP $q latency, -c$c (us)"
    [ "$c" != 1 ] || label="HTTP $q latency, -c1, median (us)"
    printf '%-34s %12s %12s %8s %12s %8s\n' "$label" "$p" "$m" "$(added $m $p)" "$s" "$(added $s $p)"
  done
done
printf '%-34s %12s %12s %8s %12s\n' "-c1 p50 range of the $ROUNDS rounds" "${R[plain,p50_1_range]}" \
  "${R[mesh,p50_1_range]}" "" "${R[sockmap,p50_1_range]}"
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
printf '%-34s %12s %12s\n' "agent RSS idle, $enrolled pods, fresh" "-" "$(mib "$fresh_kib") MiB (sockmap off)"
printf '%-34s %12s %12s\n' "agent RSS idle, after the load" "-" "$(mib "$rss_kib") MiB (sockmap on)"
echo "same-node splice (sockmap on column): $splice"
