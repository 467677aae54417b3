#!/usr/bin/env bash
# The cost of one new connection inside each agent: pod on node1 -> pod on
# node2 (HBONE mTLS through a pooled tunnel), N sequential HTTP requests with
# "Connection: close" from a small Python client in the client pod to nginx.
# Each agent is observed in three passes of N connections:
#   syscalls   strace -c -f (count of each system call, all threads; this
#              kernel has no syscall tracepoints for perf trace)
#   io_uring   perf record of io_uring:io_uring_submit_req (SQEs by opcode)
#   malloc     a uprobe on glibc's malloc (calls; operator new included),
#              plus context switches
# Printed per connection (count / N), client-side agent (node1) and
# server-side agent (node2). Root, perf with tracepoints and uprobes.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lab_env.sh conn
N="${CONN_COUNT:-2000}"
LIBC=$(ldd "$SLUICE_BUILD_DIR/agent/sluice-agent" | awk '/libc\.so/ {print $3}')
probe_added=0
bench_cleanup() { [ "$probe_added" = 0 ] || perf probe -q -d probe_libc:malloc 2>/dev/null; }

lab_up 2
$LAB ns label mesh sluice.dev/mesh=enabled >/dev/null
$LAB pod add mesh client --node node1 --sa client >/dev/null
$LAB pod add mesh server --node node2 --sa server >/dev/null
. bench/nginx.sh
nginx_conf "$work/nginx.conf" "$work/nginx.pid" "$work"
$LAB exec mesh/server -- nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
cat > "$work/client.py" <<'PY'
import socket, sys
host, n = sys.argv[1], int(sys.argv[2])
req = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
for _ in range(n):
    s = socket.create_connection((host, 8080))
    s.sendall(req)
    data = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
    s.close()
    if not data.startswith(b"HTTP/1.1 200"):
        sys.exit("bad response: %r" % data[:80])
PY
server=$($LAB pod ip mesh server)
run() { $LAB exec mesh/client -- /usr/bin/python3 "$work/client.py" "$server" "$1"; }
for _ in $(seq 50); do run 1 2>/dev/null && break; sleep 0.2; done  # nginx up
run 200  # the tunnel is up and pooled, caches warm

pids=("$(cat "$LAB_DIR/node1/agent.pid")" "$(cat "$LAB_DIR/node2/agent.pid")")
observe() {  # name cmd... (for each agent, in the background, around one pass)
  local name=$1 i
  shift
  for i in 0 1; do
    "$@" -p "${pids[$i]}" -o "$work/$name.$i" &
    echo $! > "$work/$name.$i.pid"
  done
  sleep 1
  run "$N"
  for i in 0 1; do kill -INT "$(cat "$work/$name.$i.pid")"; done
  for i in 0 1; do wait "$(cat "$work/$name.$i.pid")" || true; done
}
observe trace strace -c -f
observe uring perf record -q -e io_uring:io_uring_submit_req
perf probe -q -x "$LIBC" --add malloc && probe_added=1
observe stat perf stat -e probe_libc:malloc,context-switches

per() { awk -v n="$N" -v c="$1" 'BEGIN { printf "%.2f", c / n }'; }
echo "Per new connection (pod on node1 -> pod on node2, HBONE, $N connections, Connection: close)"
printf '%-34s %14s %14s\n' "" "client agent" "server agent"
declare -A T
for i in 0 1; do
  # strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall" rows.
  awk '$4 ~ /^[0-9]+$/ && $NF ~ /^[a-z_0-9]+$/ && $NF != "total" {print $NF, $4}' \
    "$work/trace.$i" > "$work/sys.$i"
  perf script -i "$work/uring.$i" -F trace 2>/dev/null |
    sed -n 's/.*opcode \([A-Z_]*\).*/\1/p' | sort | uniq -c | awk '{print "uring:" $2, $1}' > "$work/sqe.$i"
  awk '/probe_libc:malloc|context-switches/ {gsub(",", "", $1); print $2, $1}' "$work/stat.$i" > "$work/misc.$i"
  while read -r k v; do T[$k,$i]=$v; done < <(cat "$work/sys.$i" "$work/sqe.$i" "$work/misc.$i")
done
keys=$(cat "$work"/sys.* | awk '{print $1}' | sort -u)
total=(0 0)
for k in $keys; do
  a=${T[$k,0]:-0} b=${T[$k,1]:-0}
  total[0]=$((total[0] + a)) total[1]=$((total[1] + b))
  # Rows under 0.05 per connection on both sides are the agents' timers and
  # control threads, not the connection path.
  awk -v n="$N" -v a="$a" -v b="$b" 'BEGIN { exit !(a / n >= 0.05 || b / n >= 0.05) }' || continue
  printf '%-34s %14s %14s\n' "syscall $k" "$(per "$a")" "$(per "$b")"
done
printf '%-34s %14s %14s\n' "syscalls, all" "$(per "${total[0]}")" "$(per "${total[1]}")"
keys=$(cat "$work"/sqe.* | awk '{print $1}' | sort -u)
total=(0 0)
for k in $keys; do
  a=${T[$k,0]:-0} b=${T[$k,1]:-0}
  total[0]=$((total[0] + a)) total[1]=$((total[1] + b))
  printf '%-34s %14s %14s\n' "SQE ${k#uring:}" "$(per "$a")" "$(per "$b")"
done
printf '%-34s %14s %14s\n' "SQEs, all" "$(per "${total[0]}")" "$(per "${total[1]}")"
printf '%-34s %14s %14s\n' "malloc calls" "$(per "${T[probe_libc:malloc,0]:-0}")" \
  "$(per "${T[probe_libc:malloc,1]:-0}")"
printf '%-34s %14s %14s\n' "context switches" "$(per "${T[context-switches,0]:-0}")" \
  "$(per "${T[context-switches,1]:-0}")"
