"""End to end: live inspection without Prometheus (`sluicectl stat`, `top`, `tap`).

node1: shop/client (sa web, meshed); node2: shop/server (sa api, meshed) and
shop/legacy (opted out of the mesh). The server answers a known mix of 200
and 503 (tests/e2e/apps/httpapp.py). Each node's agent shows what its own
pods did over the last minute: node2 the requests the server received,
node1 (--outbound) those the client sent; MESHED counts the node's pods
that are enrolled; tap and top show the requests as they happen.
"""
import json
import os
import subprocess
import sys

from labkit import LAB, PIN_ROOT, SLUICECTL, LabTest, REPO, wait_for

MESH = "sluice.dev/mesh"
APP = os.path.join(REPO, "tests", "e2e", "apps", "httpapp.py")
SYS_PY = "/usr/bin/python3"
TD = "spiffe://cluster.local/ns/shop/sa"


class LiveTest(LabTest):
    NODES = 2

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        cls.server_ip = lab.meshed_pair("shop")
        lab.pod("shop", "legacy", node="node2", labels=[f"{MESH}=disabled"])
        lab.spawn("shop/server", SYS_PY, APP, "server", "8080")

    # ---------------------------------------------------------------- helpers

    def traffic(self, connections, ok, fail):
        out = self.lab.exec("shop/client", SYS_PY, APP, "client", self.server_ip, "8080",
                            str(connections), str(ok), str(fail)).stdout
        return json.loads(out.strip().splitlines()[-1])["codes"]

    def stat(self, node, *args):
        return self.lab.ctl(node, "stat", *args)

    def row(self, node, kind, name, *args):
        for r in self.stat(node, kind, "-n", "shop", *args)["rows"]:
            if r["name"] == name:
                return r
        return None

    def ctl_text(self, node, *args):
        pin = os.path.join(PIN_ROOT, node)
        return self.lab.lab("node", "exec", node, "--", SLUICECTL, "--bpf-pin-dir", pin,
                            *args).stdout

    def background_ctl(self, node, *args):
        """sluicectl running on `node` until it exits by itself (killed at teardown if not)."""
        p = subprocess.Popen([sys.executable, LAB, "node", "exec", node, "--", SLUICECTL, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lab.procs.append(p)
        return p

    def drive_until_exit(self, proc, ok, fail):
        """Sends batches of requests until `proc` (a tap or top session) has exited."""
        wait_for("the live session to end", lambda: self.traffic(1, ok, fail) and proc.poll() is not None,
                 timeout=60)
        out, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 0, err)
        return out

    # ------------------------------------------------------------------ tests

    def test_1_stat_shows_success_rate_and_requests_on_both_nodes(self):
        codes = self.traffic(2, 15, 5)
        self.assertEqual(codes, {"200": 30, "503": 10})
        # The server's node: the requests the server received (inbound, Linkerd's default).
        wait_for("40 requests at the server", lambda: (
            (r := self.row("node2", "deploy", "server")) and r["inbound"]["requests"] >= 40))
        server = self.row("node2", "deploy", "server")
        self.assertEqual(server["inbound"]["requests"], 40)
        self.assertEqual(server["inbound"]["successes"], 30)
        self.assertAlmostEqual(server["inbound"]["success_rate"], 0.75)
        self.assertGreater(server["inbound"]["rps"], 0)
        self.assertIsNotNone(server["inbound"]["latency_ms_p99"])
        self.assertGreaterEqual(server["inbound"]["tcp_opened"], 2)
        self.assertEqual((server["pods_enrolled"], server["pods_known"]), (1, 1))
        table = self.ctl_text("node2", "stat", "deploy", "-n", "shop")
        lines = {l.split()[0]: l.split() for l in table.splitlines()}
        self.assertEqual(lines["NAME"], ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50",
                                         "LATENCY_P95", "LATENCY_P99", "TCP_CONN"])
        self.assertEqual(lines["server"][1:3], ["1/1", "75.00%"], table)
        self.assertEqual(lines["legacy"][1:3], ["0/1", "-"], table)
        # The client's node: the same requests, as the client sent them.
        wait_for("40 requests from the client", lambda: (
            (r := self.row("node1", "deploy", "client")) and r["outbound"]["requests"] >= 40))
        client = self.row("node1", "deploy", "client")
        self.assertEqual(client["outbound"]["requests"], 40)
        self.assertEqual(client["outbound"]["successes"], 30)
        self.assertEqual(client["inbound"]["requests"], 0)
        out = self.ctl_text("node1", "stat", "-n", "shop", "--outbound")
        self.assertIn("75.00%", next(l for l in out.splitlines() if l.startswith("client ")), out)
        # Namespaces and pods: MESHED counts this node's pods only.
        ns = self.row("node2", "ns", "shop")
        self.assertEqual((ns["pods_enrolled"], ns["pods_known"]), (1, 2))
        self.assertIsNone(self.row("node1", "pod", "server"))  # not node1's pod

    def test_2_tap_shows_the_requests_with_both_identities(self):
        tap = self.background_ctl("node2", "tap", "--count", "3", "--path", "/fail",
                                  "--to", "deploy/server", "-o", "json")
        out = self.drive_until_exit(tap, 1, 1)
        events = [json.loads(l) for l in out.splitlines() if l.strip() and "dropped" not in l]
        self.assertEqual(len(events), 3, out)
        for e in events:
            self.assertEqual((e["method"], e["path"], e["status"]), ("POST", "/fail", 503))
            self.assertEqual(e["authority"], "server:8080")
            self.assertEqual(e["direction"], "inbound")
            self.assertEqual(e["source"]["identity"], f"{TD}/web")
            self.assertEqual(e["destination"]["identity"], f"{TD}/api")
            self.assertEqual(e["destination"]["pod"], "server")
            self.assertTrue(e["mutual_tls"])
            self.assertGreater(e["duration_us"], 0)
        # The text form: one Linkerd-like line per request.
        tap = self.background_ctl("node1", "tap", "--count", "2", "--method", "POST", "--path", "/ok")
        out = self.drive_until_exit(tap, 1, 1)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        for l in lines:
            self.assertTrue(l.startswith("req proxy=out "), l)
            for part in (":method=POST", ":path=/ok", ":status=200", "src_workload=shop/client",
                         f"src_id={TD}/web", f"dst_id={TD}/api", "tls=true"):
                self.assertIn(part, l)
        # Only this node's requests: node1 has no inbound ones.
        none = subprocess.run([sys.executable, LAB, "node", "exec", "node1", "--", SLUICECTL, "-o",
                               "json", "stat", "pod", "-n", "shop"], capture_output=True, text=True)
        self.assertEqual([r["name"] for r in json.loads(none.stdout)["rows"]], ["client"])

    def test_2b_tap_by_service_on_the_destination_node(self):
        # The destination is told a pod address; its records name the Service
        # (the first with that endpoint and port), so --to svc/ finds the
        # requests that came across nodes too.
        lab = self.lab
        lab.pod("shop", "api2", node="node2", sa="api", labels=["app=api2"])
        wait_for("shop/api2 enrolled", lambda: lab.enrolled("node2", "shop/api2"))
        lab.spawn("shop/api2", SYS_PY, APP, "server", "8080")
        vip = lab.lab("svc", "add", "shop", "api2", "--selector", "app=api2", "--port", "80:8080").stdout.strip()
        for node in ("node1", "node2"):  # the client's to balance, the server's to record
            wait_for(f"the Service in {node}'s view", lambda node=node: any(
                s["name"] == "api2" and s["endpoints"] for s in lab.ctl(node, "services")["services"]))
        tap = self.background_ctl("node2", "tap", "--count", "2", "--to", "svc/api2", "-o", "json")
        wait_for("the tap session to end", lambda: self.lab.exec(
            "shop/client", SYS_PY, APP, "client", vip, "80", "1", "1", "0") and tap.poll() is not None,
            timeout=60)
        out, err = tap.communicate(timeout=10)
        self.assertEqual(tap.returncode, 0, err)
        events = [json.loads(l) for l in out.splitlines() if l.strip() and "dropped" not in l]
        self.assertEqual(len(events), 2, out)
        for e in events:
            self.assertEqual((e["direction"], e["service"]), ("inbound", "shop/api2"), e)
            self.assertEqual(e["source"]["pod"], "client")

    def test_3_top_ranks_routes(self):
        top = self.background_ctl("node1", "top", "--once", "--interval", "3", "-o", "json")
        out = self.drive_until_exit(top, 3, 1)
        rows = json.loads(out)
        self.assertTrue(rows, out)
        self.assertEqual((rows[0]["source"], rows[0]["destination"], rows[0]["method"],
                          rows[0]["path"]), ("client", "server", "POST", "/ok"))
        self.assertEqual(rows[0]["successes"], rows[0]["count"])
        fail = [r for r in rows if r["path"] == "/fail"]
        self.assertEqual(fail[0]["successes"], 0)
        self.assertLess(fail[0]["count"], rows[0]["count"])

    def test_4_errors_say_what_to_do(self):
        p = subprocess.run([sys.executable, LAB, "node", "exec", "node1", "--", SLUICECTL, "tap",
                            "--to", "cronjob/x"], capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("deploy/NAME", p.stderr)
        # A resource nothing is named: refused at once, not waited on for ever.
        p = subprocess.run([sys.executable, LAB, "node", "exec", "node1", "--", SLUICECTL, "tap",
                            "--to", "svc/nosuch"], capture_output=True, text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("no Service with endpoints 'nosuch'", p.stderr)
        self.assertIn("sluicectl services lists them", p.stderr)
        p = subprocess.run([SLUICECTL, "--admin", "127.0.0.1:1", "stat"], capture_output=True,
                           text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("is sluice-agent running on this node?", p.stderr)
