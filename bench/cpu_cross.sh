#!/usr/bin/env bash
# The whole machine's CPU per unit of work across nodes: pod on node1 ->
# pod on node2, no mesh against Sluice with --sockmap=off and --sockmap=on.
# On this lab both "nodes" share the machine's cores, and every figure of
# bench/mtls.sh saturates them, so a figure's ratio to no mesh is about the
# inverse ratio of the CPU the whole machine spends per unit (busy time from
# /proc/stat: user + nice + system + irq + softirq + steal). This prints that
# CPU per GB (iperf3, one stream), per 1000 keep-alive requests and per 1000
# new connections (wrk -c32, Connection: close; nginx), split into the two
# agents (/proc/<pid>/stat) and the rest (apps, the kernel's work charged
# to them, everything else on the machine).
#   BENCH_ROUNDS (default 2) rounds of BENCH_SECONDS (default 5) per figure;
#   the no-mesh pair and the sockmap-off pair alternate, then both agents are
#   restarted with --sockmap=on and that pair runs BENCH_ROUNDS times.
#   BENCH_AB="BUILD_A BUILD_B" (two build directories) compares two builds
#   instead: in each round, no mesh, then both agents restarted with A's
#   binary, then with B's, for each of BENCH_FIGS (default "gb"); the
#   agents' other flags come from SLUICE_AGENT_ARGS as in the lab (e.g.
#   --sockmap=on). What a change buys, read against the rounds' spread.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lab_env.sh cpu
DUR="${BENCH_SECONDS:-5}"
ROUNDS="${BENCH_ROUNDS:-2}"

lab_up 2
$LAB ns label mesh sluice.dev/mesh=enabled
$LAB ns label plain team=bench
. bench/nginx.sh
. bench/proc_cpu.sh  # cpu_seconds
for ns in mesh plain; do
  $LAB pod add $ns client --node node1 --sa client >/dev/null
  $LAB pod add $ns server --node node2 --sa server >/dev/null
  # Connection: close at no-mesh rates would run the client out of ports.
  $LAB exec $ns/client -- sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
  $LAB exec $ns/server -- iperf3 -s -p 5201 >/dev/null 2>&1 &
  nginx_conf "$work/nginx-$ns.conf" "$work/nginx-$ns.pid" "$work"
  $LAB exec $ns/server -- nginx -c "$work/nginx-$ns.conf" -p "$work" >/dev/null 2>&1 &
done
. bench/wait_port.sh
servers_up() {  # ns
  local ip; ip=$($LAB pod ip "$1" server)
  wait_port "$1/client" "$ip" 5201
  wait_port "$1/client" "$ip" 8080
}
for ns in mesh plain; do servers_up $ns; done

busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
agents() { cpu_seconds "$(cat "$LAB_DIR/node1/agent.pid")" "$(cat "$LAB_DIR/node2/agent.pid")"; }
hz=$(getconf CLK_TCK)
# figure ns column: one line: column, figure, rate, then CPU s per unit of
# the machine, the two agents and the rest
measure() {
  local fig=$1 ns=$2 col=$3 ip b0 a0 b1 a1 n
  ip=$($LAB pod ip "$ns" server)
  case $fig in
    rps | cps)
      local hdr=()
      [ "$fig" = rps ] || hdr=(-H "Connection: close")
      $LAB exec "$ns/client" -- wrk -t2 -c32 -d1s "${hdr[@]}" "http://$ip:8080/" >/dev/null ;;
  esac
  b0=$(busy); a0=$(agents)
  case $fig in
    gb) n=$($LAB exec "$ns/client" -- iperf3 -c "$ip" -p 5201 -t "$DUR" -J |
      /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bytes"])') ;;
    *) n=$($LAB exec "$ns/client" -- wrk -t2 -c32 -d"${DUR}s" "${hdr[@]}" "http://$ip:8080/" |
      awk '/requests in/ {print $1}') ;;
  esac
  b1=$(busy); a1=$(agents)
  awk -v n="$n" -v c=$((b1 - b0)) -v a0="$a0" -v a1="$a1" -v hz="$hz" -v d="$DUR" -v col="$col" -v fig="$fig" 'BEGIN {
    per = (fig == "gb") ? n / 1e9 : n / 1000
    rate = (fig == "gb") ? sprintf("%.2f Gbit/s", n * 8 / 1e9 / d) : sprintf("%.0f /s", n / d)
    printf "%-12s %-4s %14s   machine %6.3f   agents %6.3f   rest %6.3f\n", col, fig, rate,
      c / hz / per, (a1 - a0) / per, (c / hz - (a1 - a0)) / per }'
}
echo "Whole-machine CPU seconds per unit, pod on node1 -> pod on node2, $(nproc) cores, ${DUR}s per figure"
echo "units: gb = per GB (iperf3 1 stream), rps = per 1000 keep-alive requests, cps = per 1000 new connections (wrk -c32)"
if [ -n "${BENCH_AB:-}" ]; then
  read -r build_a build_b <<<"$BENCH_AB"
  for b in "$build_a" "$build_b"; do
    [ -x "$b/agent/sluice-agent" ] || { echo "cpu_cross: no agent binary at $b/agent/sluice-agent (BENCH_AB wants two build directories)" >&2; exit 2; }
  done
  echo "A = $build_a, B = $build_b; agents restarted with each before its figure"
  use() {  # build dir
    for n in node1 node2; do SLUICE_BUILD_DIR=$1 $LAB agent restart $n >/dev/null; done
    servers_up mesh
  }
  for _ in $(seq "$ROUNDS"); do
    for fig in ${BENCH_FIGS:-gb}; do
      measure "$fig" plain "no mesh"
      use "$build_a"
      measure "$fig" mesh "A"
      use "$build_b"
      measure "$fig" mesh "B"
    done
  done
  exit 0
fi
for fig in gb rps cps; do
  for _ in $(seq "$ROUNDS"); do
    measure $fig plain "no mesh"
    measure $fig mesh "sockmap off"
  done
done
sockmap_on node1 node2
servers_up mesh
for fig in gb rps cps; do
  for _ in $(seq "$ROUNDS"); do measure $fig mesh "sockmap on"; done
done
