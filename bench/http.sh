#!/usr/bin/env bash
# `make bench`: the cost of HTTP golden metrics. Pod -> pod on one node
# (same-node handoff, the relay with the least work of its own, so the
# inspection's share is largest), wrk -> nginx (small response, keep-alive),
# with the agent's HTTP detection + metrics on and off (--no-http-detection),
# alternating ROUNDS times in one run; each figure is the best round.
# Targets: requests/s within 5%, p50 within +10 us.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lab_env.sh http
DUR="${BENCH_SECONDS:-5}"
CONC="${BENCH_CONCURRENCY:-32}"
ROUNDS="${BENCH_ROUNDS:-2}"

. bench/nginx.sh
. bench/wait_port.sh
nginx_conf "$work/nginx.conf" "$work/nginx.pid" "$work"

to_us() { /usr/bin/python3 -c "
v='$1'
m={'us':1,'ms':1000,'s':1000000}
for u in ('us','ms','s'):
    if v.endswith(u): print('%.0f' % (float(v[:-len(u)])*m[u])); break"; }

declare -A R
measure() {  # mode (on|off)
  local mode=$1
  if [ "$mode" = off ]; then export SLUICE_AGENT_ARGS="--no-http-detection"; else unset SLUICE_AGENT_ARGS; fi
  lab_up 1
  $LAB ns label mesh sluice.dev/mesh=enabled
  $LAB pod add mesh server --node node1 --sa server >/dev/null
  $LAB pod add mesh client --node node1 --sa client >/dev/null
  $LAB exec mesh/server -- nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
  local ip; ip=$($LAB pod ip mesh server)
  wait_port mesh/client "$ip" 8080
  for c in 1 "$CONC"; do
    out=$($LAB exec mesh/client -- wrk -t"$(( c < 2 ? 1 : 2 ))" -c"$c" -d"${DUR}s" --latency "http://$ip:8080/")
    local rps p50
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
    [ -z "${R[$mode,rps$c]:-}" ] || [ "$rps" -gt "${R[$mode,rps$c]}" ] && R[$mode,rps$c]=$rps
    [ -z "${R[$mode,p50_$c]:-}" ] || [ "$p50" -lt "${R[$mode,p50_$c]}" ] && R[$mode,p50_$c]=$p50
  done
  if [ "$mode" = on ]; then
    R[on,requests]=$(ip netns exec slb-hub curl -sf "http://10.99.0.11:15020/metrics" |
      awk '/^istio_requests_total\{/ {s += $NF} END {printf "%.0f", s}')
  fi
  pkill -F "$work/nginx.pid" 2>/dev/null || true
}

for _ in $(seq "$ROUNDS"); do measure off; measure on; done

pct() { /usr/bin/python3 -c "print('%.1f%%' % (100.0*float('$1')/float('$2')))"; }
echo
echo "Sluice HTTP detection + metrics — pod -> pod on one node, $(nproc) cores, ${DUR}s per figure, best of $ROUNDS"
printf '%-34s %14s %14s %10s\n' "figure" "detection off" "detection on" "on/off"
for c in 1 "$CONC"; do
  printf '%-34s %14s %14s %10s\n' "HTTP requests/s (wrk -c$c)" "${R[off,rps$c]}" "${R[on,rps$c]}" "$(pct ${R[on,rps$c]} ${R[off,rps$c]})"
  printf '%-34s %14s %14s %10s\n' "HTTP p50 latency, -c$c (us)" "${R[off,p50_$c]}" "${R[on,p50_$c]}" "$(printf '%+d' $((R[on,p50_$c] - R[off,p50_$c])))us"
done
printf '%-34s %14s %14s\n' "istio_requests_total (last round)" "-" "${R[on,requests]:-?}"
