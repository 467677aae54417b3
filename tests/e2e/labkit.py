"""Helpers for end-to-end tests on the lab (tools/lab). Stdlib only.

Every test class brings a lab up in setUpClass and tears it down in
tearDownClass (also when a test fails); background processes started with
spawn() are killed first. Tests poll with deadlines; they never sleep to wait.
"""
import json
import os
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


def require_root():
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root") if os.environ.get("CI") != "true" else AssertionError(
            "end-to-end tests must run as root under CI")


def run(args, check=True, timeout=120, input=None):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


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


class Lab:
    def __init__(self, nodes=1):
        self.nodes = nodes
        self.procs = []
        self.env = dict(os.environ, SLUICE_BUILD_DIR=BUILD)

    def lab(self, *args, check=True, timeout=120):
        return run([sys.executable, LAB, *args], check=check, timeout=timeout)

    def up(self):
        self.lab("down", check=False)
        self.lab("up", "--nodes", str(self.nodes), timeout=180)

    def down(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
        self.procs = []
        return self.lab("down", check=False)

    def pod(self, ns, name, node="node1", sa="default", labels=()):
        args = ["pod", "add", ns, name, "--node", node, "--sa", sa]
        for l in labels:
            args += ["--label", l]
        self.lab(*args)
        return self.ip(ns, name)

    def ip(self, ns, name):
        return self.lab("pod", "ip", ns, name).stdout.strip()

    def exec(self, pod, *cmd, check=True, timeout=120):
        return self.lab("exec", pod, "--", *cmd, check=check, timeout=timeout)

    def spawn(self, pod, *cmd):
        """Starts a long-running process in a pod; waits for it to print 'ready'."""
        p = subprocess.Popen([sys.executable, LAB, "exec", pod, "--", *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
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
        pin = f"/sys/fs/bpf/sluice-lab/{node}"
        p = self.lab("node", "exec", node, "--", SLUICECTL, "--bpf-pin-dir", pin, "-o", "json", *args)
        return json.loads(p.stdout)

    def pods_of(self, node):
        return {f"{p['namespace']}/{p['name']}": p for p in self.ctl(node, "workloads")["pods"]}

    def connections(self, node):
        return self.ctl(node, "connections")["connections"]

    def enrolled(self, node, pod):
        p = self.pods_of(node).get(pod)
        return bool(p and p["enrolled"])


class LabTest(unittest.TestCase):
    NODES = 1
    lab = None

    @classmethod
    def setUpClass(cls):
        require_root()
        cls.lab = Lab(cls.NODES)
        try:
            cls.lab.up()
            cls.setUpLab()
        except BaseException:
            cls.lab.down()
            raise

    @classmethod
    def setUpLab(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        if cls.lab:
            cls.lab.down()
