#!/usr/bin/env bash
# Builds the three FROM scratch images from a build dir with buildah, offline,
# and writes them as docker archives that any runtime can load:
#
#   tools/build-images.sh BUILD_DIR OUT_DIR [TAG]     (TAG defaults to dev)
#   -> OUT_DIR/sluice-agent.tar         sluice/agent:TAG
#      OUT_DIR/sluice-controlplane.tar  sluice/controlplane:TAG
#      OUT_DIR/sluice-cni.tar           sluice/cni:TAG
#
# Load them with `ctr -n k8s.io images import FILE` on each node, `kind load
# image-archive FILE`, or `podman load -i FILE` and push to a registry. buildah
# keeps its image storage in a temporary directory (only its small blob-info
# cache stays, in /var/lib/containers/cache).
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 BUILD_DIR OUT_DIR [TAG]" >&2
  exit 2
fi
build="$1"
out="$2"
tag="${3:-dev}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
command -v buildah >/dev/null || { echo "build-images: buildah is not installed (bash tools/deps.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/sluice-build-images-XXXXXX)
trap 'rm -rf "$work"' EXIT
# vfs needs no overlay support from the kernel or the filesystem under /tmp.
buildah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
mkdir -p "$out"

for entry in agent:sluice-agent controlplane:sluice-controlplane cni:sluice-cni; do
  image="${entry%%:*}"
  binary="${entry#*:}"
  bash "$repo/tools/image-root.sh" "$build" "$work/root-$image" "$binary"
  # No RUN step, so no container runtime is needed (chroot isolation).
  "${buildah[@]}" bud --quiet --isolation chroot -f "$repo/deploy/images/$image.Containerfile" \
    -t "sluice/$image:$tag" "$work/root-$image" >/dev/null
  rm -f "$out/sluice-$image.tar"
  "${buildah[@]}" push --quiet "sluice/$image:$tag" "docker-archive:$out/sluice-$image.tar:sluice/$image:$tag"
  echo "build-images: $out/sluice-$image.tar (sluice/$image:$tag, $(du -h "$out/sluice-$image.tar" | cut -f1))"
done
