#!/usr/bin/env bash
# Idempotent install of everything the build, tests, demo and benchmarks need.
# Debian 12 packages only.
set -euo pipefail
PKGS=(
  build-essential cmake pkg-config ccache clang clang-14 libfuzzer-14-dev clang-format llvm bpftool libbpf-dev libelf-dev zlib1g-dev
  liburing-dev libssl-dev openssl libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  protobuf-compiler libspdlog-dev libfmt-dev doctest-dev libnghttp2-dev libhttp-parser-dev libexpected-dev
  nlohmann-json3-dev libyaml-cpp-dev libcurl4-openssl-dev
  iproute2 containernetworking-plugins util-linux procps psmisc python3
  socat iperf3 wrk curl nginx-light
  python3-h2 tcpdump haproxy
  kubernetes-client python3-jsonschema python3-yaml golang-k8s-kube-openapi-dev buildah
  prometheus  # promtool: the metrics e2e test checks a real scrape with it
  containerd  # with runc: sluice-cni under a real CRI runtime (tests/e2e/test_cri.py)
)
# A previous interrupted install must be finished before apt can add anything.
dpkg --configure -a >/dev/null 2>&1 || true
missing=()
for p in "${PKGS[@]}"; do
  # Some machine images ship another kubectl package owning /usr/bin/kubectl, which
  # kubernetes-client cannot overwrite; any kubectl with built-in kustomize will do.
  if [ "$p" = kubernetes-client ] && command -v kubectl >/dev/null; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The scripts and tests run Debian's interpreter (/usr/bin/python3), never
# whichever interpreter comes first in PATH: that is where these modules are.
check_python() {
  if ! /usr/bin/python3 -c 'import h2, yaml, jsonschema' 2>/dev/null; then
    echo "deps: /usr/bin/python3 cannot import h2, yaml and jsonschema although python3-h2," \
      "python3-yaml and python3-jsonschema are installed; reinstall them (apt-get install" \
      "--reinstall python3-h2 python3-yaml python3-jsonschema)" >&2
    exit 1
  fi
}
if [ ${#missing[@]} -eq 0 ]; then
  check_python
  echo "deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
check_python
echo "deps: done"
