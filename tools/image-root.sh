#!/usr/bin/env bash
# Assembles a self-contained root filesystem for a FROM scratch image:
# the binaries in /usr/local/bin (debug info stripped), every shared library
# ldd reports for them at the path ldd reports, and the dynamic loader. A
# static binary brings nothing else. deploy/images/*.Containerfile COPY it.
#
#   tools/image-root.sh BUILD_DIR OUT_DIR BINARY...
#   tools/image-root.sh build /tmp/agent-root sluice-agent
#
# BINARY is an absolute path, a path under BUILD_DIR (agent/sluice-agent) or a
# file name found there. OUT_DIR is emptied first. Prove the result with
#   chroot OUT_DIR /usr/local/bin/BINARY --help
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 BUILD_DIR OUT_DIR BINARY..." >&2
  exit 2
fi
build="$1"
out="$2"
shift 2
[ -d "$build" ] || { echo "image-root: build dir $build does not exist (run make build)" >&2; exit 1; }
case "$out" in
  "" | / | /usr | /usr/* | /etc | /lib | /lib/*) echo "image-root: refusing OUT_DIR $out" >&2; exit 1 ;;
esac

find_binary() {
  local name="$1"
  if [ "${name#/}" != "$name" ] && [ -f "$name" ]; then
    echo "$name"
    return
  fi
  if [ -f "$build/$name" ]; then
    echo "$build/$name"
    return
  fi
  local found
  found=$(find "$build" -type f -name "$name" -perm -u+x -not -path '*/CMakeFiles/*')
  if [ -z "$found" ]; then
    echo "image-root: $name not found under $build (build it first: cmake --build $build --target $name)" >&2
    exit 1
  fi
  if [ "$(printf '%s\n' "$found" | wc -l)" != 1 ]; then
    echo "image-root: $name is ambiguous under $build: $(echo $found)" >&2
    exit 1
  fi
  echo "$found"
}

# Copies host file $1 to the same path under $out, as a regular file (symlinks
# resolved: ldd reports the soname path, which is usually a link).
copy_host_file() {
  local path="$1"
  [ -e "$out$path" ] && return
  mkdir -p "$out$(dirname "$path")"
  cp -L --preserve=mode "$path" "$out$path"
}

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/tmp" "$out/etc"
chmod 1777 "$out/tmp"

for name in "$@"; do
  bin=$(find_binary "$name")
  dest="$out/usr/local/bin/$(basename "$bin")"
  # Debug info stays in the build dir; the image gets the code and symbols.
  objcopy --strip-debug "$bin" "$dest"
  chmod 0755 "$dest"
  # Static: nothing else to bring (ldd says so and exits non-zero).
  if ! deps=$(ldd "$bin" 2>&1); then
    if grep -qE 'not a dynamic executable|statically linked' <<<"$deps"; then
      echo "image-root: $(basename "$bin") is static"
      continue
    fi
    echo "image-root: ldd $bin failed: $deps" >&2
    exit 1
  fi
  if grep -q 'not found' <<<"$deps"; then
    echo "image-root: $bin needs libraries this machine lacks:" >&2
    grep 'not found' <<<"$deps" >&2
    exit 1
  fi
  n=0
  # "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)" and the loader
  # as "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
  while read -r path; do
    copy_host_file "$path"
    n=$((n + 1))
  done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$deps")
  echo "image-root: $(basename "$bin") with $n shared objects (loader included)"
done

# Name resolution without /etc/nsswitch.conf works (glibc >= 2.34 has files and
# dns built in), but say it explicitly; kubelet provides resolv.conf and hosts.
printf 'hosts: files dns\n' >"$out/etc/nsswitch.conf"
echo "image-root: $out ($(du -sh "$out" | cut -f1))"
