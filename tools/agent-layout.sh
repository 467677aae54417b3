#!/usr/bin/env bash
# Regenerates agent/hot-text.ld, the linker script that places the functions a
# running agent uses first and together in its executable.
#
#   tools/agent-layout.sh [BUILD_DIR]     (root; runs a lab: take its lock,
#                                          flock /tmp/sluice-lab.lock ...)
#
# Why: the kernel maps an executable's pages 64 KiB around each first touch
# (fault-around, from the page cache), so the agent's used code, scattered
# among code it never runs, made 3.0-3.5 MiB of its text resident for 1.2 MiB
# of pages really run (docs/performance.md, "the executable's layout").
#
# How: sluice-agent-layout is the same agent with every function's section on
# a page of its own (agent/layout-text.ld). It runs from a file system on a
# loop device with read-ahead off, so a page is in the page cache only if it
# was faulted in, and fault-around maps nothing else: the pages mapped are the
# pages touched, and each names one function. A two-node lab then runs what
# an agent does: 50 enrolled pods at rest (group 1: start, pods, idle ticks),
# then the load of bench/rss.sh, same node and across nodes over HBONE, with
# sockmap off and on, and a metrics scrape (group 2). Both agents count.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:-build}" && pwd)
if [ "$(id -u)" != 0 ]; then
  echo "agent-layout: needs root (a loop mount and the lab)" >&2
  exit 1
fi
cmake --build "$build" --target sluice-agent-layout >/dev/null
layout_bin="$build/agent/sluice-agent-layout"

SLUICE_BUILD_DIR="$build"
. bench/lab_env.sh layout
mnt="$work/mnt"
ra_file=""
ra_saved=""
bench_cleanup() {  # the lab first: its agent runs from the mount
  disown -a 2>/dev/null || true
  $LAB down >/dev/null 2>&1 || true
  if [ -n "$ra_file" ] && [ -n "$ra_saved" ]; then echo "$ra_saved" >"$ra_file" || true; fi
  if mountpoint -q "$mnt"; then umount "$mnt"; fi
}

# The layout agent on its own file system, read-ahead off, nothing cached.
mkdir -p "$mnt"
truncate -s 256M "$work/fs.img"
mkfs.ext4 -q -F "$work/fs.img"
mount -o loop "$work/fs.img" "$mnt"
cp "$layout_bin" "$mnt/sluice-agent"
strip --strip-debug "$mnt/sluice-agent"
umount "$mnt"
mount -o loop "$work/fs.img" "$mnt"  # the copy's pages leave the page cache
dev=$(findmnt -n -o SOURCE "$mnt")
ra_file="/sys/class/bdi/$((0x$(stat -c %t "$dev"))):$((0x$(stat -c %T "$dev")))/read_ahead_kb"
ra_saved=$(cat "$ra_file")
echo 0 >"$ra_file"
agent="$mnt/sluice-agent"

# The lab runs the build's binaries, but this agent: a build directory of
# links, with agent/sluice-agent starting the copy.
mkdir -p "$work/build/agent"
for f in "$build"/*; do
  [ "$(basename "$f")" = agent ] || ln -s "$f" "$work/build/$(basename "$f")"
done
printf '#!/bin/sh\nexec %s "$@"\n' "$agent" >"$work/build/agent/sluice-agent"
chmod +x "$work/build/agent/sluice-agent"
export SLUICE_BUILD_DIR="$work/build"

snap() {  # node out.json
  /usr/bin/python3 tools/agent_layout.py touched "$(cat "$LAB_DIR/$1/agent.pid")" "$agent" "$2"
}

lab_up 2
$LAB ns label mesh sluice.dev/mesh=enabled
$LAB pod add mesh client --node node1 --sa client >/dev/null
$LAB pod add mesh local --node node1 --sa server >/dev/null
$LAB pod add mesh remote --node node2 --sa server >/dev/null
for i in $(seq 1 47); do $LAB pod add mesh idle$i --node node1 --sa idle >/dev/null; done
sleep 12
snap node1 "$work/idle1.json"
snap node2 "$work/idle2.json"

. bench/mesh_load.sh
mesh_servers local remote
mesh_load 2 local remote
$LAB node exec node1 -- curl -sf http://127.0.0.1:15020/metrics >/dev/null
$LAB node exec node1 -- "$build/tools/sluicectl" stats >/dev/null
sleep 7
snap node1 "$work/load1.json"
snap node2 "$work/load2.json"
sockmap_on node1
mesh_load 2 local
sleep 7
snap node1 "$work/sockmap1.json"

/usr/bin/python3 tools/agent_layout.py script "$layout_bin.map" \
  "$work/idle1.json,$work/idle2.json" "$work/load1.json,$work/load2.json,$work/sockmap1.json" \
  >agent/hot-text.ld
head -6 agent/hot-text.ld | tail -1
grep '/\* group' agent/hot-text.ld
