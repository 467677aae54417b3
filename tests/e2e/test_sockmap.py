#!/usr/bin/python3
"""Issue 11 end to end with --sockmap=on, one node: same-node meshed
connections (shop/client -> shop/server, local_handoff) whose four app <->
proxy hop sockets sit in the sockhash. One to an opaque port (MySQL's 3306,
Redis's 6379: never HTTP-inspected) is spliced: its two app sockets are
joined and the proxy steps out of the byte path; one to an inspected port
is spliced once HTTP detection has found no HTTP. Spliced pairs go through an agent upgrade (the successor
relays them), an agent restart (reset, never stuck) and the deletion of the
server pod (the client learns promptly), and `sluicectl connections reset`
(both apps see the reset at once). After each, no sockhash or splice entry
outlives its socket, and the records count every byte. While a pair is
spliced, its record and the TCP byte metrics include what BPF counted."""
import json
import subprocess
import sys
import time

from labkit import APP, LAB, LabTest, parse_metrics, read_line, run, start_app, wait_for

MESH = "sluice.dev/mesh"
SOCKHASH = "sluice_sockhash_v1"


class SockmapLifecycleTest(LabTest):
    NODES = 1
    AGENT_ARGS = "--sockmap=on"

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        cls.client_ip = lab.pod("shop", "client", sa="client")
        cls.server_ip = lab.pod("shop", "server", sa="server")
        for pod in ("shop/client", "shop/server"):
            wait_for(f"{pod} enrolled", lambda pod=pod: lab.enrolled("node1", pod))
        lab.server("shop/server", "stream", 8081)  # inspected: spliced once detection finds no HTTP
        lab.server("shop/server", "stream", 3306)  # opaque: spliced
        lab.server("shop/server", "echo", 6379)    # opaque: spliced
        cls.watch = lab.server("shop/server", "watch", 5432)  # opaque: spliced; says how each ended
        cls.stall = lab.server("shop/server", "stall", 11211)  # opaque: spliced; a peer that stops

    def metrics(self):
        _, body = self.lab.scrape("node1")
        return parse_metrics(body)

    def sockhash_entries(self):
        return [int(v) for n, labels, v in self.metrics()
                if n == "sluice_bpf_map_entries" and labels.get("map") == SOCKHASH][0]

    def counter(self, name):
        return [v for n, _, v in self.metrics() if n == name][0]

    def hold(self, seconds, port=6379):
        """A live echo connection from shop/client, one line every 0.2 s for `seconds`;
        started once its four hop sockets are in the sockhash."""
        before = self.sockhash_entries()
        p = start_app(self.lab, "shop/client", "hold", self.server_ip, str(port), str(seconds))
        wait_for("the connection's four hop sockets in the sockhash",
                 lambda: self.sockhash_entries() == before + 4)
        return p

    @staticmethod
    def ended(p):
        out = p.stdout.read()
        p.wait(timeout=60)
        p.stdout.close()
        p.stdin.close()
        return p.returncode, out

    def splice_map(self):
        path = f"{self.lab.pin_root}/node1/sluice_splice_v1"
        return json.loads(run(["bpftool", "-j", "map", "dump", "pinned", path]).stdout)

    def splice_entries(self):
        return len(self.splice_map())

    def open_record(self, port):
        dst = f"{self.server_ip}:{port}"
        return [c for c in self.lab.connections("node1")
                if c["destination"] == dst and c["direction"] == "outbound" and c["state"] == "open"]

    def assert_sockhash_empty(self):
        # Every hop socket has closed: none of them stays in the sockhash, no splice entry stays.
        wait_for("an empty sockhash", lambda: self.sockhash_entries() == 0, timeout=10, interval=0.2)
        self.assertEqual(self.splice_entries(), 0)

    def transfer(self, port, up, down):
        """A checksummed transfer up and down through one connection; its closed record."""
        p = self.lab.client("shop/client", "transfer", self.server_ip, str(port), str(up), str(down))
        self.assertIn("down_ok=True up_ok=True", p.stdout)
        dst = f"{self.server_ip}:{port}"
        rec = wait_for("the closed record", lambda: [
            c for c in self.lab.connections("node1")
            if c["destination"] == dst and c["direction"] == "outbound" and c["state"] == "closed"])[-1]
        self.assertEqual(rec["path"], "local_handoff")
        # The request line "UP DOWN\n" goes up with the bytes; a sha256 trailer comes down.
        self.assertEqual(rec["bytes_sent"], up + len(f"{up} {down}\n"))
        self.assertGreater(rec["bytes_received"], down)
        return rec

    def test_0_sockmap_and_splice_are_on(self):
        sockmap = self.lab.config_dump("node1")["bpf"]["sockmap"]
        self.assertEqual(sockmap["mode"], "on", sockmap)
        self.assertEqual(sockmap["splice"]["mode"], "on", sockmap)
        self.assertEqual(self.counter("sluice_bpf_sockmap_enabled"), 1)

    def test_1_inspected_port_spliced_once_detection_finds_no_http(self):
        # 8081 is inspected; the stream protocol's first line is not HTTP, so
        # detection gives up and the connection is spliced after it.
        before = self.counter("sluice_bpf_splice_switched_total")
        self.transfer(8081, 24 << 20, 16 << 20)
        self.assertGreaterEqual(self.counter("sluice_bpf_splice_switched_total") - before, 1)
        self.assert_sockhash_empty()

    def test_1_opaque_connection_is_spliced_and_counted(self):
        before = {n: self.counter(n) for n in ("sluice_bpf_splice_switched_total", "sluice_bpf_splice_bytes_total",
                                               "sluice_proxy_spliced_total", "sluice_bpf_splice_behind_total")}
        up, down = 64 << 20, 32 << 20
        self.transfer(3306, up, down)
        after = {n: self.counter(n) for n in before}
        print(f"\n  spliced: {after['sluice_bpf_splice_bytes_total'] - before['sluice_bpf_splice_bytes_total']:.0f} "
              f"of {up + down} bytes straight app to app", file=sys.stderr)
        self.assertEqual(after["sluice_proxy_spliced_total"] - before["sluice_proxy_spliced_total"], 1)
        self.assertGreaterEqual(after["sluice_bpf_splice_switched_total"] - before["sluice_bpf_splice_switched_total"], 1)
        spliced = after["sluice_bpf_splice_bytes_total"] - before["sluice_bpf_splice_bytes_total"]
        # Straight app to app from the switch on, unless the server app fell more than 4 MiB
        # behind (this reader hashes what it reads, and may be slower than the writer): then
        # the client's later sends go back through the proxy (splice_behind), which relays.
        if after["sluice_bpf_splice_behind_total"] > before["sluice_bpf_splice_behind_total"]:
            self.assertGreater(spliced, 4 << 20)
        else:
            self.assertGreater(spliced, up // 2)
        self.assert_sockhash_empty()

    def test_1_a_reset_reaches_a_spliced_peer_that_stopped_reading(self):
        """A spliced pair whose receiver stops reading: the sender's bytes fill what the
        splice may hold, fall back through the proxy (splice_behind) and stall there; the
        sender then resets, and the receiver, which neither reads nor writes, still learns of
        it within seconds. Client to server, and server to client."""
        for server_role in ("sink", "flood"):
            with self.subTest(server=server_role):
                out = self.lab.client("shop/client", "stall", self.server_ip, "11211", server_role,
                                      timeout=90).stdout
                server_says = read_line(self.stall, 40)
                sender, receiver = (out, server_says) if server_role == "sink" else (server_says, out)
                print(f"\n  spliced, stalled, then reset ({server_role} server): sender {sender.strip()!r}, "
                      f"receiver {receiver.strip()!r}", file=sys.stderr)
                self.assertRegex(sender, r"^reset sent n=[1-9]")
                self.assertRegex(receiver, r"^end how=reset n=\d+ s=\d")
                self.assertLess(float(receiver.split("s=")[1]), 15, receiver)
        self.assert_sockhash_empty()

    def test_2_agent_upgrade_hands_over_a_live_pair(self):
        p = self.hold(6)
        time.sleep(1.0)  # a few exchanges before
        self.lab.lab("agent", "upgrade", "node1")
        rc, out = self.ended(p)
        self.assertEqual(rc, 0, out)
        self.assertIn("ok n=", out)
        self.assert_sockhash_empty()
        # The new agent's record counts every byte, those spliced before the
        # upgrade included (the new agent leaves the old one's splice maps to it).
        n = int(out.split("ok n=")[1].split()[0])
        sent = sum(len(f"hold {k}\n") for k in range(n))
        dst = f"{self.server_ip}:6379"
        rec = wait_for("the adopted connection's closed record", lambda: [
            c for c in self.lab.connections("node1")
            if c["destination"] == dst and c["direction"] == "outbound" and c["state"] == "closed"
            and c.get("adopted")])[-1]
        self.assertEqual((rec["bytes_sent"], rec["bytes_received"]), (sent, sent), rec)

    def test_3_agent_restart_resets_a_live_pair(self):
        p = self.hold(60)
        time.sleep(0.5)
        started = time.monotonic()
        self.lab.lab("agent", "restart", "node1")
        # The stopping agent resets its connections: the app learns at its next exchange
        # (a reset or EOF), not after its 10 s socket timeout.
        rc, out = self.ended(p)
        print(f"\n  restart: the live pair ended {time.monotonic() - started:.2f}s after the stop began",
              file=sys.stderr)
        self.assertNotEqual(rc, 0, out)
        self.assertNotIn("timed out", out)
        self.assertTrue("broken after" in out or "ConnectionResetError" in out or "BrokenPipe" in out, out)
        self.assert_sockhash_empty()
        # The new agent carries new connections through the sockhash again.
        p = self.lab.client("shop/client", "say", self.server_ip, "6379", "again")
        self.assertEqual(p.stdout.strip(), "again")

    def test_4_server_pod_deleted_mid_connection(self):
        p = self.hold(60)
        time.sleep(0.5)
        started = time.monotonic()
        self.lab.lab("pod", "del", "shop", "server")
        rc, out = self.ended(p)
        print(f"\n  pod deleted: the client's connection ended {time.monotonic() - started:.2f}s after "
              f"the delete began", file=sys.stderr)
        self.assertNotEqual(rc, 0, out)
        self.assertNotIn("timed out", out)
        self.assertTrue("broken after" in out or "ConnectionResetError" in out or "BrokenPipe" in out, out)
        self.assert_sockhash_empty()

    def test_1_sluicectl_resets_a_spliced_pair(self):
        before = self.counter("sluice_proxy_spliced_total")
        p = self.hold(60, port=5432)
        wait_for("the pair spliced", lambda: self.splice_entries() == 2)
        self.assertEqual(self.counter("sluice_proxy_spliced_total") - before, 1)
        rec = wait_for("the open record", lambda: self.open_record(5432))[0]
        started = time.monotonic()
        r = self.lab.ctl_run("node1", "connections", "reset", str(rec["id"]))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), f"connection {rec['id']} reset")
        # Both apps learn at once: the client at its next exchange (0.2 s), the server's read.
        rc, out = self.ended(p)
        ended = read_line(self.watch, 10)
        print(f"\n  sluicectl reset: the client's connection ended {time.monotonic() - started:.2f}s later; "
              f"server: {ended.strip()!r}", file=sys.stderr)
        self.assertNotEqual(rc, 0, out)
        self.assertNotIn("timed out", out)
        self.assertTrue("broken after" in out or "ConnectionResetError" in out or "BrokenPipe" in out, out)
        self.assertRegex(ended, r"^end how=(reset|eof) n=[1-9]")
        self.assert_sockhash_empty()
        closed = [c for c in self.lab.connections("node1") if c["id"] == rec["id"]][0]
        self.assertEqual(closed["state"], "closed")
        self.assertEqual(closed["reason"], "reset: by an operator (admin API)")
        self.assertGreater(closed["bytes_sent"], 0)
        # The same id again, and one never seen: a clear error, exit 1.
        again = self.lab.ctl_run("node1", "connections", "reset", str(rec["id"]))
        self.assertEqual(again.returncode, 1)
        self.assertIn(f"connection {rec['id']} is already closed (reset: by an operator", again.stderr)
        unknown = self.lab.ctl_run("node1", "connections", "reset", "987654321")
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("no open connection with id 987654321", unknown.stderr)
        bad = self.lab.ctl_run("node1", "connections", "reset", "x1")
        self.assertEqual(bad.returncode, 2)
        self.assertIn("invalid connection id 'x1'", bad.stderr)
        # A browser-like GET of the action does nothing.
        get = self.lab.lab("node", "exec", "node1", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "http://127.0.0.1:15000/connections/reset?id=1", check=False)
        self.assertEqual(get.stdout.strip(), "405")

    def test_1_live_bytes_of_a_spliced_pair(self):
        """While a long transfer runs spliced, its open record and the TCP byte metrics grow far
        beyond what the proxy wrote before the switch (read at each query, not at the close)."""
        def received_total():
            return sum(v for n, _, v in self.metrics() if n == "istio_tcp_received_bytes_total")
        metric_before = received_total()
        up = 3 << 30  # long enough to sample while open
        p = subprocess.Popen([sys.executable, LAB, "exec", "shop/client", "--", sys.executable, APP, "transfer",
                              self.server_ip, "3306", str(up), "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=self.lab.env)
        self.lab.procs.append(p)
        try:
            wait_for("the pair spliced", lambda: self.splice_entries() == 2, timeout=30)
            # What the proxy wrote up (client -> server) before the switch: its splice entry.
            forwarded = max(e["formatted"]["value"]["forwarded"] for e in self.splice_map())
            samples = []
            while len(samples) < 3:
                time.sleep(0.5)
                recs = self.open_record(3306)
                if not recs:
                    break
                samples.append((recs[0]["bytes_sent"], received_total() - metric_before))
            print(f"\n  live spliced bytes: proxy forwarded {forwarded} before the switch; open record "
                  f"(sent, metric) samples {samples}", file=sys.stderr)
            self.assertGreaterEqual(len(samples), 2, "the transfer ended before two samples")
            self.assertGreater(samples[-1][0], samples[0][0])  # the record grows while open
            self.assertGreater(samples[-1][0], forwarded + (64 << 20))
            self.assertGreater(samples[-1][1], forwarded + (64 << 20))  # so do the metrics
        finally:
            out, _ = p.communicate(timeout=300)
        self.assertIn("down_ok=True up_ok=True", out)
        self.assert_sockhash_empty()
