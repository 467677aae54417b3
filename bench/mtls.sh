#!/usr/bin/env bash
# `make bench` (part 2): pod on node1 -> pod on node2, side by side in one run:
#   no mesh        plain TCP between unenrolled pods
#   sluice mTLS    enrolled pods; HBONE (HTTP/2 CONNECT over TLS 1.3) between the agents
#   haproxy mTLS   unenrolled pods; HAProxy on node1 originates TLS 1.3 with a
#                  mesh-issued client certificate, HAProxy on node2 terminates it and
#                  requires a client certificate from the same trust anchor
# Figures: iperf3 throughput (1 and 8 streams), HTTP requests/s and p50/p99 at
# fixed concurrency (wrk -> nginx), new connections/s (wrk, Connection: close),
# RSS per node (agent vs haproxy), the proxies' CPU seconds per GB (iperf3,
# one stream) and per 1000 requests (wrk keep-alive), both nodes together,
# and the AES-GCM rate of one core (the ceiling).
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_BUILD_DIR="${SLUICE_BUILD_DIR:-$PWD/build}"
LAB="/usr/bin/python3 tools/lab"
LAB_DIR="${SLUICE_LAB_DIR:-/run/sluice-lab}"
DUR="${BENCH_SECONDS:-5}"
CONC="${BENCH_CONCURRENCY:-32}"
work=$(mktemp -d /tmp/sluice-bench-mtls.XXXXXX)
cleanup() {
  disown -a 2>/dev/null || true  # servers die with the lab; no job notices
  for f in "$work"/haproxy-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  $LAB down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

$LAB down >/dev/null 2>&1 || true
$LAB up --nodes 2 >/dev/null
$LAB ns label mesh sluice.dev/mesh=enabled
$LAB ns label plain team=bench
for ns in mesh plain; do
  $LAB pod add $ns client --node node1 --sa client >/dev/null
  $LAB pod add $ns server --node node2 --sa server >/dev/null
done

# nginx + iperf3 servers in both server pods.
cat > "$work/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
error_log /dev/null;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 8080 reuseport; location / { return 200 "ok\n"; } }
}
NGINX
for ns in mesh plain; do
  sed "s#^daemon off;#daemon off;\npid $work/nginx-$ns.pid;#" "$work/nginx.conf" > "$work/nginx-$ns.conf"
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

wait_port() {  # client-pod ip port
  for _ in $(seq 100); do
    $LAB exec "$1" -- bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: $2:$3 not reachable from $1" >&2
  exit 1
}

declare -A R
# CPU seconds (utime + stime, /proc/PID/stat) of the proxies of a column on
# both nodes: the agents for sluice, the HAProxy pair for haproxy.
proxy_pids() {  # key
  case $1 in
    sluice) for n in 1 2; do echo "$(cat "$LAB_DIR/node$n/agent.pid")"; done ;;
    haproxy) for n in 1 2; do echo "$(cat "$work/haproxy-node$n.pid")"; done ;;
  esac
}
. bench/proc_cpu.sh
measure() {  # key client-pod ip iperf-port http-port
  local key=$1 pod=$2 ip=$3 iport=$4 hport=$5 pids cpu0
  wait_port "$pod" "$ip" "$iport"
  wait_port "$pod" "$ip" "$hport"
  pids=$(proxy_pids "$key")
  for streams in 1 8; do
    [ -z "$pids" ] || cpu0=$(cpu_seconds $pids)
    R[$key,iperf$streams]=$($LAB exec "$pod" -- iperf3 -c "$ip" -p "$iport" -t "$DUR" -P $streams -J |
      /usr/bin/python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print("%.2f %d" % (e["bits_per_second"]/1e9, e["bytes"]))')
    R[$key,gbcpu$streams]=-
    [ -z "$pids" ] || R[$key,gbcpu$streams]=$(awk -v a="$cpu0" -v b="$(cpu_seconds $pids)" \
      -v r="${R[$key,iperf$streams]}" 'BEGIN {split(r, f, " "); printf "%.2f", (b - a) * 1e9 / f[2]}')
    R[$key,iperf$streams]=${R[$key,iperf$streams]% *}
  done
  local out
  [ -z "$pids" ] || cpu0=$(cpu_seconds $pids)
  out=$($LAB exec "$pod" -- wrk -t2 -c"$CONC" -d"${DUR}s" --latency "http://$ip:$hport/")
  R[$key,rps]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  R[$key,cpu]=-
  [ -z "$pids" ] || R[$key,cpu]=$(awk -v a="$cpu0" -v b="$(cpu_seconds $pids)" \
    '/requests in/ {printf "%.3f", (b - a) * 1000 / $1}' <<<"$out")
  R[$key,p50]=$(awk '$1=="50%" {print $2}' <<<"$out")
  R[$key,p99]=$(awk '$1=="99%" {print $2}' <<<"$out")
  out=$($LAB exec "$pod" -- wrk -t2 -c"$CONC" -d"${DUR}s" -H "Connection: close" "http://$ip:$hport/")
  R[$key,cps]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
}
measure plain plain/client "$plain_server" 5201 8080
measure sluice mesh/client "$($LAB pod ip mesh server)" 5201 8080
measure haproxy plain/client "$node1_gw" 15201 18080

# RSS once the load is over (both release memory when idle), total and
# anonymous (the process's own memory, without shared library text).
sleep 6
rss() { awk -v k="$2:" '$1==k {printf "%.1f", $2/1024}' "/proc/$1/status"; }
for n in 1 2; do
  for kind in VmRSS RssAnon; do
    R[sluice,$kind$n]=$(rss "$(cat "$LAB_DIR/node$n/agent.pid")" $kind)
    R[haproxy,$kind$n]=$(rss "$(cat "$work/haproxy-node$n.pid")" $kind)
  done
done

to_us() { /usr/bin/python3 -c "
v='$1'
m={'us':1,'ms':1000,'s':1000000}
for u in ('us','ms','s'):
    if v.endswith(u): print('%.0f' % (float(v[:-len(u)])*m[u])); break"; }
for k in plain sluice haproxy; do
  R[$k,p50]=$(to_us "${R[$k,p50]}")
  R[$k,p99]=$(to_us "${R[$k,p99]}")
done
echo
echo "Sluice mTLS benchmark — pod on node1 -> pod on node2, $(nproc) cores, ${DUR}s per figure, wrk -c$CONC"
row() { printf '%-32s %12s %12s %12s\n' "$@"; }
row "figure" "no mesh" "sluice mTLS" "haproxy mTLS"
row "iperf3 1 stream (Gbit/s)" "${R[plain,iperf1]}" "${R[sluice,iperf1]}" "${R[haproxy,iperf1]}"
row "iperf3 8 streams (Gbit/s)" "${R[plain,iperf8]}" "${R[sluice,iperf8]}" "${R[haproxy,iperf8]}"
row "proxy CPU s / GB, 1 stream" "${R[plain,gbcpu1]}" "${R[sluice,gbcpu1]}" "${R[haproxy,gbcpu1]}"
row "HTTP requests/s (keep-alive)" "${R[plain,rps]}" "${R[sluice,rps]}" "${R[haproxy,rps]}"
row "HTTP p50 latency (us)" "${R[plain,p50]}" "${R[sluice,p50]}" "${R[haproxy,p50]}"
row "HTTP p99 latency (us)" "${R[plain,p99]}" "${R[sluice,p99]}" "${R[haproxy,p99]}"
row "new connections/s" "${R[plain,cps]}" "${R[sluice,cps]}" "${R[haproxy,cps]}"
row "proxy CPU s / 1000 requests" "${R[plain,cpu]}" "${R[sluice,cpu]}" "${R[haproxy,cpu]}"
# The ceiling: what one core of this machine encrypts (AES-GCM, 16 KiB
# blocks, one TLS record's worth), so the cross-node figure reads against it.
for alg in aes-128-gcm aes-256-gcm; do
  R[ceil,$alg]=$(openssl speed -mr -seconds 1 -bytes 16384 -evp $alg 2>/dev/null |
    awk -F: '/^\+F:/ {printf "%.2f", $4 * 8 / 1e9}')
done
for n in 1 2; do
  row "RSS node$n (MiB)" "-" "${R[sluice,VmRSS$n]}" "${R[haproxy,VmRSS$n]}"
  row "  of which anonymous (MiB)" "-" "${R[sluice,RssAnon$n]}" "${R[haproxy,RssAnon$n]}"
done
echo "ceiling: one core encrypts ${R[ceil,aes-128-gcm]} Gbit/s with AES-128-GCM," \
  "${R[ceil,aes-256-gcm]} Gbit/s with AES-256-GCM (openssl speed, 16 KiB blocks)"
