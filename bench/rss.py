#!/usr/bin/python3
"""Where a process's resident memory is: /proc/PID/smaps grouped by kind.

  bench/rss.py PID [--json FILE]      breakdown table (KiB), optionally saved
  bench/rss.py --diff A.json B.json [--per N]
                                      B - A per row (and per N, e.g. pods)

Rows: the executable and each shared library (file-backed pages = code and
read-only data, shared with other processes mapping the same file;
anonymous = their relocated / written data and .bss), the main malloc heap
([heap]), the malloc arenas of other threads (glibc maps them 64 MiB-aligned,
the unused tail PROT_NONE), thread stacks (a mapping right after a one-page
PROT_NONE guard; named by the thread whose stack pointer is in it), the main
stack, io_uring rings, BPF map mmaps, other anonymous mmaps (large malloc
chunks, libraries' own mmaps) and the kernel's [vdso]/[vvar].
"""
import json
import os
import sys

ARENA = 64 << 20  # glibc HEAP_MAX_SIZE on 64-bit


def read_smaps(pid):
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                cur = {"lo": lo, "hi": hi, "perms": head[1], "inode": int(head[4]),
                       "name": head[5].strip() if len(head) > 5 else ""}
                maps.append(cur)
            elif head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
                cur[head[0][:-1]] = int(head[1])
    return maps


def thread_stacks(pid):
    """Stack pointer -> thread name, for threads blocked in a syscall."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if len(fields) >= 9:  # "nr a1..a6 sp pc"; "running" otherwise
            out[int(fields[-2], 16)] = name
    return out


def classify(pid):
    maps = read_smaps(pid)
    sps = thread_stacks(pid)
    exe = os.path.realpath(f"/proc/{pid}/exe")
    rows = {}

    def add(key, m, file_backed):
        r = rows.setdefault(key, {"file": 0, "anon": 0, "count": 0})
        rss, anon = m.get("Rss", 0), m.get("Anonymous", 0)
        r["anon"] += anon
        r["file"] += rss - anon if file_backed else 0
        if not file_backed:
            r["anon"] += rss - anon  # e.g. shared anonymous pages
        r["count"] += 1

    for i, m in enumerate(maps):
        name, prev = m["name"], maps[i - 1] if i else None
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        if m["inode"] and name.startswith("/"):
            base = os.path.basename(name)
            key = "executable" if name == exe else base.split(".so")[0] + ".so" if ".so" in base else base
            add(key, m, True)
        elif name == "[heap]":
            add("heap (main arena)", m, False)
        elif name == "[stack]":
            add("stack (main thread)", m, False)
        elif name in ("[vdso]", "[vvar]", "[vsyscall]"):
            add("kernel [vdso] [vvar]", m, False)
        elif "io_uring" in name:
            add("io_uring rings", m, False)
        elif "bpf" in name:
            add("BPF map mmaps", m, False)
        elif name:
            add(f"other {name}", m, False)
        elif m["perms"].startswith("---"):
            continue  # guard pages, arena tails: never resident
        elif (m["lo"] % ARENA == 0 and nxt and nxt["lo"] == m["hi"] and
              nxt["perms"].startswith("---") and nxt["hi"] % ARENA == 0):
            add("malloc arenas (other threads)", m, False)
        elif (prev and prev["hi"] == m["lo"] and prev["perms"].startswith("---") and
              prev["hi"] - prev["lo"] <= 64 << 10):
            who = sorted({n for sp, n in sps.items() if m["lo"] <= sp < m["hi"]})
            add("thread stacks", m, False)
            rows.setdefault("_stacks", []).append(
                {"thread": ",".join(who) or "?", "kib": m.get("Rss", 0),
                 "size_kib": (m["hi"] - m["lo"]) >> 10})
        else:
            add("other anonymous mmaps", m, False)
    with open(f"/proc/{pid}/smaps_rollup") as f:
        roll = {l.split(":")[0]: int(l.split()[1]) for l in f if l.split()[0].endswith(":")}
    return {"pid": pid, "rollup": roll, "rows": rows, "threads": len(os.listdir(f"/proc/{pid}/task"))}


def fmt(kib):
    return f"{kib / 1024:7.2f}"


def table(snap):
    rows = {k: v for k, v in snap["rows"].items() if not k.startswith("_")}
    roll = snap["rollup"]
    print(f"pid {snap['pid']}: Rss {roll['Rss'] / 1024:.2f} MiB, anonymous "
          f"{roll['Anonymous'] / 1024:.2f} MiB, file-backed {(roll['Rss'] - roll['Anonymous']) / 1024:.2f} MiB, "
          f"{snap['threads']} threads (smaps_rollup)")
    print(f"{'mapping':34s} {'file MiB':>9s} {'anon MiB':>9s} {'total':>9s}")
    for k, v in sorted(rows.items(), key=lambda kv: -(kv[1]["file"] + kv[1]["anon"])):
        if v["file"] + v["anon"] == 0:
            continue
        print(f"{k:34s} {fmt(v['file']):>9s} {fmt(v['anon']):>9s} {fmt(v['file'] + v['anon']):>9s}")
    for s in snap["rows"].get("_stacks", []):
        print(f"  stack {s['thread']:24s} {s['kib']:6d} KiB of {s['size_kib']} KiB")


def diff(a, b, per):
    ra, rb = a["rows"], b["rows"]
    print(f"{'mapping':34s} {'delta KiB':>10s}" + (f" {'per ' + str(per):>10s}" if per else ""))
    total = 0
    for k in sorted(set(ra) | set(rb)):
        if k.startswith("_"):
            continue
        va = ra.get(k, {"file": 0, "anon": 0})
        vb = rb.get(k, {"file": 0, "anon": 0})
        d = vb["file"] + vb["anon"] - va["file"] - va["anon"]
        total += d
        if d:
            print(f"{k:34s} {d:10d}" + (f" {d / per:10.1f}" if per else ""))
    d = b["rollup"]["Rss"] - a["rollup"]["Rss"]
    print(f"{'Rss (smaps_rollup)':34s} {d:10d}" + (f" {d / per:10.1f}" if per else ""))


def main(argv):
    if argv[:1] == ["--diff"]:
        per = int(argv[4]) if len(argv) > 4 and argv[3] == "--per" else 0
        with open(argv[1]) as fa, open(argv[2]) as fb:
            diff(json.load(fa), json.load(fb), per)
        return 0
    if not argv or not argv[0].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    snap = classify(int(argv[0]))
    if len(argv) > 2 and argv[1] == "--json":
        with open(argv[2], "w") as f:
            json.dump(snap, f)
    table(snap)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
