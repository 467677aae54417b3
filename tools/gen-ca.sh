#!/usr/bin/env bash
# Generates the mesh CA for a Kubernetes install: an ECDSA P-256 root (the
# trust anchor every agent gets) and an ECDSA P-256 issuing CA signed by it
# (certificate and key, for the control plane only).
#
#   tools/gen-ca.sh DIR      # usually: tools/gen-ca.sh deploy/ca
#
# Writes DIR/root-cert.pem, DIR/ca-cert.pem, DIR/ca-key.pem (what deploy/
# kustomization.yaml reads) and DIR/root-key.pem, which nothing deploys: keep
# it offline, it is only needed to issue the next issuing CA. Refuses to
# overwrite an existing CA (that would cut every running workload off).
set -euo pipefail

usage() {
  echo "usage: $0 DIR   (writes root-cert.pem, ca-cert.pem, ca-key.pem and root-key.pem into DIR)" >&2
  exit 2
}
[ $# -eq 1 ] || usage
case "$1" in -h | --help) usage ;; esac
dir="$1"
command -v openssl >/dev/null || { echo "gen-ca: openssl is not installed (apt-get install openssl)" >&2; exit 1; }

mkdir -p "$dir"
for f in root-cert.pem ca-cert.pem ca-key.pem root-key.pem; do
  if [ -e "$dir/$f" ]; then
    echo "gen-ca: $dir/$f already exists; refusing to replace the mesh CA (delete the files first to start a new one)" >&2
    exit 1
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

cat >"$work/ext.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]

[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[issuing]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# Root: 10 years, self-signed.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/root-key.pem" 2>/dev/null
openssl req -new -x509 -sha256 -days 3650 -key "$work/root-key.pem" \
  -subj "/O=sluice/CN=sluice root CA" -config "$work/ext.cnf" -extensions root \
  -out "$work/root-cert.pem"

# Issuing CA: 5 years, signed by the root, may sign leaves only (pathlen 0).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca-key.pem" 2>/dev/null
openssl req -new -sha256 -key "$work/ca-key.pem" -subj "/O=sluice/CN=sluice issuing CA" \
  -config "$work/ext.cnf" -out "$work/ca.csr"
openssl x509 -req -sha256 -days 1825 -in "$work/ca.csr" \
  -CA "$work/root-cert.pem" -CAkey "$work/root-key.pem" -set_serial "0x$(openssl rand -hex 16)" \
  -extfile "$work/ext.cnf" -extensions issuing -out "$work/ca-cert.pem" 2>/dev/null

# Check what was made before handing it out.
openssl verify -x509_strict -CAfile "$work/root-cert.pem" "$work/ca-cert.pem" >/dev/null
openssl x509 -in "$work/ca-cert.pem" -noout -ext basicConstraints | grep -q 'CA:TRUE, pathlen:0'
openssl x509 -in "$work/root-cert.pem" -noout -ext keyUsage | grep -q 'Certificate Sign'

install -m 0644 "$work/root-cert.pem" "$dir/root-cert.pem"
install -m 0644 "$work/ca-cert.pem" "$dir/ca-cert.pem"
install -m 0600 "$work/ca-key.pem" "$dir/ca-key.pem"
install -m 0600 "$work/root-key.pem" "$dir/root-key.pem"
echo "gen-ca: wrote $dir/root-cert.pem, $dir/ca-cert.pem, $dir/ca-key.pem"
echo "gen-ca: $dir/root-key.pem is not deployed; move it somewhere offline"
