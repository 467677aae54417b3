#!/usr/bin/env bash
# `make bench` (part 2): pod on node1 -> pod on node2, side by side in one run:
#   no mesh        plain TCP between unenrolled pods
#   haproxy mTLS   unenrolled pods; HAProxy on node1 originates TLS 1.3 with a
#                  mesh-issued client certificate, HAProxy on node2 terminates it and
#                  requires a client certificate from the same trust anchor
#   sockmap off    enrolled pods; HBONE (HTTP/2 CONNECT over TLS 1.3) between the
#                  agents, the agents' default --sockmap=off
#   sockmap on     the same pods and servers after both agents restarted with
#                  --sockmap=on: the pod-local hops (app <-> proxy in each pod)
#                  redirected by sk_msg; the HBONE hop between the nodes is TCP + TLS
# Figures: iperf3 throughput (1 and 8 streams), HTTP requests/s and p50/p99 at
# fixed concurrency (wrk -> nginx), new connections/s (wrk, Connection: close),
# RSS per node (agent vs haproxy), the proxies' CPU seconds (both nodes
# together) per GB (iperf3), per 1000 requests (wrk keep-alive) and per 1000
# new connections, the AES-GCM rate of one core (the ceiling), and what the
# sockmap counters moved during each figure of the sockmap-on column.
# BENCH_IPERF_RATE=R caps each iperf3 stream at R bit/s (iperf3 -b, e.g. 2G):
# the CPU per GB of the columns at one rate they all sustain.
# BENCH_ROUNDS=N measures every column N times in turn and prints medians.
# BENCH_PERF_DIR=dir also records `perf record -g` of the agents for 3 s in the
# middle of each Sluice figure (dir/<column>-<figure>.data).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lab_env.sh mtls
DUR="${BENCH_SECONDS:-5}"
CONC="${BENCH_CONCURRENCY:-32}"
sampler=""  # a running tcp_mem_peak, stopped by figure() or here
bench_cleanup() {
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
  for f in "$work"/haproxy-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
}

lab_up 2
$LAB ns label mesh sluice.dev/mesh=enabled
$LAB ns label plain team=bench
for ns in mesh plain; do
  $LAB pod add $ns client --node node1 --sa client >/dev/null
  $LAB pod add $ns server --node node2 --sa server >/dev/null
done

# nginx + iperf3 servers in both server pods.
. bench/nginx.sh
for ns in mesh plain; do
  nginx_conf "$work/nginx-$ns.conf" "$work/nginx-$ns.pid" "$work"
  $LAB exec $ns/server -- iperf3 -s -p 5201 >/dev/null 2>&1 &
  $LAB exec $ns/server -- nginx -c "$work/nginx-$ns.conf" -p "$work" >/dev/null 2>&1 &
done

# HAProxy pair with certificates from the lab's mesh CA (same CA, same key type).
issue() {  # name uri
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/$1.key" \
    -subj /O=bench -out "$work/$1.csr" 2>/dev/null
  printf 'subjectAltName=critical,URI:%s\nextendedKeyUsage=clientAuth,serverAuth\nbasicConstraints=critical,CA:FALSE\n' \
    "$2" > "$work/$1.ext"
  openssl x509 -req -in "$work/$1.csr" -CA "$LAB_DIR/ca/ca.pem" -CAkey "$LAB_DIR/ca/ca-key.pem" \
    -days 1 -extfile "$work/$1.ext" -out "$work/$1.crt" 2>/dev/null
  cat "$work/$1.crt" "$LAB_DIR/ca/ca.pem" "$work/$1.key" > "$work/$1.pem"
}
issue hap-client spiffe://cluster.local/ns/plain/sa/client
issue hap-server spiffe://cluster.local/ns/plain/sa/server
anchor="$LAB_DIR/ca/trust-anchor.pem"
plain_server=$($LAB pod ip plain server)
node2_ip=10.99.0.12
node1_gw=10.244.1.1
cat > "$work/haproxy-node1.cfg" <<CFG
global
  maxconn 8000
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen iperf
  bind $node1_gw:15201
  server n2 $node2_ip:25201 ssl crt $work/hap-client.pem ca-file $anchor verify required ssl-min-ver TLSv1.3
listen http
  bind $node1_gw:18080
  server n2 $node2_ip:28080 ssl crt $work/hap-client.pem ca-file $anchor verify required ssl-min-ver TLSv1.3
CFG
cat > "$work/haproxy-node2.cfg" <<CFG
global
  maxconn 8000
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen iperf
  bind $node2_ip:25201 ssl crt $work/hap-server.pem ca-file $anchor verify required ssl-min-ver TLSv1.3
  server app $plain_server:5201
listen http
  bind $node2_ip:28080 ssl crt $work/hap-server.pem ca-file $anchor verify required ssl-min-ver TLSv1.3
  server app $plain_server:8080
CFG
for n in node1 node2; do
  $LAB node exec $n -- haproxy -D -f "$work/haproxy-$n.cfg" -p "$work/haproxy-$n.pid"
done

. bench/wait_port.sh

declare -A R
# CPU seconds (utime + stime, /proc/PID/stat) of the proxies of a column on
# both nodes: the agents for the two Sluice columns, the HAProxy pair for
# haproxy.
proxy_pids() {  # key
  case $1 in
    sluice | sockmap) for n in 1 2; do echo "$(cat "$LAB_DIR/node$n/agent.pid")"; done ;;
    haproxy) for n in 1 2; do echo "$(cat "$work/haproxy-node$n.pid")"; done ;;
  esac
}
. bench/proc_cpu.sh
config_dump() { $LAB node exec "node$1" -- curl -sf http://127.0.0.1:15000/config_dump; }
stats() { $LAB node exec "node$1" -- curl -sf http://127.0.0.1:15000/stats; }
# The sockmap counters of both agents (/config_dump bpf.sockmap.stats, and
# the bound's /stats bpf.sockmap_behind_tcp, bpf.sockmap_caught_up and
# bpf.splice_behind), summed,
# as JSON.
sockmap_stats() {
  { config_dump 1; echo; config_dump 2; echo; stats 1; echo; stats 2; } | /usr/bin/python3 -c '
import json, sys
t, text, i = {}, sys.stdin.read(), 0
while True:  # two documents, one after the other
    while i < len(text) and text[i].isspace(): i += 1
    if i >= len(text): break
    j, i = json.JSONDecoder().raw_decode(text, i)
    if "sockmap" in j["bpf"]:  # a /config_dump
        for k, v in j["bpf"]["sockmap"].get("stats", {}).items(): t[k] = t.get(k, 0) + v
    else:  # a /stats: the backpressure bound
        for k in ("sockmap_behind_tcp", "sockmap_caught_up", "splice_behind"): t[k] = t.get(k, 0) + j["bpf"].get(k, 0)
print(json.dumps(t))'
}
# What the counters moved since the file $1 (sockmap_stats before a figure).
sockmap_delta() {  # before-file
  sockmap_stats | /usr/bin/python3 -c '
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(sys.stdin)
print(" ".join(f"{k}={b[k] - a.get(k, 0)}" for k in b))' "$1"
}
# BENCH_PERF_DIR=dir: perf record (-F 999 -g) of the Sluice columns' agents
# for 3 s in the middle of each figure, into dir/<column>-<figure>.data.
perf_wanted() { [ -n "${BENCH_PERF_DIR:-}" ] && { [ "$1" = sluice ] || [ "$1" = sockmap ]; }; }
perf_during() {  # key figure
  mkdir -p "$BENCH_PERF_DIR"
  (sleep "$(awk -v d="$DUR" 'BEGIN {print (d > 4 ? d / 2 - 1.5 : 0)}')"
   perf record -q -F 999 -g -o "$BENCH_PERF_DIR/$1-$2.data" -p "$(echo $pids | tr ' ' ,)" -- sleep 3 \
     >/dev/null 2>&1) &
}
# The machine's TCP memory (/proc/net/sockstat "TCP ... mem", pages), the
# highest value seen every 0.2 s until killed, in MiB, into the file $1.
tcp_mem_peak() {
  local peak=0 m
  trap 'echo $((peak * $(getconf PAGESIZE) / 1048576)) >"$1"; exit 0' TERM
  while :; do
    m=$(awk '$1=="TCP:" {print $NF}' /proc/net/sockstat)
    [ "$m" -le "$peak" ] || peak=$m
    sleep 0.2
  done
}
# One figure of a column: runs the command with its output in $out, the
# proxies' CPU seconds it took in $cpu ("-" without proxies) and, for the
# sockmap-on column, what the sockmap counters moved in R[sm,figure].
figure() {  # key figure command...
  local key=$1 fig=$2 cpu0 perf_pid=""
  shift 2
  [ -z "$pids" ] || cpu0=$(cpu_seconds $pids)
  if [ "$key" = sockmap ]; then
    sockmap_stats >"$work/sockmap-before"
    tcp_mem_peak "$work/tcp-mem" &
    sampler=$!
  fi
  if perf_wanted "$key"; then
    perf_during "$key" "$fig"
    perf_pid=$!
  fi
  out=$("$@")
  cpu=-
  [ -z "$pids" ] || cpu=$(awk -v a="$cpu0" -v b="$(cpu_seconds $pids)" 'BEGIN {print b - a}')
  [ -z "$perf_pid" ] || wait "$perf_pid" || true
  if [ -n "$sampler" ]; then
    kill "$sampler"
    wait "$sampler" || true
    sampler=""
    R[sm,$fig]="$(sockmap_delta "$work/sockmap-before") tcp_mem_peak_mib=$(cat "$work/tcp-mem")"
  fi
}
per() {  # cpu count unit: proxies' CPU seconds per unit of count
  case "$1:$2" in -:* | *:0) echo -; return ;; esac
  awk -v c="$1" -v n="$2" -v u="$3" 'BEGIN {printf "%.3f", c * u / n}'
}
to_us() { /usr/bin/python3 -c "
v='$1'
m={'us':1,'ms':1000,'s':1000000}
for u in ('us','ms','s'):
    if v.endswith(u): print('%.0f' % (float(v[:-len(u)])*m[u])); break"; }
measure() {  # key client-pod ip iperf-port http-port
  local key=$1 pod=$2 ip=$3 iport=$4 hport=$5 pids out cpu r
  wait_port "$pod" "$ip" "$iport"
  wait_port "$pod" "$ip" "$hport"
  pids=$(proxy_pids "$key" | tr '\n' ' ')
  for streams in 1 8; do
    # One retry when the iperf3 server is still busy with the previous
    # test's control connection; another error is the figure ("fail", the
    # error printed under the table).
    for try in 1 2; do
      figure "$key" "iperf$streams" $LAB exec "$pod" -- iperf3 -c "$ip" -p "$iport" -t "$DUR" -P $streams \
        ${BENCH_IPERF_RATE:+-b "$BENCH_IPERF_RATE"} -J || true
      r=$(/usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
if "error" in j:
    print("fail 0 %s" % j["error"])
else:
    e = j["end"]["sum_received"]
    print("%.2f %d" % (e["bits_per_second"] / 1e9, e["bytes"]))' <<<"$out")
      case "$r" in *busy*) sleep 1 ;; *) break ;; esac
    done
    if [ "${r%% *}" = fail ]; then
      R[err,$key,iperf$streams]=${r#fail 0 }
      r="fail 0"
    fi
    R[$key,iperf$streams]=${r% *}
    R[$key,gbcpu$streams]=$(per "$cpu" "${r#* }" 1e9)
  done
  figure "$key" rps $LAB exec "$pod" -- wrk -t2 -c"$CONC" -d"${DUR}s" --latency "http://$ip:$hport/"
  R[$key,rps]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  R[$key,cpu]=$(per "$cpu" "$(awk '/requests in/ {print $1}' <<<"$out")" 1000)
  R[$key,p50]=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
  R[$key,p99]=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
  figure "$key" cps $LAB exec "$pod" -- wrk -t2 -c"$CONC" -d"${DUR}s" -H "Connection: close" "http://$ip:$hport/"
  R[$key,cps]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  R[$key,cpucps]=$(per "$cpu" "$(awk '/requests in/ {print $1}' <<<"$out")" 1000)
}
# RSS once the load is over (both release memory when idle), total and
# anonymous (the process's own memory, without shared library text).
rss() { awk -v k="$2:" '$1==k {printf "%.1f", $2/1024}' "/proc/$1/status"; }
measure_rss() {  # key...
  sleep 6
  local key n kind pid
  for key in "$@"; do
    n=0
    for pid in $(proxy_pids "$key"); do
      n=$((n + 1))
      for kind in VmRSS RssAnon; do R[$key,$kind$n]=$(rss "$pid" $kind); done
    done
  done
}

# BENCH_ROUNDS=N: the columns are measured N times in turn (no mesh, Sluice,
# HAProxy; then no mesh and Sluice with sockmap on), and each figure is the
# median of its rounds: on a VM whose speed drifts, a ratio then compares
# figures taken close together. The rounds are printed under the table.
FIGS="iperf1 iperf8 gbcpu1 gbcpu8 rps p50 p99 cpu cps cpucps"
keep_round() {  # key: appends this round's figures to their lists
  local f
  for f in $FIGS; do R[$1,$f,all]="${R[$1,$f,all]:-} ${R[$1,$f]}"; done
}
# The median of the numbers in a list ("fail" and "-" left out; none: the
# last entry as it is).
median() {
  /usr/bin/python3 -c '
import re, sys
v = sys.argv[1].split()
nums = [x for x in v if re.fullmatch(r"\d+(\.\d+)?", x)]
if not nums:
    print(v[-1] if v else "-")
else:
    d = len(nums[0].split(".")[1]) if "." in nums[0] else 0  # as the figures are written
    n, k = sorted(map(float, nums)), len(nums)
    print(f"{(n[k // 2] if k % 2 else (n[k // 2 - 1] + n[k // 2]) / 2):.{d}f}")' "$1"
}
ROUNDS="${BENCH_ROUNDS:-1}"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for _ in $(seq "$ROUNDS"); do
  measure plain plain/client "$plain_server" 5201 8080
  keep_round plain
  measure sluice mesh/client "$($LAB pod ip mesh server)" 5201 8080
  keep_round sluice
  measure haproxy plain/client "$node1_gw" 15201 18080
  keep_round haproxy
done
measure_rss sluice haproxy
# The same pods and servers with the pod-local hops on sockmap (app <-> proxy
# in the client pod, proxy <-> app in the server pod; the HBONE hop between
# the nodes stays TCP + TLS): both agents restarted with --sockmap=on.
sockmap_on node1 node2
for round in $(seq "$ROUNDS"); do
  if [ "$round" -gt 1 ]; then
    measure plain plain/client "$plain_server" 5201 8080
    keep_round plain
  fi
  measure sockmap mesh/client "$($LAB pod ip mesh server)" 5201 8080
  keep_round sockmap
done
measure_rss sockmap
for key in plain sluice haproxy sockmap; do
  for f in $FIGS; do R[$key,$f]=$(median "${R[$key,$f,all]}"); done
done

# The ceiling: what one core of this machine encrypts (AES-GCM, 16 KiB
# blocks, one TLS record's worth), so the cross-node figure reads against it.
for alg in aes-128-gcm aes-256-gcm; do
  R[ceil,$alg]=$(openssl speed -mr -seconds 1 -bytes 16384 -evp $alg 2>/dev/null |
    awk -F: '/^\+F:/ {printf "%.2f", $4 * 8 / 1e9}')
done

rounds_note=""
[ "$ROUNDS" -eq 1 ] || rounds_note=", median of $ROUNDS rounds"
echo
echo "Sluice mTLS benchmark — pod on node1 -> pod on node2, $(nproc) cores, ${DUR}s per figure$rounds_note, wrk -c$CONC,${BENCH_IPERF_RATE:+ iperf3 -b $BENCH_IPERF_RATE per stream,}" \
  "load $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo "columns: no mesh | HAProxy mTLS pair | Sluice sockmap off | Sluice sockmap on;" \
  "x0 = ratio to no mesh, xH = ratio to HAProxy (for latency and CPU, lower is better)"
ratio() {  # value reference
  case "$1$2" in *-* | *fail*) echo "" ;; *) awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2fx", a / b}' ;; esac
}
line() { printf '%-31s %9s %9s %10s %6s %6s %10s %6s %6s\n' "$@"; }
row() {  # label figure
  local p=${R[plain,$2]} h=${R[haproxy,$2]} s=${R[sluice,$2]} m=${R[sockmap,$2]}
  line "$1" "$p" "$h" "$s" "$(ratio "$s" "$p")" "$(ratio "$s" "$h")" "$m" "$(ratio "$m" "$p")" "$(ratio "$m" "$h")"
}
line "figure" "no mesh" "haproxy" "sockmap off" "x0" "xH" "sockmap on" "x0" "xH"
row "iperf3 1 stream (Gbit/s)" iperf1
row "iperf3 8 streams (Gbit/s)" iperf8
row "proxy CPU s / GB, 1 stream" gbcpu1
row "proxy CPU s / GB, 8 streams" gbcpu8
row "HTTP requests/s (keep-alive)" rps
row "HTTP p50 latency (us)" p50
row "HTTP p99 latency (us)" p99
row "proxy CPU s / 1000 requests" cpu
row "new connections/s" cps
row "proxy CPU s / 1000 new conns" cpucps
for n in 1 2; do
  R[plain,VmRSS$n]=- R[plain,RssAnon$n]=-
  row "RSS node$n (MiB)" VmRSS$n
  row "  of which anonymous (MiB)" RssAnon$n
done
echo "ceiling: one core encrypts ${R[ceil,aes-128-gcm]} Gbit/s with AES-128-GCM," \
  "${R[ceil,aes-256-gcm]} Gbit/s with AES-256-GCM (openssl speed, 16 KiB blocks)"
echo "sockmap counters during each figure of the sockmap-on column (its last round; both agents; bytes_redirected"
echo "counts the pod-local hops, app -> proxy in the client pod and proxy -> app in the server pod):"
for f in iperf1 iperf8 rps cps; do printf '  %-7s %s\n' "$f" "${R[sm,$f]}"; done
if [ "$ROUNDS" -gt 1 ]; then
  echo "each figure is the median of $ROUNDS rounds (no mesh: $((2 * ROUNDS - 1))); the rounds, in order:"
  for f in iperf1 iperf8 rps cps; do
    for key in plain haproxy sluice sockmap; do printf '  %-7s %-8s%s\n' "$f" "$key" "${R[$key,$f,all]}"; done
  done
fi
for k in sluice sockmap; do
  for f in iperf1 iperf8; do
    [ -z "${R[err,$k,$f]:-}" ] || echo "$k $f failed: iperf3: ${R[err,$k,$f]}"
  done
done
