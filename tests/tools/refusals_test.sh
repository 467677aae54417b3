#!/bin/bash
# Operator mistakes that must be refused at once, with what to do:
#  - a second control plane on an address one already serves (gRPC's default
#    SO_REUSEPORT would let both listen and split the agents between them);
#  - an agent --controlplane that is no HOST:PORT (it used to start and retry
#    the address silently);
#  - files that cannot serve, found before anything is made: a --ca-bundle
#    without a PEM certificate (the agent used to pin and attach its BPF
#    programs first), a missing --bootstrap-tokens (the control plane used to
#    generate and keep a development CA first);
#  - sluicectl arguments it can judge alone: exit 2 without asking any agent;
#  - `sluice-controlplane --validate` of a file with no policy in it says so
#    (it printed nothing, which reads as "all valid").
# Usage: refusals_test.sh BUILD_DIR
set -u
BUILD=$1
CP=$BUILD/controlplane/sluice-controlplane
AGENT=$BUILD/agent/sluice-agent
CTL=$BUILD/tools/sluicectl
TMP=$(mktemp -d /tmp/sluice-refusals-XXXXXX)
FIRST=
cleanup() {
  [ -n "$FIRST" ] && kill "$FIRST" 2>/dev/null && wait "$FIRST" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$TMP/one" "$TMP/two"
"$CP" --local-config "$TMP/one" --listen "127.0.0.1:$PORT" >"$TMP/one.log" 2>&1 &
FIRST=$!
for _ in $(seq 100); do
  grep -q "serving discovery" "$TMP/one.log" && break
  sleep 0.1
done
grep -q "serving discovery" "$TMP/one.log" || fail "the first control plane did not start: $(cat "$TMP/one.log")"
timeout 20 "$CP" --local-config "$TMP/two" --listen "127.0.0.1:$PORT" >"$TMP/two.log" 2>&1
rc=$?
[ "$rc" = 1 ] || fail "a second control plane on 127.0.0.1:$PORT exited $rc, want 1: $(cat "$TMP/two.log")"
grep -q "cannot listen on 127.0.0.1:$PORT" "$TMP/two.log" || fail "no reason given: $(cat "$TMP/two.log")"
kill -0 "$FIRST" || fail "the first control plane died"
echo "ok: a second control plane on the same address is refused"

for bad in nope 127.0.0.1 127.0.0.1:0 127.0.0.1:99999 ::1:15010 ":15010"; do
  out=$("$AGENT" --node-name n --controlplane "$bad" --ca-bundle /nonexistent 2>&1)
  rc=$?
  [ "$rc" = 2 ] || fail "--controlplane '$bad' exited $rc, want 2: $out"
  echo "$out" | grep -q "must be HOST:PORT" || fail "--controlplane '$bad': $out"
done
echo "ok: a malformed --controlplane is a usage error"

PIN=/sys/fs/bpf/sluice-refusals-$$
echo "not a certificate" >"$TMP/hostname"
out=$("$AGENT" --node-name n --controlplane 127.0.0.1:1 --ca-bundle "$TMP/hostname" --bpf-pin-dir "$PIN" 2>&1)
rc=$?
if [ -e "$PIN" ]; then
  "$AGENT" uninstall --bpf-pin-dir "$PIN" >/dev/null 2>&1
  fail "a --ca-bundle without a certificate left BPF state in $PIN: $out"
fi
[ "$rc" = 1 ] || fail "a --ca-bundle without a certificate exited $rc, want 1: $out"
echo "$out" | grep -q "no PEM certificate found" || fail "--ca-bundle: $out"
mkdir -p "$TMP/three"
out=$("$CP" --local-config "$TMP/three" --listen 127.0.0.1:1 --bootstrap-tokens "$TMP/none" 2>&1)
rc=$?
[ "$rc" = 1 ] || fail "a missing --bootstrap-tokens exited $rc, want 1: $out"
[ ! -e "$TMP/three-ca" ] || fail "a missing --bootstrap-tokens left a development CA in $TMP/three-ca"
echo "ok: unusable files are refused before anything is made"

# No agent listens on this address: a usage error must come first.
ADMIN=127.0.0.1:1
for args in "-o json install" "-o json uninstall" "authz check --from a/b --to nope" \
            "authz check --from a/b --to a/:80" "authz check --from a/b --to a/b:"; do
  out=$("$CTL" --admin $ADMIN $args 2>&1)
  rc=$?
  [ "$rc" = 2 ] || fail "sluicectl $args exited $rc, want 2: $out"
  echo "$out" | grep -q "cannot reach" && fail "sluicectl $args asked the agent: $out"
done
out=$("$CTL" --admin $ADMIN check --pre --kubeconfig "$TMP/none" 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "sluicectl check --pre --kubeconfig exited $rc, want 2: $out"
echo "$out" | grep -q "without --pre" || fail "sluicectl check --pre --kubeconfig: $out"
echo "ok: sluicectl refuses what it can judge alone"

for flag in --admin-addr --metrics-addr; do
  out=$("$AGENT" --node-name n --controlplane 127.0.0.1:1 $flag 127.0.0.1:0 2>&1)
  rc=$?
  [ "$rc" = 2 ] || fail "$flag 127.0.0.1:0 exited $rc, want 2: $out"
  echo "$out" | grep -q "port from 1 to 65535" || fail "$flag 127.0.0.1:0: $out"
done
out=$(timeout 20 "$CP" --local-config "$TMP/one" --listen 127.0.0.1:0 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "--listen 127.0.0.1:0 exited $rc, want 2: $out"
echo "$out" | grep -q "port from 1 to 65535" || fail "--listen 127.0.0.1:0: $out"
out=$("$CTL" --admin foo check 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "sluicectl --admin foo check exited $rc, want 2: $out"
echo "$out" | grep -q "must be IP:PORT" || fail "sluicectl --admin foo: $out"
for td in "" "a/b" "two words"; do
  out=$("$AGENT" --node-name n --controlplane 127.0.0.1:1 --trust-domain "$td" 2>&1)
  rc=$?
  [ "$rc" = 2 ] || fail "agent --trust-domain '$td' exited $rc, want 2: $out"
  echo "$out" | grep -q "a trust domain is" || fail "agent --trust-domain '$td': $out"
  out=$(timeout 20 "$CP" --local-config "$TMP/one" --listen 127.0.0.1:1 --trust-domain "$td" 2>&1)
  rc=$?
  [ "$rc" = 2 ] || fail "control plane --trust-domain '$td' exited $rc, want 2: $out"
done
out=$("$AGENT" uninstall --bpf-pin-dir /sys/fs/bpf/sluice-refusals-none --node-name n 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "uninstall with a daemon flag exited $rc, want 2: $out"
echo "$out" | grep -q "unknown flag --node-name" || fail "uninstall --node-name: $out"
echo "ok: listen addresses need a port, --admin an address, --trust-domain a name"

# Flags that do not go together are refused before any source is read: no
# KUBERNETES_SERVICE_HOST here, which the Kubernetes source would fail on first.
out=$(env -u KUBERNETES_SERVICE_HOST timeout 20 "$CP" --kubernetes --trust-anchor "$TMP/a.pem" 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "--kubernetes --trust-anchor alone exited $rc, want 2: $out"
echo "$out" | grep -q "go together" || fail "--kubernetes --trust-anchor alone: $out"
out=$(env -u KUBERNETES_SERVICE_HOST timeout 20 "$CP" --kubernetes 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "--kubernetes without a CA exited $rc, want 2: $out"
echo "$out" | grep -q "give the CA" || fail "--kubernetes without a CA: $out"
echo "ok: flag combinations are judged before the source"

printf 'node1: aaaaaaaaaaaaaaaa\nnode2: aaaaaaaaaaaaaaaa\n' >"$TMP/tokens"
mkdir -p "$TMP/four"
out=$(timeout 20 "$CP" --local-config "$TMP/four" --listen 127.0.0.1:1 --bootstrap-tokens "$TMP/tokens" 2>&1)
rc=$?
[ "$rc" = 1 ] || fail "a token given to two nodes exited $rc, want 1: $out"
echo "$out" | grep -q "line 2: the token of line 1 again" || fail "a token given twice: $out"
echo "ok: a bootstrap token given to two nodes is refused"

printf '# nothing here yet\n' >"$TMP/empty.yaml"
printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n' >"$TMP/ns.yaml"
for f in empty.yaml ns.yaml; do
  out=$("$CP" --validate "$TMP/$f" 2>&1)
  rc=$?
  [ "$rc" = 0 ] || fail "--validate $f exited $rc, want 0: $out"
  echo "$out" | grep -q "holds no AuthorizationPolicy or PeerAuthentication: nothing to check" ||
    fail "--validate $f: '$out'"
done
echo "ok: --validate of a file without policies says so"
