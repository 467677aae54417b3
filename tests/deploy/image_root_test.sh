#!/usr/bin/env bash
# Proves that an image root from tools/image-root.sh is self-contained: the
# binary runs (`--help`) chrooted into it, with nothing of the host's visible.
# Then proves the check can fail: with a library taken out, it must not run.
#
#   image_root_test.sh BUILD_DIR BINARY   (a path, or a name under BUILD_DIR)
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR BINARY" >&2
  exit 2
fi
build="$1"
binary="$2"
bin=$(basename "$binary")
repo="$(cd "$(dirname "$0")/../.." && pwd)"
if [ "$(id -u)" != 0 ]; then
  echo "FAIL: this test needs root (chroot)" >&2
  exit 1
fi

work=$(mktemp -d /tmp/sluice-image-root-test-XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
chroot_bin=$(command -v chroot)

bash "$repo/tools/image-root.sh" "$build" "$root" "$binary"

# Every file in the root is a regular file or directory: no symlink that would
# point back into the host's tree.
if links=$(find "$root" -type l) && [ -n "$links" ]; then
  echo "FAIL: symlinks in the image root: $links" >&2
  exit 1
fi

if ! out=$(env -i "$chroot_bin" "$root" "/usr/local/bin/$bin" --help 2>&1); then
  echo "FAIL: chroot $root /usr/local/bin/$bin --help failed:" >&2
  echo "$out" >&2
  exit 1
fi
if ! grep -q "$bin" <<<"$out"; then
  echo "FAIL: $bin --help in the image root printed no usage:" >&2
  echo "$out" >&2
  exit 1
fi
echo "ok: $bin --help runs chrooted in its image root ($(find "$root" -type f | wc -l) files)"

# Negative check: the same run must fail when the root lacks what it needs.
libs=$(find "$root" -type f -name '*.so*')
if [ -z "$libs" ]; then
  # A static binary: the root must hold nothing but the binary (and nsswitch.conf).
  extra=$(find "$root" -type f ! -path "$root/usr/local/bin/$bin" ! -path "$root/etc/nsswitch.conf")
  if [ -n "$extra" ]; then
    echo "FAIL: a static binary's root holds more files: $extra" >&2
    exit 1
  fi
  if ! readelf -lW "$root/usr/local/bin/$bin" | grep -q 'LOAD' ||
    readelf -lW "$root/usr/local/bin/$bin" | grep -q 'INTERP'; then
    echo "FAIL: $bin has no image libraries but is not a static executable" >&2
    exit 1
  fi
  echo "ok: $bin is static; its root holds only the binary"
  exit 0
fi
libc=$(find "$root" -type f -name 'libc.so.6' | head -1)
if [ -z "$libc" ]; then
  echo "FAIL: $bin is dynamic but its root has no libc.so.6" >&2
  exit 1
fi
mv "$libc" "$libc.away"
if env -i "$chroot_bin" "$root" "/usr/local/bin/$bin" --help >/dev/null 2>&1; then
  echo "FAIL: $bin still ran with libc.so.6 taken out of its root: the check proves nothing" >&2
  exit 1
fi
echo "ok: without libc.so.6 in the root it does not run (the check can fail)"
