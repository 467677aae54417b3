#!/usr/bin/python3
"""Soak: 10,000 concurrent meshed connections across two lab nodes with steady churn.

Two client pods on each node hold SOAK_CONNECTIONS/4 long-lived connections each to
an echo server on the other node (every connection crosses the nodes over HBONE:
each agent carries half the connections outbound and half inbound), exchanging a
checked line every 5-15 s, while each client pod also opens SOAK_CHURN new
connections a second. Every minute it prints, per node: the agent's RSS and open
descriptors (/proc), its open app connections, pooled tunnels and BPF map entries
(/metrics), and the machine's load average. At the end it fails unless no connection
failed, no bound of the node refused one (the limit counters of docs/architecture.md are
0 in /metrics) and, after the warm-up,
the agents' RSS and descriptors stayed flat: growth (least-squares slope over the
samples after warm-up, taken every 10 s) at most SOAK_MAX_GROWTH (default 1%) per
hour extrapolated. In a sanitizer build (SLUICE_SANITIZED=1, set for `make asan`'s run)
RSS is printed but not bounded: LeakSanitizer checks for leaks as the agents exit.

  sudo tests/e2e/soak.py                       # `make soak`: SOAK_SECONDS (default 3600)
  python3 -m unittest soak.SoakTest            # the 2-minute version in `make test`

Environment: SOAK_SECONDS, SOAK_CONNECTIONS (10000), SOAK_CHURN (10), SOAK_WARMUP
(seconds; default a quarter of the run, 30 s to 10 min), SOAK_MAX_GROWTH (percent
per hour, 1), SLUICE_BUILD_DIR, SLUICE_LAB_PREFIX (the lab instance, tools/lab --help: a
soak in its own instance runs beside other labs).
"""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labkit import LAB_DIR, REPO, Lab, LabTest, metric_sum, parse_metrics, require_root, wait_for  # noqa: E402

SOAKAPP = os.path.join(REPO, "tests", "e2e", "apps", "soakapp.py")
TCPAPP = os.path.join(REPO, "tests", "e2e", "apps", "tcpapp.py")
PORT = 7100
NODES = ("node1", "node2")
# Each server pod receives half the connections: above the default per-pod limit (4096).
AGENT_ARGS = "--max-connections-per-pod 20000"
# The node's bounds (docs/architecture.md, Limits): none may refuse a connection here.
LIMIT_COUNTERS = ("sluice_proxy_limit_rejected_total", "sluice_hbone_pending_evicted_total",
                  "sluice_hbone_outbound_handshake_refused_total", "sluice_hbone_peer_tunnel_refused_total")


def env_number(name, default):
    return float(os.environ.get(name, default))


def agent_pid(node):
    with open(os.path.join(LAB_DIR, node, "agent.pid")) as f:
        return int(f.read().split()[0])


def proc_figures(pid):
    """(RSS bytes, open descriptors) of a process, from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def growth_per_hour(samples):
    """Least-squares slope of [(t, value)], as a fraction of the mean value per hour."""
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0 or mv == 0:
        return 0.0
    slope = sum((t - mt) * (v - mv) for t, v in samples) / var
    return slope * 3600 / mv


class Soak:
    def __init__(self, lab, seconds, log=print, per_hour=True, warmup=None, max_growth=None,
                 max_rss_growth_mib=None):
        self.lab = lab
        # A sanitizer build (make asan; tests/e2e/CMakeLists.txt sets SLUICE_SANITIZED):
        # ASan's allocator holds freed memory in quarantine and maps shadow memory as
        # the heap moves, so RSS says nothing of a leak there; LeakSanitizer reports
        # leaks when the agents exit instead. Descriptors stay bounded.
        self.bound_rss = os.environ.get("SLUICE_SANITIZED") != "1"
        # make soak: growth per hour extrapolated. The 2-minute test: growth within
        # its window (a minute and a half cannot resolve 1%/h from sampling noise).
        self.per_hour = per_hour
        self.seconds = seconds
        self.log = log
        self.connections = int(env_number("SOAK_CONNECTIONS", 10000))
        self.churn = env_number("SOAK_CHURN", 10)
        self.warmup = warmup or env_number("SOAK_WARMUP", min(600, max(30, seconds / 4)))
        self.max_growth = (max_growth or env_number("SOAK_MAX_GROWTH", 1)) / 100
        # The 2-minute test: the RSS bound in MiB within the window instead of a share
        # of the RSS (which depends on how little memory the idle connections hold).
        self.max_rss_growth = max_rss_growth_mib * 2**20 if max_rss_growth_mib else None
        self.samples = {n: [] for n in NODES}  # (t since start, rss, fds)

    def setup(self):
        """Two echo servers and four client pods, all enrolled with their certificates."""
        lab = self.lab
        lab.lab("ns", "label", "soak", "sluice.dev/mesh=enabled")
        self.servers = {"node1": lab.pod("soak", "echo1", node="node1", sa="echo"),
                        "node2": lab.pod("soak", "echo2", node="node2", sa="echo")}
        self.clients = []  # (pod, node, server IP on the other node)
        for i, node in enumerate(("node1", "node1", "node2", "node2")):
            lab.pod("soak", f"load{i + 1}", node=node, sa="load")
            other = "node2" if node == "node1" else "node1"
            self.clients.append((f"soak/load{i + 1}", node, self.servers[other]))
        for node in NODES:
            for pod in [f"soak/echo{node[-1]}"] + [p for p, n, _ in self.clients if n == node]:
                wait_for(f"{pod} enrolled", lambda node=node, pod=pod: lab.enrolled(node, pod), timeout=30)
            for sa in ("echo", "load"):
                uri = f"spiffe://cluster.local/ns/soak/sa/{sa}"
                wait_for(f"certificate of {sa} on {node}",
                         lambda node=node, uri=uri: lab.cert(node, uri)["state"] == "valid", timeout=30)
        for node in NODES:
            lab.spawn(f"soak/echo{node[-1]}", sys.executable, TCPAPP, "echo", str(PORT))

    def figures(self, node):
        rss, fds = proc_figures(agent_pid(node))
        _, body = self.lab.scrape(node)
        m = parse_metrics(body)
        maps = {labels["map"]: int(v) for n, labels, v in m if n == "sluice_bpf_map_entries"}
        return {"rss": rss, "fds": fds, "active": int(metric_sum(m, "sluice_proxy_active")),
                "tunnels": int(metric_sum(m, "sluice_hbone_tunnels_active")), "maps": maps}

    def print_minute(self, elapsed):
        # The machine's load (1/5/15 min): the figures depend on what else runs beside the soak.
        self.log(f"[{elapsed:6.0f} s] load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        for node in NODES:
            f = self.figures(node)
            maps = " ".join(f"{k}={v}" for k, v in sorted(f["maps"].items()))
            self.log(f"[{elapsed:6.0f} s] {node}: rss {f['rss'] / 2**20:.1f} MiB, fds {f['fds']}, "
                     f"connections {f['active']}, tunnels {f['tunnels']}, maps: {maps}")

    def run(self):
        """Runs the load; returns (client summaries, verdict lines, ok)."""
        per_client = self.connections // len(self.clients)
        procs, end = [], None
        for pod, node, server in self.clients:
            procs.append(self.lab.spawn(pod, sys.executable, SOAKAPP, server, str(PORT), str(per_client),
                                        str(self.seconds), str(self.churn)))
            # Sampling stops a little before the first client's load does.
            end = end or time.monotonic() + self.seconds - 5
        start = time.monotonic()
        duration = end - start
        self.log(f"soak: {per_client * len(procs)} connections open, {self.churn * len(procs):g} new/s, "
                 f"{self.seconds:g} s, warm-up {self.warmup:g} s")
        self.print_minute(0)
        next_minute = 60
        while time.monotonic() - start < duration:
            time.sleep(min(10, max(0, duration - (time.monotonic() - start))))
            t = time.monotonic() - start
            for node in NODES:
                rss, fds = proc_figures(agent_pid(node))
                self.samples[node].append((t, rss, fds))
            if t >= next_minute:
                self.print_minute(t)
                next_minute += 60
        summaries = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            last = [line for line in out.splitlines() if line.startswith("{")]
            summaries.append(json.loads(last[-1]) if last else {"failures": 1, "errors": [out[-500:]]})
        self.refusals = {}
        for node in NODES:
            m = parse_metrics(self.lab.scrape(node)[1])
            for name in LIMIT_COUNTERS:
                present = [v for n, _, v in m if n == name]
                self.refusals[(node, name)] = int(present[0]) if present else None
        return summaries, *self.verdict(summaries, per_client)

    def verdict(self, summaries, per_client):
        lines, ok = [], True
        failures = sum(s.get("failures", 0) for s in summaries)
        opened = sum(s.get("opened", 0) for s in summaries)
        churned = sum(s.get("churn_ok", 0) for s in summaries)
        exchanges = sum(s.get("exchanges", 0) for s in summaries)
        lines.append(f"connections: {opened} long-lived opened ({per_client * len(summaries)} wanted), "
                     f"{exchanges} exchanges on them, {churned} churn connections ok, {failures} failed")
        for s in summaries:
            for e in s.get("errors", []):
                lines.append(f"  failure: {e}")
        if failures or opened != per_client * len(summaries):
            ok = False
        for node in NODES:
            counts = {name: self.refusals[(node, name)] for name in LIMIT_COUNTERS}
            lines.append(f"{node}: refused at a bound: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            if any(v != 0 for v in counts.values()):  # absent (None) fails too
                ok = False
        for node in NODES:
            after = [s for s in self.samples[node] if s[0] >= self.warmup]
            if len(after) < 3:
                lines.append(f"{node}: too few samples after the warm-up")
                ok = False
                continue
            first, last = after[0], after[-1]
            scale = 1 if self.per_hour else (last[0] - first[0]) / 3600
            unit = "%/h" if self.per_hour else f"% in {last[0] - first[0]:.0f} s"
            rss_g = growth_per_hour([(t, r) for t, r, _ in after]) * scale
            fds_g = growth_per_hour([(t, f) for t, _, f in after]) * scale
            rss_text = f"{rss_g * 100:+.2f}{unit}"
            bound = f"{self.max_growth * 100:g}{unit}"
            if self.max_rss_growth:
                rss_mean = sum(r for _, r, _ in after) / len(after)
                rss_bytes = rss_g * rss_mean
                rss_good = rss_bytes <= self.max_rss_growth
                rss_text = f"{rss_bytes / 2**20:+.2f} MiB in {last[0] - first[0]:.0f} s"
                bound = f"rss {self.max_rss_growth / 2**20:g} MiB, fds {bound}"
            else:
                rss_good = rss_g <= self.max_growth
            if not self.bound_rss:
                rss_good = True
                bound = f"fds {self.max_growth * 100:g}{unit}; rss not bounded in a sanitizer build"
            good = rss_good and fds_g <= self.max_growth
            ok = ok and good
            lines.append(f"{node}: after warm-up rss {first[1] / 2**20:.1f} -> {last[1] / 2**20:.1f} MiB "
                         f"({rss_text}), fds {first[2]} -> {last[2]} ({fds_g * 100:+.2f}{unit}); "
                         f"{'flat' if good else 'GROWING'} (bound {bound})")
        return lines, ok


def soak(lab, seconds, log=print, **kw):
    os.environ["SLUICE_AGENT_ARGS"] = (os.environ.get("SLUICE_AGENT_ARGS", "") + " " + AGENT_ARGS).strip()
    lab.up()
    s = Soak(lab, seconds, log, **kw)
    s.setup()
    _, lines, ok = s.run()
    for line in lines:
        log(line)
    return lines, ok


class SoakTest(LabTest):
    """The 2-minute version: the same load; within the minute after the warm-up (not per
    hour: too short to resolve that) RSS may grow at most 4 MiB and descriptors 3%."""
    NODES = 2

    @classmethod
    def setUpClass(cls):
        require_root()
        cls.lab = Lab(cls.NODES)  # soak() brings it up (with its agent flags)

    def test_soak(self):
        # The agents' RSS settles within about five minutes of the load (10-minute
        # runs: flat from then on, 63-64 MiB with 10,000 connections); in the second
        # minute it still grows up to 2.5 MiB while the heap settles (idle
        # connections free their relay buffers and take new ones as they wake).
        # A leak of 2 KiB per
        # churned connection (2,400 in that minute) exceeds 4 MiB, and any
        # descriptor leak exceeds 3%.
        lines, ok = soak(self.lab, 120, log=lambda s: print(s, flush=True), per_hour=False, warmup=60,
                         max_growth=3, max_rss_growth_mib=4)
        self.assertTrue(ok, "\n".join(lines))


def main():
    if len(sys.argv) > 1:
        print(__doc__)
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    require_root()
    lab = Lab(2)
    try:
        _, ok = soak(lab, env_number("SOAK_SECONDS", 3600), log=lambda s: print(s, flush=True))
    finally:
        lab.down()
    print("soak: PASS" if ok else "soak: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
