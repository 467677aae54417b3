"""End to end: faults under load (issue 13, "Faults"). Each test prints its figures.

AgentKillTest — `kill -9` of an agent under steady new-connection load, ten times
(node1 and node2 in turn), with two loads running: shop/client (node1) to shop/server
(node2, cross-node HBONE) and to shop/local (node1, same node). Counts the failed
connections of each kill; every connection started 2 s after the restarted agent is
/ready succeeds (from the load's own per-connection timestamps); a kill of node2 costs
the same-node load nothing; afterwards no pin, BPF map entry, pod listener or agent
process is left over.

ControlPlaneFaultTest — `kill -9` and restart of the control plane, and a control plane
stopped with SIGSTOP (a hang) then resumed, under cross-node load: zero failed
connections.

CaAwayAtRenewalTest — 60 s certificates; the control plane (the CA) is away when they
reach renewal: the old certificate keeps serving (same serial, connections succeed),
`sluicectl certs` says "retrying" with the error, `/ready` and the log say it; once the
CA is back the renewal lands.

PartitionTest — node2 cut off from the other nodes and the control plane for a few seconds
(`lab node link node2 down`, then up) under cross-node load: a held connection with a
round trip every 0.2 s comes through whole (TCP retransmits over the tunnel, as without
a mesh; the tunnel's keepalive gives up only after 60 s of silence), every new
connection started 2 s after the link is back succeeds, with mutual TLS, node2's own
same-node load loses nothing while it is cut off from the control plane, and a Service
with endpoints on node2 and node3 goes on answering from node3 (a few connections fail:
those whose client gives up before the balancer has retried them on node3).

IpReuseTest — a server pod is deleted while node1 holds a pooled HBONE tunnel to it; a
pod with another service account gets its IP: connections reach the new pod with its
own identity checked (records on both nodes name the new principal), never the old one.
"""
import json
import os
import signal
import subprocess
import sys
import time
import unittest

from labkit import APP, LAB, LAB_DIR, PIN_ROOT, LabTest, LoadLoop, pid_of, read_line, run, start_app, wait_for

MESH = "sluice.dev/mesh"
TD = "spiffe://cluster.local/ns/shop/sa"
RECOVERY = 2.0  # seconds after /ready by which new connections are captured again
KILLS = 10


def say(msg):
    print(f"  {msg}", file=sys.stderr, flush=True)


def wait_gone(pid, timeout=10):
    wait_for(f"pid {pid} to exit", lambda: not os.path.exists(f"/proc/{pid}"), timeout=timeout)


def records_since(lab, node, direction, dst, since):
    return [c for c in lab.connections(node)
            if c["direction"] == direction and c["destination"] == dst and c["start_unix_ms"] >= since * 1000]


def own_agent(argv):
    """An agent command line of this lab instance: its --bpf-pin-dir is under PIN_ROOT."""
    pin = argv[argv.index(b"--bpf-pin-dir") + 1].decode() if b"--bpf-pin-dir" in argv[:-1] else ""
    return os.path.dirname(pin) == PIN_ROOT


class AgentKillTest(LabTest):
    NODES = 2
    maxDiff = None  # a leak shows whole

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        cls.server_ip = lab.meshed_pair()
        cls.local_ip = lab.pod("shop", "local", node="node1", sa="db")
        wait_for("shop/local enrolled", lambda: lab.enrolled("node1", "shop/local"))
        wait_for("certificate of db", lambda: lab.cert("node1", f"{TD}/db")["state"] == "valid")
        lab.server("shop/server", "echo", 8082)
        lab.server("shop/local", "echo", 8083)
        lab.server("shop/server", "stream", 8084)
        lab.server("shop/local", "stream", 8085)
        cls.watch_remote = lab.server("shop/server", "watch", 8086)  # say how each connection ended
        cls.watch_local = lab.server("shop/local", "watch", 8087)

    def test_kill_9_cuts_a_transfer_with_a_reset_not_an_end(self):
        """An app receiving through a killed agent learns that its stream was cut (RST: the
        agent's sockets are born with linger 0), rather than reading an end of stream and
        taking what it got for all of it. Across nodes and on one node, for the download."""
        lab = self.lab
        for ip, port in ((self.server_ip, 8084), (self.local_ip, 8085)):
            with self.subTest(port=port):
                down = 20_000_000_000  # far more than moves before the kill
                p = subprocess.Popen([sys.executable, LAB, "exec", "shop/client", "--", sys.executable, APP,
                                      "transfer", ip, str(port), "0", str(down)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=lab.env)
                try:
                    wait_for("the transfer through node1's agent",
                             lambda: any(c["destination"] == f"{ip}:{port}" and c["state"] == "open"
                                         for c in lab.ctl("node1", "connections")["connections"]))
                    time.sleep(0.5)
                    pid = pid_of("node1")
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid)
                    out, _ = p.communicate(timeout=60)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                lab.lab("agent", "start", "node1")
                self.assertNotEqual(p.returncode, 0, out)
                self.assertIn("ConnectionResetError", out, "the app read an end of stream, not a reset")

    def test_kill_9_resets_the_server_apps_too(self):
        """The server app's end of a connection, on the socket the agent opened to it, is reset
        too when that agent is killed (its linger 0 is set in the connect's ring chain): on one
        node (node1's agent opened it for the handoff) and across nodes (node2's agent opened it
        for the HBONE stream)."""
        lab = self.lab
        for node, ip, port, watch in (("node1", self.local_ip, 8087, self.watch_local),
                                      ("node2", self.server_ip, 8086, self.watch_remote)):
            with self.subTest(node=node):
                p = start_app(lab, "shop/client", "hold", ip, str(port), "60")
                try:
                    wait_for(f"the connection through {node}'s agent",
                             lambda: any(c["destination"] == f"{ip}:{port}" and c["state"] == "open"
                                         for c in lab.ctl(node, "connections")["connections"]))
                    time.sleep(0.5)  # a few round trips
                    pid = pid_of(node)
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid)
                    ended = read_line(watch, 20)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                    lab.lab("agent", "start", node)
                self.assertRegex(ended, r"^end how=reset n=[1-9]", "the server app read an end, not a reset")

    def snapshot(self):
        """What an agent's kill could leave behind: pins, map entries, pod listeners, agents."""
        pins, entries = [], {}
        for root, _, files in os.walk(PIN_ROOT):
            for f in files:
                path = os.path.join(root, f)
                pins.append(os.path.relpath(path, PIN_ROOT))
                if f.startswith("sluice_"):  # maps (programs and links are link_*/prog_*)
                    p = run(["bpftool", "-j", "map", "dump", "pinned", path], check=False)
                    entries[os.path.relpath(path, PIN_ROOT)] = len(json.loads(p.stdout)) if p.returncode == 0 \
                        else p.stderr.strip()
        listeners = {}
        for pod in ("shop/client", "shop/server", "shop/local"):
            out = self.lab.exec(pod, "ss", "-Hltn").stdout
            listeners[pod] = sorted(line.split()[3] for line in out.splitlines() if line.strip())
        agents = []
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            # This lab's agents only (their pins are under its PIN_ROOT), not another lab's.
            if argv and argv[0].endswith(b"sluice-agent") and b"--node-name" in argv and \
                    own_agent(argv):
                agents.append(argv[argv.index(b"--node-name") + 1].decode())
        return {"pins": sorted(pins), "map_entries": entries, "listeners": listeners, "agents": sorted(agents)}

    def test_kill_9_under_load(self):
        lab = self.lab
        before = self.snapshot()
        self.assertEqual(before["agents"], ["node1", "node2"])
        cross = LoadLoop(lab, "shop/client", self.server_ip, 8082, conc=2, text="CROSS")
        same = LoadLoop(lab, "shop/client", self.local_ip, 8083, conc=2, text="SAME")
        kills = []
        try:
            for i in range(KILLS):
                node = ("node1", "node2")[i % 2]
                time.sleep(0.5)  # load before the kill
                pid = pid_of(node)
                killed = time.time()
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid)
                lab.lab("agent", "start", node)  # returns once /ready answers 200
                ready = time.time()
                kills.append((node, killed, ready))
                while time.time() < ready + RECOVERY + 1.0:  # load after recovery, to check it
                    time.sleep(0.1)
        finally:
            cross.stop()
            same.stop()
        end = cross.conns[-1][0] + 0.001
        say(f"{len(cross.conns)} cross-node and {len(same.conns)} same-node connections during {KILLS} kills")
        problems = []
        for k, (node, killed, ready) in enumerate(kills):
            nxt = kills[k + 1][1] if k + 1 < len(kills) else end
            line = f"kill {k + 1} ({node}): ready {ready - killed:.2f}s after the kill;"
            for name, load in (("cross-node", cross), ("same-node", same)):
                affected = name == "cross-node" or node == "node1"
                # This kill's failures: in flight at the kill or started before ready + RECOVERY.
                failed = sum(1 for c in load.conns if not c[2] and c[1] >= killed and c[0] < ready + RECOVERY)
                back = load.first_ok_after(killed, nxt)
                line += f" {name} {failed} failed" + (f", ok again {back - ready:+.2f}s from ready" if back else "")
                # Started RECOVERY s after ready and over before the next kill: every one succeeded.
                late_ok, late_failed = load.window(ready + RECOVERY, nxt, ended_by=nxt)
                if late_failed or not late_ok:
                    errors = [f"{c[0] - ready:+.3f}s..{c[1] - ready:+.3f}s {c[3]}" for c in load.conns
                              if ready + RECOVERY <= c[0] and c[1] < nxt and not c[2]]
                    problems.append(f"{name}, kill {k + 1} ({node}): {late_failed} failed / {late_ok} ok among the "
                                    f"connections started {RECOVERY}s after ready: {errors[:5]}")
                if not affected and failed:
                    problems.append(f"same-node load lost {failed} connections to a kill of node2's agent")
            say(line)
        # Nothing left behind: the same pins, map entries, listeners and agents as before.
        try:
            wait_for("the state from before the kills", lambda: self.snapshot() == before, timeout=10, interval=0.5)
        except AssertionError:
            self.assertEqual(self.snapshot(), before, "left behind by the kills")
        say(f"after {KILLS} kills: {len(before['pins'])} pins, map entries {before['map_entries']}, "
            f"listeners per pod and agents as before")
        self.assertEqual(problems, [], f"failures: {cross.failures[-5:]} {same.failures[-5:]}")

        # The connections after the last restart were captured: meshed, with both identities.
        since = kills[-1][2] + RECOVERY
        for dst, sa in ((f"{self.server_ip}:8082", "api"), (f"{self.local_ip}:8083", "db")):
            recs = wait_for(f"records to {dst}", lambda dst=dst: records_since(lab, "node1", "outbound", dst, since))
            for r in recs:
                self.assertEqual((r["source_principal"], r["destination_principal"]), (f"{TD}/web", f"{TD}/{sa}"), r)


class ControlPlaneFaultTest(LabTest):
    NODES = 2

    @classmethod
    def setUpLab(cls):
        cls.server_ip = cls.lab.meshed_pair()
        cls.lab.server("shop/server", "echo", 8082)

    def ready_body(self, node):
        return self.lab.lab("node", "exec", node, "--", "curl", "-s", "http://127.0.0.1:15000/ready").stdout

    def assertNoneFailed(self, load, what):
        ok, failed = len([c for c in load.conns if c[2]]), len([c for c in load.conns if not c[2]])
        say(f"{what}: {ok} connections succeeded, {failed} failed")
        self.assertGreater(ok, 0)
        self.assertEqual(failed, 0, load.failures[:10])

    def test_1_kill_9_and_restart(self):
        lab = self.lab
        load = LoadLoop(lab, "shop/client", self.server_ip, 8082, conc=2, text="CPKILL")
        try:
            time.sleep(0.5)
            pid = pid_of("controlplane")
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
            wait_for("the agents to notice", lambda: "unreachable" in self.ready_body("node1"), timeout=30)
            time.sleep(1.0)  # load while it is away
            lab.lab("controlplane", "start")
            for node in ("node1", "node2"):
                wait_for(f"{node} reconnected", lambda node=node: self.ready_body(node) == "ready\n", timeout=30)
            time.sleep(0.5)
        finally:
            load.stop()
        self.assertNoneFailed(load, "control plane kill -9 and restart")

    def test_2_hang(self):
        lab = self.lab
        load = LoadLoop(lab, "shop/client", self.server_ip, 8082, conc=2, text="CPHANG")
        pid = pid_of("controlplane")
        try:
            time.sleep(0.5)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(5.0)  # a hung control plane: connections keep going
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
            load.stop()
        self.assertNoneFailed(load, "control plane SIGSTOP 5 s then SIGCONT")
        # It answers again: a new pod reaches the agents' view.
        lab.pod("shop", "late", node="node2", sa="api")
        wait_for("shop/late enrolled", lambda: lab.enrolled("node2", "shop/late"), timeout=30)


class CaAwayAtRenewalTest(LabTest):
    NODES = 2

    AGENT_ARGS = "--cert-ttl 60"  # the shortest: renewal after ~30 s

    @classmethod
    def setUpLab(cls):
        cls.server_ip = cls.lab.meshed_pair()
        cls.lab.server("shop/server", "echo", 8082)

    def test_old_certificate_serves_until_the_ca_is_back(self):
        lab = self.lab
        uri = f"{TD}/web"
        old = lab.cert("node1", uri)
        lab.lab("controlplane", "stop")
        try:
            cert = wait_for("the renewal to fail", lambda: (lambda c: c if c["state"] == "retrying" else None)(
                lab.cert("node1", uri)), timeout=60, interval=0.5)
            due = time.time()
            say(f"renewal due {old['not_after_unix'] - due:.0f}s before expiry; CA away: {cert['error']}")
            self.assertEqual(cert["serial"], old["serial"])
            self.assertLess(time.time(), old["not_after_unix"])
            self.assertTrue(cert["error"])
            ready = lab.lab("node", "exec", "node1", "--", "curl", "-sf", "http://127.0.0.1:15000/ready").stdout
            self.assertIn(f"certificate of {uri} not renewed", ready)
            self.assertIn("the current one serves until", ready)
            with open(os.path.join(LAB_DIR, "node1", "agent.log"), errors="replace") as f:
                log = f.read()
            self.assertIn(f"certificate for {uri} not obtained", log)
            self.assertIn("while the current one keeps serving", log)
            # The old certificate still serves: a new connection, mutual TLS with it.
            since = time.time()
            self.assertEqual(lab.client("shop/client", "say", self.server_ip, "8082", "hello").stdout.strip(),
                             "hello")
            recs = wait_for("the inbound record", lambda: records_since(lab, "node2", "inbound",
                                                                         f"{self.server_ip}:8082", since - 1))
            self.assertEqual(recs[0]["source_principal"], uri)
            self.assertTrue(recs[0]["mutual_tls"])
            self.assertEqual(lab.cert("node1", uri)["serial"], old["serial"])
        finally:
            lab.lab("controlplane", "start")
        back = time.time()
        new = wait_for("the renewal", lambda: (lambda c: c if c["state"] == "valid" and c["serial"] != old["serial"]
                                                else None)(lab.cert("node1", uri)), timeout=30, interval=0.2)
        say(f"renewed {time.time() - back:.1f}s after the CA came back, "
            f"{old['not_after_unix'] - time.time():.0f}s before the old one expired")
        self.assertGreater(new["not_after_unix"], old["not_after_unix"])
        wait_for("/ready without the note", lambda: lab.lab("node", "exec", "node1", "--", "curl", "-sf",
                                                            "http://127.0.0.1:15000/ready").stdout == "ready\n")


class PartitionTest(LabTest):
    NODES = 3
    CUT = 4.0  # seconds: well inside the held connection's 10-s read timeout once TCP retransmits

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        cls.server_ip = lab.meshed_pair()
        lab.pod("shop", "near", node="node2", sa="web")  # the server's node: cut off with it
        wait_for("shop/near enrolled", lambda: lab.enrolled("node2", "shop/near"))
        wait_for("certificate of web on node2", lambda: lab.cert("node2", f"{TD}/web")["state"] == "valid")
        lab.server("shop/server", "echo", 8082)
        # A Service with an endpoint on node2 (cut off) and one on node3.
        for node, name in (("node2", "b2"), ("node3", "b3")):
            lab.pod("shop", name, node=node, sa="api", labels=["app=echo"])
            wait_for(f"shop/{name} enrolled", lambda node=node, name=name: lab.enrolled(node, f"shop/{name}"))
            lab.server(f"shop/{name}", "echo", 8090)
        wait_for("certificate of api on node3", lambda: lab.cert("node3", f"{TD}/api")["state"] == "valid")
        cls.vip = lab.lab("svc", "add", "shop", "echo", "--selector", "app=echo", "--port", "8090").stdout.strip()

    def test_a_short_partition_keeps_connections_and_new_ones_recover(self):
        lab = self.lab
        dst = f"{self.server_ip}:8082"
        hold = start_app(lab, "shop/client", "hold", self.server_ip, "8082", str(self.CUT + 8))
        load = LoadLoop(lab, "shop/client", self.server_ip, 8082, conc=2, text="CUT", pause_ms=20)
        near = LoadLoop(lab, "shop/near", self.server_ip, 8082, conc=1, text="NEAR", pause_ms=20)
        svc = LoadLoop(lab, "shop/client", self.vip, 8090, conc=2, text="SVC", pause_ms=20)
        try:
            time.sleep(1.0)
            lab.lab("node", "link", "node2", "down")
            cut = time.time()
            status = lab.lab("status").stdout.splitlines()
            self.assertIn("link DOWN", next(line for line in status if line.startswith("node2 ")), status)
            time.sleep(self.CUT)
        finally:
            lab.lab("node", "link", "node2", "up")
        healed = time.time()
        try:
            time.sleep(RECOVERY + 3.0)
        finally:
            load.stop()
            near.stop()
            svc.stop()
        out = hold.stdout.read()
        hold.wait(timeout=30)
        during_ok, during_failed = load.window(cut + 0.5, healed)
        after_ok, after_failed = load.window(healed + RECOVERY, healed + RECOVERY + 3.0)
        say(f"cut {healed - cut:.1f}s: {during_ok} new connections succeeded and {during_failed} failed while cut; "
            f"from {RECOVERY}s after the heal {after_ok} succeeded, {after_failed} failed; held: {out.strip()}")
        self.assertEqual(hold.returncode, 0, f"the held connection broke: {out}")
        self.assertIn("ok n=", out)
        self.assertGreater(during_failed, 0, "nothing failed while node2 was cut off: was it cut?")
        self.assertGreater(after_ok, 0)
        # On the cut-off node, away from the control plane and node1, its own traffic goes on.
        near_ok, near_failed = near.window(0, healed + RECOVERY + 3.0)
        say(f"node2's own load: {near_ok} succeeded, {near_failed} failed")
        self.assertGreater(near.window(cut, healed)[0], 0)
        self.assertEqual(near_failed, 0, near.failures[:5])
        svc_ok, svc_failed = svc.window(cut, healed)
        say(f"the Service (endpoints on node2 and node3) while cut: {svc_ok} succeeded, {svc_failed} failed: "
            f"{[c for c in svc.conns if c[0] >= cut - 2 and not c[2]][:6]}")
        # The balancer goes around the endpoint it cannot reach: a connection that meets
        # node2 is retried on node3 once its tunnel fails, and only those whose client gives
        # up first (2 s, the load's timeout) fail: a couple per load thread, not half of all.
        self.assertGreater(svc_ok, 30)
        self.assertLessEqual(svc_failed, 6)
        self.assertEqual(after_failed, 0, [c for c in load.conns if c[0] >= healed + RECOVERY and not c[2]][:5])
        # The new connections are meshed as before: mutual TLS, both identities.
        recs = wait_for("records after the heal", lambda: records_since(lab, "node1", "outbound", dst,
                                                                          healed + RECOVERY))
        for r in recs[:20]:
            self.assertEqual((r["source_principal"], r["destination_principal"]), (f"{TD}/web", f"{TD}/api"), r)
            self.assertTrue(r["mutual_tls"], r)


class IpReuseTest(LabTest):
    NODES = 2

    @classmethod
    def setUpLab(cls):
        cls.server_ip = cls.lab.meshed_pair()
        cls.lab.server("shop/server", "echo", 8082)

    def test_reused_ip_is_reached_with_its_own_identity(self):
        lab = self.lab
        dst = f"{self.server_ip}:8082"
        self.assertEqual(lab.client("shop/client", "say", self.server_ip, "8082", "old").stdout.strip(), "old")
        rec = wait_for("a record", lambda: records_since(lab, "node1", "outbound", dst, 0))[0]
        self.assertEqual(rec["destination_principal"], f"{TD}/api")
        tunnels = lab.ctl("node1", "stats")["hbone"]
        self.assertEqual(tunnels["tunnels_active"], 1)  # pooled, idle: it outlives the connection
        # The pod goes; another with another service account gets its address.
        lab.lab("pod", "del", "shop", "server")
        deleted = time.time()
        ip = lab.pod("shop", "other", node="node2", sa="billing", ip=self.server_ip)
        self.assertEqual(ip, self.server_ip)
        wait_for("shop/other enrolled", lambda: lab.enrolled("node2", "shop/other"))
        wait_for("certificate of billing", lambda: lab.cert("node2", f"{TD}/billing")["state"] == "valid")
        lab.server("shop/other", "echo", 8082)
        attempts = []

        def reached():
            p = lab.client("shop/client", "say", self.server_ip, "8082", "new", check=False)
            attempts.append(p.returncode)
            return p.returncode == 0 and p.stdout.strip() == "new"
        wait_for("the new pod reached", reached, timeout=30, interval=0.2)
        say(f"new pod reached after {len(attempts)} attempt(s) ({attempts.count(0)} ok), "
            f"{time.time() - deleted:.1f}s after the delete")
        out = records_since(lab, "node1", "outbound", dst, deleted)
        inbound = wait_for("inbound records", lambda: records_since(lab, "node2", "inbound", dst, deleted))
        self.assertTrue(out)
        for r in out:
            self.assertNotEqual(r["destination_principal"], f"{TD}/api", r)  # never the old identity
        for r in [r for r in out if r["destination_principal"]] + inbound:
            self.assertEqual(r["destination_principal"], f"{TD}/billing", r)
            self.assertEqual(r["source_principal"], f"{TD}/web", r)
            self.assertTrue(r["mutual_tls"], r)
        # A tunnel of its own: the pooled one (to the old identity) was not used for the new pod.
        now = lab.ctl("node1", "stats")["hbone"]
        self.assertGreater(now["tunnels_opened"], tunnels["tunnels_opened"], now)
        say(f"records since the delete: {len(out)} outbound on node1, {len(inbound)} inbound on node2, "
            f"all naming {TD}/billing; node1 tunnels opened {tunnels['tunnels_opened']} -> {now['tunnels_opened']}")


if __name__ == "__main__":
    unittest.main()
