"""Helpers for end-to-end tests on the lab (tools/lab). Stdlib only.

Every test class brings a lab up in setUpClass and tears it down in
tearDownClass (also when a test fails); background processes started with
spawn() are killed first. Tests poll with deadlines; they never sleep to wait.
"""
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import time
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("SLUICE_BUILD_DIR", os.path.join(REPO, "build"))
LAB = os.path.join(REPO, "tools", "lab")
APP = os.path.join(REPO, "tests", "e2e", "apps", "tcpapp.py")
SLUICECTL = os.path.join(BUILD, "tools", "sluicectl")
CNI = os.path.join(BUILD, "cni-plugin", "sluice-cni")


def lab_env(prefix=None):
    """The environment tools/lab runs with: this process's, or instance `prefix`'s."""
    env = dict(os.environ, SLUICE_BUILD_DIR=BUILD)
    if prefix:
        env["SLUICE_LAB_PREFIX"] = prefix
        env.pop("SLUICE_LAB_DIR", None)  # the instance's own (derived from the prefix)
    return env


def lab_names(prefix=None):
    """tools/lab as a module, for instance `prefix` (default: this process's,
    SLUICE_LAB_PREFIX): the instance's names come from the one place that makes them."""
    saved, env = dict(os.environ), lab_env(prefix)
    try:
        os.environ.clear()
        os.environ.update(env)
        loader = importlib.machinery.SourceFileLoader("sluice_lab", LAB)
        mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("sluice_lab", loader))
        loader.exec_module(mod)
        return mod
    finally:
        os.environ.clear()
        os.environ.update(saved)


_lab = lab_names()
# This lab instance (SLUICE_LAB_PREFIX; tools/lab --help): its lab directory, BPF pin
# root and hub namespace. Every leak check looks at these only, so a second lab
# beside this one (another prefix) neither fails it nor is torn down by it.
PREFIX = _lab.PREFIX
LAB_DIR = _lab.LAB
PIN_ROOT = _lab.PIN_ROOT
HUB_NETNS = _lab.HUB
BRIDGE = _lab.BRIDGE


def require_root():
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root") if os.environ.get("CI") != "true" else AssertionError(
            "end-to-end tests must run as root under CI")


def run(args, check=True, timeout=120, input=None, env=None):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def stop_process(p, timeout=15):
    """Stops a Popen politely: SIGTERM, up to `timeout` seconds to exit, then SIGKILL.
    Returns its exit status; one that already exited is only reaped."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
    return p.wait()


def wait_for(what, fn, timeout=15.0, interval=0.05):
    """Polls fn() until it returns a truthy value; fails with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def parse_metrics(text):
    """Prometheus text exposition -> [(name, {label: value}, float value)]."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, {}
        if "{" in head:
            name, _, rest = head.partition("{")
            i = 0
            while rest[i] != "}":
                eq = rest.index('="', i)
                key, i, val = rest[i:eq], eq + 2, ""
                while rest[i] != '"':
                    if rest[i] == "\\":
                        i += 1
                        val += "\n" if rest[i] == "n" else rest[i]
                    else:
                        val += rest[i]
                    i += 1
                labels[key] = val
                i += 1
                if rest[i] == ",":
                    i += 1
        out.append((name, labels, float(value)))
    return out


# promtool's lint advice that Istio's fixed names cannot follow: Istio (and so every
# dashboard) measures request duration in milliseconds.
PROMTOOL_ACCEPTED_LINT = ('istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"',)


def promtool_check_metrics(promtool, text):
    """`promtool check metrics` on a scrape: [] when it parses and lints clean, except for
    PROMTOOL_ACCEPTED_LINT (exit status 3 is lint only; anything else is a failure)."""
    p = run([promtool, "check", "metrics"], check=False, input=text)
    if p.returncode == 0:
        return []
    problems = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    if p.returncode != 3:
        return problems or [f"promtool exited {p.returncode}"]
    return [line for line in problems if line.strip() not in PROMTOOL_ACCEPTED_LINT]


def metric_sum(samples, name, **want):
    """Sum of the samples of `name` whose labels include `want`."""
    return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == w for k, w in want.items()))


def tcp_payloads(pcap_path):
    """(src, sport, dst, dport, payload) for every TCP segment with data (pcap, Ethernet)."""
    out = []
    with open(pcap_path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return out
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 14 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6:
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:total]
        sport, dport = struct.unpack("!HH", tcp[:4])
        doff = (tcp[12] >> 4) * 4
        payload = tcp[doff:]
        if payload:
            out.append((src, sport, dst, dport, payload))
    return out


@contextlib.contextmanager
def capture_hub(pcap_path):
    """tcpdump of every TCP segment on the lab's bridge (the link between nodes) while the block runs."""
    # --immediate-mode: packets reach tcpdump at once, not when a capture block
    # fills or times out (up to 1 s), so a short exchange is never lost at SIGINT.
    dump = subprocess.Popen(["ip", "netns", "exec", HUB_NETNS, "tcpdump", "-i", BRIDGE, "--immediate-mode",
                             "-U", "-n", "-w", pcap_path, "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = dump.stderr.readline()
        if "listening" not in line:
            raise AssertionError(f"tcpdump did not start: {line}")
        yield
        time.sleep(0.5)  # let tcpdump write the last segments (-U: per packet)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
        dump.stderr.close()



def read_line(p, timeout):
    """The next line of a started process's stdout within `timeout` s ('' if none came)."""
    import select
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    return p.stdout.readline() if ready else ""


def start_app(lab, pod, *args):
    """tcpapp.py `args` in `pod` through `lab exec`, stdin/stdout piped, once it printed 'ready'
    (its first line); stopped with the lab (lab.procs) if the test does not stop it first."""
    p = subprocess.Popen([sys.executable, LAB, "exec", pod, "--", sys.executable, APP, *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=lab.env)
    lab.procs.append(p)
    line = p.stdout.readline()
    if "ready" not in line:
        p.kill()
        raise AssertionError(f"tcpapp {' '.join(args)} did not start in {pod}: {line}{p.stdout.read()}")
    return p


class LoadLoop:
    """Steady new-connection load in the background: `tcpapp.py loop` in a pod (CONC threads,
    each opening new echo connections back to back) until stop(). stop() returns the
    per-connection records [(start, end, ok, error)] (unix times; ok 1 or 0), also kept in self.conns."""

    def __init__(self, lab, pod, host, port, conc=2, text="LOAD", pause_ms=5):
        self.lab = lab
        self.p = start_app(lab, pod, "loop", host, str(port), str(conc), text, str(pause_ms))
        self.conns, self.failures = [], []

    def stop(self):
        self.p.stdin.close()
        out = self.p.stdout.read()
        self.p.wait(timeout=30)
        self.p.stdout.close()
        result = json.loads(out.strip().splitlines()[-1])
        self.conns = [tuple(c) for c in result["conns"]]
        self.failures = result["failures"]
        return self.conns

    def window(self, t0, t1, ended_by=None):
        """(ok, failed) counts of the connections started in [t0, t1) (and ended before
        `ended_by`, when given)."""
        inside = [c for c in self.conns if t0 <= c[0] < t1 and (ended_by is None or c[1] < ended_by)]
        return sum(c[2] for c in inside), sum(1 - c[2] for c in inside)

    def first_ok_after(self, t0, t1):
        """Start time of the first connection in [t0, t1) that succeeded with no failure started
        after it (the load is steady again), else None; connections still going at t1 are left out."""
        inside = [c for c in self.conns if t0 <= c[0] and c[1] < t1]
        last_fail = max((c[0] for c in inside if not c[2]), default=None)
        oks = [c[0] for c in inside if c[2] and (last_fail is None or c[0] > last_fail)]
        return min(oks) if oks else None


def pid_of(what):
    """The pid the lab recorded for the control plane ("controlplane") or a node's agent ("node1")."""
    path = os.path.join(LAB_DIR, "controlplane.pid" if what == "controlplane" else os.path.join(what, "agent.pid"))
    with open(path) as f:
        return int(f.read().strip())


class Lab:
    """A lab instance: this process's (SLUICE_LAB_PREFIX), or `prefix`'s (a second lab
    beside it)."""

    def __init__(self, nodes=1, ip_family="ipv4", prefix=None):
        self.nodes = nodes
        self.ip_family = ip_family
        self.procs = []
        self.env = lab_env(prefix) if prefix else None  # None: this process's environment
        names = lab_names(prefix) if prefix else _lab
        self.prefix, self.dir, self.pin_root, self.hub = names.PREFIX, names.LAB, names.PIN_ROOT, names.HUB

    def lab(self, *args, check=True, timeout=120):
        return run([sys.executable, LAB, *args], check=check, timeout=timeout, env=self.env)

    def up(self):
        self.lab("down", check=False)
        family = ["--ip-family", self.ip_family] if self.ip_family != "ipv4" else []
        self.lab("up", "--nodes", str(self.nodes), *family, timeout=180)

    def down(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if f:
                    f.close()
        self.procs = []
        return self.lab("down", check=False)

    def pod(self, ns, name, node="node1", sa="default", labels=(), owner=None, ip=None,
            annotations=()):
        args = ["pod", "add", ns, name, "--node", node, "--sa", sa]
        if ip:
            args += ["--ip", ip]
        for l in labels:
            args += ["--label", l]
        for a in annotations:
            args += ["--annotation", a]
        if owner:
            args += ["--owner", owner]
        self.lab(*args)
        return self.ip(ns, name)

    def ip(self, ns, name, family=None):
        """The pod's first address, or its address of family 4 or 6."""
        extra = ["--family", str(family)] if family else []
        return self.lab("pod", "ip", ns, name, *extra).stdout.strip()

    def exec(self, pod, *cmd, check=True, timeout=120):
        return self.lab("exec", pod, "--", *cmd, check=check, timeout=timeout)

    def spawn(self, pod, *cmd):
        """Starts a long-running process in a pod; waits for it to print 'ready'."""
        p = subprocess.Popen([sys.executable, LAB, "exec", pod, "--", *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=self.env)
        self.procs.append(p)
        line = p.stdout.readline()
        if "ready" not in line:
            raise AssertionError(f"{cmd} did not start in {pod}: {line}{p.stdout.read() if p.poll() is not None else ''}")
        return p

    def server(self, pod, mode, port):
        return self.spawn(pod, sys.executable, APP, mode, str(port))

    def client(self, pod, *args, check=True, timeout=300):
        return self.exec(pod, sys.executable, APP, *args, check=check, timeout=timeout)

    def ctl(self, node, *args):
        pin = os.path.join(self.pin_root, node)
        p = self.lab("node", "exec", node, "--", SLUICECTL, "--bpf-pin-dir", pin, "-o", "json", *args)
        return json.loads(p.stdout)

    def config_dump(self, node):
        """The node agent's admin /config_dump (JSON)."""
        return json.loads(self.lab("node", "exec", node, "--", "curl", "-sf",
                                   "http://127.0.0.1:15000/config_dump").stdout)

    def cert(self, node, uri):
        """The node's certificate entry (`sluicectl certs`) for identity `uri`, else {"state": "absent"}."""
        for c in self.ctl(node, "certs")["certificates"]:
            if c["identity"] == uri:
                return c
        return {"state": "absent"}

    def pods_of(self, node):
        return {f"{p['namespace']}/{p['name']}": p for p in self.ctl(node, "workloads")["pods"]}

    def connections(self, node):
        return self.ctl(node, "connections")["connections"]

    def ctl_run(self, node, *args):
        """sluicectl `args` on `node` (table output): the finished process, whatever its exit."""
        pin = os.path.join(self.pin_root, node)
        return self.lab("node", "exec", node, "--", SLUICECTL, "--bpf-pin-dir", pin, *args, check=False)

    def scrape(self, node, path="/metrics"):
        """The node agent's metrics endpoint, fetched over the lab network from the hub (as a
        Prometheus would): (response headers, body)."""
        url = f"http://10.99.0.{10 + int(node[4:])}:15020{path}"
        p = run(["ip", "netns", "exec", self.hub, "curl", "-sf", "-m", "10", "-D", "-", url])
        head, _, body = p.stdout.partition("\n\n")  # text mode: CRLF is already "\n"
        return head, body

    def enrolled(self, node, pod):
        p = self.pods_of(node).get(pod)
        return bool(p and p["enrolled"])

    def meshed_pair(self, ns="shop"):
        """ns/client (service account web) on node1 and ns/server (api) on node2, in an
        enrolled namespace, both enrolled and holding their certificates; the server's IP."""
        self.lab("ns", "label", ns, "sluice.dev/mesh=enabled")
        self.pod(ns, "client", node="node1", sa="web")
        server_ip = self.pod(ns, "server", node="node2", sa="api")
        for node, pod in (("node1", f"{ns}/client"), ("node2", f"{ns}/server")):
            wait_for(f"{pod} enrolled", lambda node=node, pod=pod: self.enrolled(node, pod))
        for node, sa in (("node1", "web"), ("node2", "api")):
            uri = f"spiffe://cluster.local/ns/{ns}/sa/{sa}"
            wait_for(f"certificate of {sa}", lambda node=node, uri=uri: self.cert(node, uri)["state"] == "valid")
        return server_ip


class LabTest(unittest.TestCase):
    NODES = 1
    IP_FAMILY = "ipv4"  # the lab's pod address families: ipv4, ipv6 or dual (lab up --ip-family)
    AGENT_ARGS = ""  # extra sluice-agent flags for this class's lab (added to $SLUICE_AGENT_ARGS)
    lab = None

    @classmethod
    def setUpClass(cls):
        require_root()
        cls.saved_agent_args = os.environ.get("SLUICE_AGENT_ARGS")
        if cls.AGENT_ARGS:
            os.environ["SLUICE_AGENT_ARGS"] = f"{cls.saved_agent_args or ''} {cls.AGENT_ARGS}".strip()
        cls.lab = Lab(cls.NODES, cls.IP_FAMILY)
        try:
            cls.lab.up()
            cls.setUpLab()
        except BaseException:
            cls.lab.down()
            cls.restore_agent_args()
            raise

    @classmethod
    def restore_agent_args(cls):
        if "saved_agent_args" not in cls.__dict__:
            return  # a class with its own setUpClass (soak) manages the flags itself
        if cls.saved_agent_args is None:
            os.environ.pop("SLUICE_AGENT_ARGS", None)
        else:
            os.environ["SLUICE_AGENT_ARGS"] = cls.saved_agent_args

    @classmethod
    def setUpLab(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        if cls.lab:
            cls.lab.down()
        cls.restore_agent_args()


def sockmap_counters(lab, node):
    """`node`'s agent's /config_dump bpf.sockmap counters: the sockhash's stats (added_*,
    bytes_redirected, msg_tcp, ...) plus "moved", the bytes that went through the sockhash
    rather than loopback TCP: redirected by sk_msg to the peer socket, or spliced app to app."""
    sockmap = lab.config_dump(node)["bpf"]["sockmap"]
    counters = dict(sockmap["stats"])
    counters["moved"] = counters["bytes_redirected"] + sockmap["splice"]["stats"]["bytes"]
    return counters


# The sockhash's four hop ends on the node of the client pod (the app's socket to
# 127.0.0.1:15001 and the proxy's accepted one) and on the node of the server pod (the
# proxy's delivering socket and the app's accepted one).
CLIENT_HOP = ("added_outbound_app", "added_outbound_proxy")
SERVER_HOP = ("added_inbound_proxy", "added_inbound_app")


class SockmapOn:
    """Mixin for a LabTest suite run again with --sockmap=on (issue 11): list it first,
    `class XSockmapTest(SockmapOn, XTest)`. Every agent of the lab runs with the flag (tools/lab
    adds $SLUICE_AGENT_ARGS to each agent it starts, restarts or upgrades, on every node), so
    every scenario of the suite runs again with its pod-local hops in the sockhash."""
    AGENT_ARGS = "--sockmap=on"

    def assert_sockmap_on(self):
        """Every node's agent runs with the sockhash (no fallback to loopback TCP)."""
        for i in range(1, self.NODES + 1):
            sockmap = self.lab.config_dump(f"node{i}")["bpf"]["sockmap"]
            self.assertEqual(sockmap["mode"], "on", (f"node{i}", sockmap))
            self.assertFalse(sockmap["fallback"], (f"node{i}", sockmap))

    @contextlib.contextmanager
    def assert_sockmap_moves(self, moved, grew):
        """Checks that what the block does moved at least moved[node] bytes through node's
        sockhash and that each counter named in grew[node] (e.g. CLIENT_HOP) grew there. The
        nodes are those named when the block starts; the figures are read when it ends (the
        block may fill in what it learned, e.g. how many connections a node served)."""
        nodes = sorted(set(moved) | set(grew))
        before = {node: sockmap_counters(self.lab, node) for node in nodes}
        yield
        for node in nodes:
            after = sockmap_counters(self.lab, node)
            self.assertGreaterEqual(after["moved"] - before[node]["moved"], moved.get(node, 0),
                                    (node, "bytes moved", before[node], after))
            for counter in grew.get(node, ()):
                self.assertGreater(after[counter], before[node][counter], (node, counter, before[node], after))
