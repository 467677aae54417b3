#!/usr/bin/env python3
"""The agent's executable is laid out for a small resident set.

  executable_test.py PATH_TO_SLUICE_AGENT PATH_TO_HOT_TEXT_LD

1. Its shared libraries are exactly the expected set. Each mapped library
   costs resident pages on every node even when barely used (libm, mapped for
   one std::exp2, was 0.3 MiB of an idle agent), so a new one is a decision:
   add it here, with its cost in docs/performance.md.
2. The functions agent/hot-text.ld names are placed first, in the section it
   makes (.text.hot_agent), and the list is not stale: most of the functions
   it names still exist. A stale list costs memory, not correctness; when
   this fails, regenerate it (tools/agent-layout.sh, docs/performance.md).
"""
import re
import subprocess
import sys

EXPECTED = sorted("""ld-linux-x86-64.so.2 libbpf.so.1 libc.so.6 libcrypto.so.3
libhttp_parser.so.2.9 libnghttp2.so.14 libssl.so.3 liburing.so.2""".split())
MIN_PRESENT = 0.6  # of the listed functions that still exist in the agent


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main(agent, script):
    failures = []
    needed = sorted(re.findall(r"\(NEEDED\).*\[(.*)\]", run("readelf", "-dW", agent)))
    if needed != EXPECTED:
        failures.append(f"{agent} needs {' '.join(needed)}\n  expected {' '.join(EXPECTED)}\n"
                        "  (a library added or dropped: see this test's docstring)")

    hot = None
    for line in run("readelf", "-SW", agent).splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+\.text\.hot_agent\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m:
            hot = (int(m.group(1), 16), int(m.group(1), 16) + int(m.group(2), 16))
    # A function's section is .text.NAME (.text.startup.NAME for static
    # initialisers); .text.unlikely.NAME holds its cold part, NAME.cold.
    listed = [name + ".cold" if kind == "unlikely." else name for kind, name in re.findall(
        r"^\s+\*\(\.text\.(unlikely\.|startup\.|hot\.)?(\S+?)\)\s*$", open(script).read(), re.M)]
    if hot is None:
        failures.append(f"{agent} has no .text.hot_agent section: {script} was not linked in")
    elif len(listed) < 100:
        failures.append(f"{script} names {len(listed)} functions: regenerate it (tools/agent-layout.sh)")
    else:
        where = {}
        for line in run("nm", "--defined-only", agent).splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwW":
                where.setdefault(parts[2], int(parts[0], 16))
        present = [name for name in listed if name in where]
        outside = [name for name in present if not hot[0] <= where[name] < hot[1]]
        share = len(present) / len(listed)
        print(f"{len(present)} of the {len(listed)} functions {script} names exist "
              f"({share:.0%}); {len(present) - len(outside)} of them in .text.hot_agent "
              f"({(hot[1] - hot[0]) / 1024:.0f} KiB)")
        if share < MIN_PRESENT:
            failures.append(f"only {share:.0%} of the functions {script} names still exist in the agent: "
                            "the layout is stale, regenerate it (tools/agent-layout.sh)")
        if outside:
            failures.append(f"{len(outside)} functions {script} names lie outside .text.hot_agent, "
                            f"e.g. {outside[0]}")
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    if not failures:
        print(f"ok: {agent}: libraries {' '.join(needed)}; hot text laid out")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
