#!/usr/bin/python3
"""Soak load for tests/e2e/soak.py, run inside a lab pod (stdlib only). Talks to
`tcpapp.py echo PORT` (a line echo).

  soakapp.py HOST PORT N SECONDS RATE

Opens N long-lived connections (200 connects at a time) and prints
"ready opened=N failed=F" once all were tried. Then, for SECONDS: each long-lived
connection sends a checked line (~120 bytes) every 5-15 s, and RATE new
connections a second each do one checked round trip and close (churn). At the
end it closes everything and prints one JSON line:
  {"opened", "open_at_end", "exchanges", "churn_ok", "failures", "errors": [...]}
(failures: connects, resets, timeouts or wrong echoes, of either kind; errors:
the first 20 of them).
"""
import asyncio
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tcpapp import raise_nofile  # noqa: E402

TIMEOUT = 30
PAD = "x" * 100


class Stats:
    def __init__(self):
        self.exchanges = 0
        self.churn_ok = 0
        self.failures = 0
        self.errors = []

    def fail(self, what, e):
        self.failures += 1
        if len(self.errors) < 20:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {what}: {type(e).__name__} {e}")


async def round_trip(reader, writer, line):
    writer.write(line)
    await writer.drain()
    back = await asyncio.wait_for(reader.readline(), TIMEOUT)
    if back != line:
        raise ValueError(f"echo mismatch: sent {len(line)} bytes, got {back[:40]!r}")


async def long_lived(i, rw, deadline, stats):
    reader, writer = rw
    seq = 0
    try:
        while True:
            wait = min(random.uniform(5, 15), deadline - time.monotonic())
            if wait <= 0:
                break
            await asyncio.sleep(wait)
            if time.monotonic() >= deadline:
                break
            seq += 1
            await round_trip(reader, writer, f"L{i} {seq} {PAD}\n".encode())
            stats.exchanges += 1
        return True
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        stats.fail(f"long-lived {i} after {seq} exchanges", e)
        return False
    finally:
        writer.close()


async def churn_one(n, host, port, stats):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
        try:
            await round_trip(reader, writer, f"C{n} {PAD}\n".encode())
        finally:
            writer.close()
        stats.churn_ok += 1
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        stats.fail(f"churn {n}", e)


async def main(host, port, n, seconds, rate):
    stats = Stats()
    gate = asyncio.Semaphore(200)

    async def connect(i):
        async with gate:
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
            except (OSError, asyncio.TimeoutError) as e:
                stats.fail(f"connect {i}", e)
                return None

    conns = await asyncio.gather(*(connect(i) for i in range(n)))
    opened = [(i, rw) for i, rw in enumerate(conns) if rw]
    print(f"ready opened={len(opened)} failed={n - len(opened)}", flush=True)
    deadline = time.monotonic() + seconds
    long_tasks = [asyncio.ensure_future(long_lived(i, rw, deadline, stats)) for i, rw in opened]
    churn = []
    k = 0
    start = time.monotonic()
    while time.monotonic() < deadline:
        k += 1
        churn.append(asyncio.ensure_future(churn_one(k, host, port, stats)))
        churn = [t for t in churn if not t.done()]
        await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))
    await asyncio.gather(*churn)
    alive = await asyncio.gather(*long_tasks)
    print(json.dumps({"opened": len(opened), "open_at_end": sum(1 for a in alive if a),
                      "exchanges": stats.exchanges, "churn_ok": stats.churn_ok,
                      "failures": stats.failures, "errors": stats.errors}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    raise_nofile()
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]),
                     float(sys.argv[5])))
