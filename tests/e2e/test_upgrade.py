"""End to end: agent upgrades without dropped connections (issue 13, "Upgrades").

UpgradeTest — node1: shop/client (sa web); node2: shop/server (sa api, echo on
8082) and shop/local (sa web), all meshed. Two loops open new connections back
to back, cross-node (client -> server, HBONE) and same-node (local -> server,
handoff), while `lab agent upgrade` replaces an agent: the new one takes the
pods' listeners over from the old one (handover.sock), which stops accepting,
sends GOAWAY on its tunnels and drains (--drain-seconds 6 here). Not one new
connection fails. An HBONE connection shorter than the drain finishes; one
longer than it is closed at the deadline with the reason in the old agent's
access log, and the client's next connection succeeds. A long-lived
same-node connection (plaintext handoff) is handed over to the new agent
(frozen, its sockets and buffered bytes sent over handover.sock): it keeps
exchanging data — every round trip's numbered line echoed byte for byte —
through the upgrade and past the drain deadline, and the old agent logs it
as handed_over. A second upgrade of the same node (the successor hands over
in turn) and an upgrade of the client's node behave the same. What the old
agent drains is counted by the new one's metrics (the old one's port is
gone): the bytes while the stream is open, then its close, never its open.
"""
import json
import os
import subprocess
import sys
import time

from labkit import LAB, LAB_DIR, LabTest, metric_sum, parse_metrics, read_line, start_app, wait_for

MESH = "sluice.dev/mesh"
TD = "spiffe://cluster.local/ns/shop/sa"
DRAIN = 6  # --drain-seconds of every agent of this lab


class UpgradeTest(LabTest):
    NODES = 2

    AGENT_ARGS = f"--drain-seconds {DRAIN}"

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        lab.pod("shop", "client", node="node1", sa="web")
        cls.server_ip = lab.pod("shop", "server", node="node2", sa="api")
        lab.pod("shop", "local", node="node2", sa="web")
        for node, pod in (("node1", "shop/client"), ("node2", "shop/server"), ("node2", "shop/local")):
            wait_for(f"{pod} enrolled", lambda node=node, pod=pod: lab.enrolled(node, pod))
        for node, sa in (("node1", "web"), ("node2", "api"), ("node2", "web")):
            wait_for(f"certificate of {sa} on {node}",
                     lambda node=node, sa=sa: lab.cert(node, f"{TD}/{sa}")["state"] == "valid", timeout=30)
        lab.server("shop/server", "echo", 8082)

    def start(self, pod, *args):
        """A client in `pod` that prints 'ready' first (loop, hold)."""
        return start_app(self.lab, pod, *args)

    @staticmethod
    def finish(p, timeout=60):
        if p.stdin:
            p.stdin.close()
        out = p.stdout.read()
        p.wait(timeout=timeout)
        p.stdout.close()
        return p.returncode, out

    def agent_pid(self, node):
        with open(os.path.join(LAB_DIR, node, "agent.pid")) as f:
            return int(f.read().strip())

    def upgrade_under_load(self, node):
        old_pid = self.agent_pid(node)
        log = os.path.join(LAB_DIR, node, "agent.log")
        log_start = os.path.getsize(log)
        loops = {"cross-node": self.start("shop/client", "loop", self.server_ip, "8082", "2", "upgrade"),
                 "same-node": self.start("shop/local", "loop", self.server_ip, "8082", "2", "upgrade")}
        short = self.start("shop/client", "hold", self.server_ip, "8082", str(DRAIN / 2))
        long = self.start("shop/client", "hold", self.server_ip, "8082", str(DRAIN * 6))
        # Same node: handed over to the new agent, so it outlives the drain.
        same = self.start("shop/local", "hold", self.server_ip, "8082", str(DRAIN * 2)) if node == "node2" else None
        time.sleep(0.5)  # load before the upgrade
        started = time.monotonic()
        self.lab.lab("agent", "upgrade", node)  # the old agent exited, the new one is ready
        took = time.monotonic() - started
        time.sleep(1.0)  # load after it
        results = {name: json.loads(self.finish(p)[1].strip().splitlines()[-1]) for name, p in loops.items()}
        for name, r in results.items():
            ok = sum(b["ok"] for b in r["buckets"])
            fail = sum(b["fail"] for b in r["buckets"])
            print(f"\n  {node} upgrade ({took:.1f} s): {name}: {ok} new connections succeeded, {fail} failed",
                  file=sys.stderr)
            self.assertGreater(ok, 0, r)
            self.assertEqual(fail, 0, f"{name} connections failed during the upgrade of {node}: {r['failures'][:10]}")
        self.assertNotEqual(self.agent_pid(node), old_pid)
        # An HBONE connection that ends within the drain finishes normally.
        code, out = self.finish(short)
        self.assertEqual(code, 0, out)
        self.assertIn("ok n=", out)
        # One that outlives it is closed at the deadline, with the reason
        # logged by the old agent; the client's next connection succeeds.
        code, out = self.finish(long, timeout=DRAIN * 6 + 30)
        self.assertNotEqual(code, 0, f"a connection outlived the drain deadline: {out}")
        with open(log, errors="replace") as f:
            f.seek(log_start)
            closed = [l for l in f if "drain deadline of" in l and f"dst={self.server_ip}:8082" in l]
        self.assertTrue(closed, "no access log line of a connection closed at the drain deadline")
        reply = self.lab.client("shop/client", "say", self.server_ip, "8082", "after").stdout
        self.assertIn("after", reply)
        if same:
            code, out = self.finish(same, timeout=DRAIN * 2 + 30)
            self.assertEqual(code, 0, f"the same-node connection broke across the upgrade: {out}")
            self.assertIn("ok n=", out)
            with open(log, errors="replace") as f:
                f.seek(log_start)
                lines = f.readlines()
            handed = [l for l in lines if "reason=handed_over" in l and "path=local_handoff" in l
                      and f"dst={self.server_ip}:8082" in l]
            self.assertTrue(handed, "the old agent did not log the same-node connection as handed over")
            adopted = [l for l in lines if "adopted=true" in l and f"dst={self.server_ip}:8082" in l]
            self.assertTrue(adopted, "the new agent did not log the end of the adopted connection")

    def handing_over(self, node, log_start):
        """`lab agent upgrade NODE` in the background, returned once the old agent has handed
        over (its log after `log_start` says so): it drains from then on, and the `lab` process
        ends when the old agent has exited."""
        log = os.path.join(LAB_DIR, node, "agent.log")
        upgrade = subprocess.Popen([sys.executable, LAB, "agent", "upgrade", node], env=self.lab.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def handed_over():
            with open(log, errors="replace") as f:
                f.seek(log_start)
                return "handed over to the successor" in f.read()
        try:
            wait_for("the old agent handing over", handed_over, timeout=30)
        except BaseException:
            upgrade.wait(timeout=DRAIN * 4 + 60)
            upgrade.stdout.close()
            raise
        return upgrade

    def test_1_server_node_upgrade(self):
        self.upgrade_under_load("node2")

    def test_2_server_node_second_upgrade(self):
        # The successor hands over in turn.
        self.upgrade_under_load("node2")

    def test_3_client_node_upgrade(self):
        self.upgrade_under_load("node1")

    def test_4_a_policy_change_reaches_what_the_old_agent_drains(self):
        """An HBONE stream stays with the old agent until it ends or the drain deadline: a DENY
        applied meanwhile closes it there (the old agent still follows the control plane's
        views), not the deadline."""
        log = os.path.join(LAB_DIR, "node2", "agent.log")
        log_start = os.path.getsize(log)
        held = self.start("shop/client", "hold", self.server_ip, "8082", str(DRAIN * 6))
        upgrade = self.handing_over("node2", log_start)
        deny = os.path.join(LAB_DIR, "deny-web-8082.yaml")
        try:
            with open(deny, "w") as f:
                f.write("apiVersion: security.sluice.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n"
                        "  name: deny-web-8082\n  namespace: shop\nspec:\n  action: DENY\n  rules:\n"
                        "  - from:\n    - source:\n        principals: [\"cluster.local/ns/shop/sa/web\"]\n"
                        "    to:\n    - operation:\n        ports: [\"8082\"]\n")
            self.lab.lab("apply", deny)
            code, out = self.finish(held, timeout=DRAIN * 6 + 30)
            self.assertNotEqual(code, 0, f"the denied connection outlived the policy: {out}")
            self.assertEqual(upgrade.wait(timeout=DRAIN * 4 + 60), 0, upgrade.stdout.read())
            with open(log, errors="replace") as f:
                f.seek(log_start)
                lines = [l for l in f if "[access]" in l and f"dst={self.server_ip}:8082" in l
                         and "path=hbone" in l]
            self.assertTrue(any("reason=denied" in l for l in lines), lines)
            self.assertFalse(any("drain deadline" in l for l in lines), lines)
        finally:
            if upgrade.poll() is None:
                upgrade.wait(timeout=DRAIN * 4 + 60)
            upgrade.stdout.close()
            self.lab.lab("delete", deny, check=False)
            if os.path.exists(deny):
                os.remove(deny)

    def test_5_the_new_agent_counts_what_the_old_one_drains(self):
        """An HBONE stream drained by the old agent after the handover: its bytes from then on
        are in the new agent's scrape while it is still open, its close once it ends, and its
        open is not counted again (the old agent counted it). Nothing else reaches the server
        meanwhile, so the new agent's series hold this stream alone."""
        # test_4's DENY is deleted: once node2 has dropped it, connections go through again.
        wait_for("client -> server:8082 allowed again",
                 lambda: "again" in self.lab.client("shop/client", "say", self.server_ip, "8082", "again",
                                                    check=False).stdout, timeout=30)
        log = os.path.join(LAB_DIR, "node2", "agent.log")
        log_start = os.path.getsize(log)
        p = self.start("shop/client", "pace", self.server_ip, "8082")

        def exchange(n):
            p.stdin.write(f"{n}\n")
            p.stdin.flush()
            self.assertEqual(read_line(p, 10).strip(), f"echoed {n + 1}")

        exchange(999)  # 1,000 bytes each way before the upgrade: the old agent's to count
        upgrade = self.handing_over("node2", log_start)
        series = dict(reporter="destination", source_workload="client", destination_workload="server",
                      response_flags="-")

        def counted(name):
            return metric_sum(parse_metrics(self.lab.scrape("node2")[1]), f"istio_tcp_{name}", **series)

        try:
            exchange(49_999)  # 50,000 bytes each way while the old agent drains the stream
            # Scraped from the new agent while the stream is still open.
            wait_for("the drained stream's bytes in the new agent's scrape",
                     lambda: counted("received_bytes_total") == 50_000 and counted("sent_bytes_total") == 50_000,
                     timeout=10)
            self.assertEqual(counted("connections_opened_total"), 0)
            self.assertEqual(counted("connections_closed_total"), 0)
            p.stdin.close()
            self.assertEqual(read_line(p, 10).strip(), "closed")
            # The old agent's drain ends with the stream: the upgrade completes.
            self.assertEqual(upgrade.wait(timeout=DRAIN * 4 + 60), 0, upgrade.stdout.read())
            # (the new agent applies the last message of the drain on its own thread)
            wait_for("the drained stream's close in the new agent's scrape",
                     lambda: counted("connections_closed_total") == 1, timeout=10)
            self.assertEqual(counted("connections_opened_total"), 0)
            self.assertEqual(counted("received_bytes_total"), 50_000)
            self.assertEqual(counted("sent_bytes_total"), 50_000)
            def log_lines():
                with open(log, errors="replace") as f:
                    f.seek(log_start)
                    return f.readlines()
            drained = [l for l in log_lines() if "[access]" in l and f"dst={self.server_ip}:8082" in l
                       and "path=hbone" in l]
            self.assertTrue(any("sent=51000" in l for l in drained), drained)
            wait_for("the new agent logging the end of the old one's drain",
                     lambda: any("the previous agent's drain is over" in l for l in log_lines()), timeout=10)
        finally:
            if upgrade.poll() is None:
                upgrade.wait(timeout=DRAIN * 4 + 60)
            upgrade.stdout.close()
            p.wait(timeout=10)
            p.stdout.close()


if __name__ == "__main__":
    import unittest
    unittest.main()
