#!/usr/bin/env bash
# `make demo`: one node, namespace `shop` enrolled and `legacy` not, an HTTP
# server and a client in each. Shows shop's requests carried by the proxy and
# legacy's going direct, then tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_BUILD_DIR="${SLUICE_BUILD_DIR:-$PWD/build}"
LAB="/usr/bin/python3 tools/lab"
APP="/usr/bin/python3 tests/e2e/apps/tcpapp.py"
CTL="$SLUICE_BUILD_DIR/tools/sluicectl --bpf-pin-dir /sys/fs/bpf/sluice-lab/node1"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  $LAB down >/dev/null 2>&1 || true
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Bringing up a one-node lab (control plane + agent, real CNI chain)"
$LAB down >/dev/null 2>&1 || true
$LAB up --nodes 1
$LAB ns label shop sluice.dev/mesh=enabled
$LAB ns label legacy team=legacy

step "Creating pods through the CNI chain (bridge + host-local + sluice-cni)"
for p in "shop web" "shop client" "legacy web" "legacy client"; do
  set -- $p
  ip=$($LAB pod add "$1" "$2" --node node1 --sa "$2")
  echo "  pod $1/$2 -> $ip"
done
SHOP_WEB=$($LAB pod ip shop web)
LEGACY_WEB=$($LAB pod ip legacy web)

step "Starting an HTTP server in shop/web and legacy/web (port 8080)"
for pod in shop/web legacy/web; do
  $LAB exec "$pod" -- /usr/bin/python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &
  pids+=($!)
done
for ip in "$SHOP_WEB" "$LEGACY_WEB"; do
  for _ in $(seq 100); do
    $LAB node exec node1 -- curl -s -o /dev/null "http://$ip:8080/" && break
    sleep 0.1
  done
done

step "Workloads as the node agent sees them"
$LAB node exec node1 -- $CTL workloads

step "shop/client -> shop/web: 3 requests (captured by eBPF, carried by the node proxy)"
for i in 1 2 3; do
  $LAB exec shop/client -- curl -s -o /dev/null -w "  HTTP %{http_code} in %{time_total}s\n" "http://$SHOP_WEB:8080/"
done

step "legacy/client -> legacy/web: 3 requests (not enrolled: direct)"
for i in 1 2 3; do
  $LAB exec legacy/client -- curl -s -o /dev/null -w "  HTTP %{http_code} in %{time_total}s\n" "http://$LEGACY_WEB:8080/"
done

step "Connections carried by the proxy (sluicectl connections)"
$LAB node exec node1 -- $CTL connections
n_shop=$($LAB node exec node1 -- $CTL -o json connections | /usr/bin/python3 -c 'import json,sys; print(sum(1 for c in json.load(sys.stdin)["connections"] if c["pod"]=="shop/client"))')
n_legacy=$($LAB node exec node1 -- $CTL -o json connections | /usr/bin/python3 -c 'import json,sys; print(sum(1 for c in json.load(sys.stdin)["connections"] if c["pod"].startswith("legacy/")))')

step "Pinned BPF state (sluicectl bpf)"
$LAB node exec node1 -- $CTL bpf

step "Result"
echo "  shop/client connections through the proxy:   $n_shop (expected 3)"
echo "  legacy connections through the proxy:        $n_legacy (expected 0)"
[ "$n_shop" -ge 3 ] && [ "$n_legacy" -eq 0 ] || { echo "DEMO FAILED"; exit 1; }

step "Tearing down"
cleanup
trap - EXIT
left=$(ip netns list | grep -c '^slb-' || true)
echo "  network namespaces left: $left"
echo "Demo OK"
