"""End to end: workload identity and mutual TLS (HBONE) between two lab nodes.

node1: shop/client (sa web, meshed), legacy/tester (not meshed)
node2: shop/server (sa api, meshed), shop/other (sa other, meshed)
Certificates live two minutes, so renewals happen while the tests run.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from labkit import BRIDGE, CLIENT_HOP, HUB_NETNS, LAB, LAB_DIR, SERVER_HOP, LabTest, SockmapOn, metric_sum, parse_metrics, promtool_check_metrics, read_line, run, start_app, tcp_payloads, wait_for, REPO

MESH = "sluice.dev/mesh"
H2APP = os.path.join(REPO, "tests", "e2e", "apps", "h2connect.py")
SYS_PY = "/usr/bin/python3"  # Debian's, with python3-h2
CERT_TTL = 120
MARKER = "SLUICE-PLAINTEXT-MARKER-7f3a9c"
TD = "spiffe://cluster.local/ns/shop/sa"


def server_hello_version(payload):
    """The negotiated version in a ServerHello record (supported_versions, else legacy)."""
    if len(payload) < 6 or payload[0] != 0x16 or payload[5] != 0x02:
        return None
    hs = payload[5:]
    p = 4 + 2 + 32  # type+len, legacy_version, random
    sid_len = hs[p]
    p += 1 + sid_len + 2 + 1  # session id, cipher suite, compression
    ext_end = p + 2 + struct.unpack("!H", hs[p:p + 2])[0]
    p += 2
    version = struct.unpack("!H", hs[4:6])[0]
    while p + 4 <= ext_end:
        etype, elen = struct.unpack("!HH", hs[p:p + 4])
        if etype == 0x002B:
            version = struct.unpack("!H", hs[p + 4:p + 6])[0]
        p += 4 + elen
    return version


class MtlsTest(LabTest):
    NODES = 2

    @classmethod
    def setUpClass(cls):
        os.environ["SLUICE_CERT_TTL"] = str(CERT_TTL)
        try:
            super().setUpClass()
        finally:
            del os.environ["SLUICE_CERT_TTL"]

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        cls.client_ip = lab.pod("shop", "client", node="node1", sa="web")
        cls.tester_ip = lab.pod("legacy", "tester", node="node1", sa="tester")
        cls.server_ip = lab.pod("shop", "server", node="node2", sa="api")
        cls.other_ip = lab.pod("shop", "other", node="node2", sa="other")
        for node, pod in (("node1", "shop/client"), ("node2", "shop/server"), ("node2", "shop/other")):
            wait_for(f"{pod} enrolled", lambda node=node, pod=pod: lab.enrolled(node, pod))
        for node, sa in (("node1", "web"), ("node2", "api"), ("node2", "other")):
            wait_for(f"certificate of {sa}", lambda node=node, sa=sa: lab.cert(node, f"{TD}/{sa}")["state"] == "valid")
        lab.server("shop/server", "whoami", 8080)
        lab.server("shop/server", "echo", 8082)
        lab.server("shop/other", "echo", 8082)
        cls.tmp = tempfile.mkdtemp(prefix="sluice-mtls-")
        cls.anchor = os.path.join(LAB_DIR, "ca", "trust-anchor.pem")
        # A client certificate issued by the mesh CA (as the agent would get one).
        cls.mesh_cert = cls.issue("mesh", os.path.join(LAB_DIR, "ca", "ca.pem"),
                                  os.path.join(LAB_DIR, "ca", "ca-key.pem"),
                                  "spiffe://cluster.local/ns/legacy/sa/tester")
        # And one from a CA the mesh does not trust, with a plausible identity.
        evil_key = os.path.join(cls.tmp, "evil-ca-key.pem")
        evil_ca = os.path.join(cls.tmp, "evil-ca.pem")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", evil_key, "-out", evil_ca, "-days", "1", "-subj", "/O=not-the-mesh",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
        cls.evil_cert = cls.issue("evil", evil_ca, evil_key, "spiffe://cluster.local/ns/shop/sa/web")

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        if getattr(cls, "tmp", None):
            subprocess.run(["rm", "-rf", cls.tmp])

    @classmethod
    def issue(cls, name, ca, ca_key, uri):
        key = os.path.join(cls.tmp, f"{name}-key.pem")
        csr = os.path.join(cls.tmp, f"{name}.csr")
        leaf = os.path.join(cls.tmp, f"{name}-leaf.pem")
        ext = os.path.join(cls.tmp, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName=critical,URI:{uri}\nextendedKeyUsage=clientAuth,serverAuth\n"
                    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-subj", "/O=sluice-test", "-out", csr])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-days", "1",
             "-extfile", ext, "-out", leaf])
        chain = os.path.join(cls.tmp, f"{name}-chain.pem")
        with open(chain, "w") as f:
            f.write(open(leaf).read() + open(ca).read())
        return chain, key

    def h2(self, *args, timeout=120):
        out = self.lab.exec("legacy/tester", SYS_PY, H2APP, *args, timeout=timeout).stdout
        return json.loads(out.strip().splitlines()[-1])

    def hbone_stats(self, node):
        return self.lab.ctl(node, "stats")["hbone"]

    def test_a_cross_node_is_mutual_tls_and_server_sees_client_ip(self):
        # First test of the class: its tunnel is new, so the handshake is on the capture.
        pcap = os.path.join(self.tmp, "link.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", HUB_NETNS, "tcpdump", "-i", BRIDGE, "--immediate-mode",
                                 "-U", "-n", "-w", pcap, "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            self.assertIn("listening", dump.stderr.readline())
            out = self.lab.client("shop/client", "say", self.server_ip, "8082", MARKER).stdout
            self.assertEqual(out.strip(), MARKER)
            who = self.lab.client("shop/client", "get", self.server_ip, "8080").stdout
            self.assertIn(f"peer={self.client_ip}:", who)  # the app sees the client's pod IP
            self.assertIn(f"local={self.server_ip}:8080", who)
            time.sleep(0.5)  # let tcpdump write the last segments (-U: per packet)
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=10)
        segments = tcp_payloads(pcap)
        between = [s for s in segments if {s[0], s[2]} == {self.client_ip, self.server_ip}]
        self.assertTrue(between, "no traffic between the pods on the link")
        for src, sport, dst, dport, payload in between:
            self.assertIn(15008, (sport, dport), f"plaintext flow {src}:{sport} -> {dst}:{dport} on the link")
            self.assertNotIn(MARKER.encode(), payload)
        hellos = [server_hello_version(p) for src, sport, dst, dport, p in between if sport == 15008]
        hellos = [v for v in hellos if v is not None]
        self.assertTrue(hellos, "no ServerHello seen")
        self.assertEqual(set(hellos), {0x0304}, "only TLS 1.3")

        def inbound():
            return [c for c in self.lab.connections("node2")
                    if c["direction"] == "inbound" and c["destination"] == f"{self.server_ip}:8082"]
        rec = wait_for("inbound record on node2", inbound)[-1]
        self.assertEqual(rec["path"], "hbone")
        self.assertTrue(rec["mutual_tls"])
        self.assertEqual(rec["source_principal"], "spiffe://cluster.local/ns/shop/sa/web")
        self.assertEqual(rec["destination_principal"], "spiffe://cluster.local/ns/shop/sa/api")
        self.assertTrue(rec["source"].startswith(f"{self.client_ip}:"))
        out = [c for c in self.lab.connections("node1") if c["destination"] == f"{self.server_ip}:8082"][-1]
        self.assertEqual(out["path"], "hbone")
        self.assertEqual(out["destination_principal"], "spiffe://cluster.local/ns/shop/sa/api")

    def test_bulk_transfer_and_many_streams(self):
        self.lab.server("shop/server", "stream", 8081)
        out = self.lab.client("shop/client", "transfer", self.server_ip, "8081", str(64 << 20), str(64 << 20)).stdout
        self.assertIn("down_ok=True up_ok=True", out)
        out = self.lab.client("shop/client", "many", self.server_ip, "8082", "500").stdout
        self.assertIn("completed=500 of 500", out)

    def test_sluicectl_resets_a_cross_node_connection(self):
        """`sluicectl connections reset ID` on the client's node resets an HBONE stream (not
        spliced): both apps learn at once, the record says who reset it."""
        watch = self.lab.server("shop/server", "watch", 8084)
        p = start_app(self.lab, "shop/client", "hold", self.server_ip, "8084", "60")
        dst = f"{self.server_ip}:8084"
        rec = wait_for("the open record", lambda: [
            c for c in self.lab.connections("node1")
            if c["destination"] == dst and c["state"] == "open" and c["bytes_sent"] > 0])[0]
        self.assertEqual(rec["path"], "hbone")
        started = time.monotonic()
        r = self.lab.ctl_run("node1", "connections", "reset", str(rec["id"]))
        self.assertEqual(r.returncode, 0, r.stderr)
        out = p.stdout.read()
        p.wait(timeout=60)
        ended = read_line(watch, 10)
        print(f"\n  sluicectl reset (hbone): the client's connection ended "
              f"{time.monotonic() - started:.2f}s later; server: {ended.strip()!r}", file=sys.stderr)
        self.assertNotEqual(p.returncode, 0, out)
        self.assertNotIn("timed out", out)
        self.assertRegex(ended, r"^end how=(reset|eof) n=[1-9]")
        closed = wait_for("the closed record", lambda: [
            c for c in self.lab.connections("node1") if c["id"] == rec["id"] and c["state"] == "closed"])[0]
        self.assertEqual(closed["reason"], "reset: by an operator (admin API)")
        # An id the agent never had: exit 1, a clear error.
        unknown = self.lab.ctl_run("node1", "connections", "reset", "987654321")
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("no open connection with id 987654321", unknown.stderr)
        # A pod this node does not have (a typo): exit 1, not "reset 0 connections".
        typo = self.lab.ctl_run("node1", "connections", "reset", "--pod", "shop/no-such-pod")
        self.assertEqual(typo.returncode, 1, typo.stdout)
        self.assertIn("no enrolled pod shop/no-such-pod on this node", typo.stderr)

    def test_a_reset_reaches_a_peer_that_neither_reads_nor_writes(self):
        """One app floods the other, which stops reading, until nothing moves; then the
        sender resets. The proxies hold bytes the receiver does not take and post no receive
        on the sender's socket: they still find the reset within seconds (each worker's tick
        watches a stalled source) and pass it on. Client to server, and server to client."""
        srv = self.lab.server("shop/server", "stall", 8086)
        for server_role in ("sink", "flood"):
            with self.subTest(server=server_role):
                out = self.lab.client("shop/client", "stall", self.server_ip, "8086", server_role,
                                      timeout=90).stdout
                server_says = read_line(srv, 40)
                sender, receiver = (out, server_says) if server_role == "sink" else (server_says, out)
                print(f"\n  stalled, then reset ({server_role} server): sender {sender.strip()!r}, "
                      f"receiver {receiver.strip()!r}", file=sys.stderr)
                self.assertRegex(sender, r"^reset sent n=[1-9]")
                self.assertRegex(receiver, r"^end how=reset n=\d+ s=\d")
                waited = float(receiver.split("s=")[1])
                self.assertLess(waited, 15, receiver)

    def test_metrics_istio_tcp_labels_and_live_bytes_on_both_nodes(self):
        """Each agent serves Istio's TCP metrics on :15020 on the node's network: node1 reports
        the client's side (reporter=source), node2 the server's (reporter=destination), both as
        mutual TLS with full SPIFFE principals; byte counters count the app's bytes."""
        up, down = 300000, 700000
        self.lab.server("shop/server", "stream", 8083)
        series = dict(source_workload="client", source_workload_namespace="shop", source_principal=f"{TD}/web",
                      destination_workload="server", destination_workload_namespace="shop",
                      destination_principal=f"{TD}/api", request_protocol="tcp", response_flags="-",
                      connection_security_policy="mutual_tls")
        sides = (("node1", "source"), ("node2", "destination"))

        def totals():
            out = {}
            for node, reporter in sides:
                m = parse_metrics(self.lab.scrape(node)[1])
                out[node] = {n: metric_sum(m, f"istio_tcp_{n}_total", reporter=reporter, **series)
                             for n in ("connections_opened", "connections_closed", "received_bytes", "sent_bytes")}
            return out
        before = totals()
        out = self.lab.client("shop/client", "transfer", self.server_ip, "8083", str(up), str(down)).stdout
        self.assertIn("down_ok=True up_ok=True", out)
        # received = client -> server (the request direction), sent = server -> client; the app's
        # protocol adds a header line up and a checksum line down (under 200 bytes each).
        for node, _ in sides:
            def settled(node=node):
                d = {k: v - before[node][k] for k, v in totals()[node].items()}
                ok = (d["connections_opened"] >= 1 and d["connections_closed"] >= 1
                      and up <= d["received_bytes"] <= up + 200 and down <= d["sent_bytes"] <= down + 200)
                return d if ok else None
            wait_for(f"istio_tcp_* on {node} to count the transfer", settled, timeout=10)

        head, body = self.lab.scrape("node1")
        self.assertIn("Content-Type: text/plain; version=0.0.4", head)
        m = parse_metrics(body)
        self.assertGreater(metric_sum(m, "istio_tcp_connections_opened_total", reporter="source", **series), 0)
        self.assertEqual(metric_sum(m, "istio_tcp_connections_opened_total", reporter="destination",
                                    connection_security_policy="mutual_tls"), 0, "node1 only reports the client side")
        self.assertEqual(metric_sum(m, "sluice_build_info"), 1)
        self.assertGreaterEqual(metric_sum(m, "sluice_pods_enrolled"), 1)
        self.assertGreater(metric_sum(m, "process_resident_memory_bytes"), 0)
        self.assertGreater(metric_sum(m, "sluice_hbone_tunnels_opened_total"), 0)
        _, alias = self.lab.scrape("node2", "/stats/prometheus")
        m2 = parse_metrics(alias)
        self.assertGreater(metric_sum(m2, "istio_tcp_connections_opened_total", reporter="destination", **series), 0)
        self.assertGreater(metric_sum(m2, "istio_tcp_sent_bytes_total", reporter="destination", **series), 0)

        # promtool (Debian's prometheus package) accepts a real scrape.
        promtool = shutil.which("promtool")
        if not promtool:
            if os.environ.get("CI") == "true":
                self.fail("promtool not installed (tools/deps.sh installs prometheus)")
            self.skipTest("promtool not installed (tools/deps.sh installs prometheus)")
        self.assertEqual(promtool_check_metrics(promtool, body), [], "promtool check metrics")

    def test_untrusted_or_missing_client_certificate_is_refused(self):
        before = self.hbone_stats("node2")["handshake_failures"]
        r = self.h2("bad", self.server_ip, "15008", "nocert")
        self.assertIsNotNone(r["closed_after"])
        self.assertLess(r["closed_after"], 5)
        chain, key = self.evil_cert
        r = self.h2("bad", self.server_ip, "15008", "cert", chain, key, self.anchor)
        self.assertIsNotNone(r["closed_after"])
        self.assertLess(r["closed_after"], 5)
        wait_for("handshake failures counted", lambda: self.hbone_stats("node2")["handshake_failures"] >= before + 2)

    def test_interop_with_a_third_party_http2_stack(self):
        chain, key = self.mesh_cert
        r = self.h2("connect", self.server_ip, "15008", f"{self.server_ip}:8082", chain, key, self.anchor,
                    "through-python-h2")
        self.assertEqual((r["tls_version"], r["alpn"], r["status"]), ("TLSv1.3", "h2", "200"))
        self.assertEqual(r["echo"], "through-python-h2")
        rec = wait_for("record of the python client", lambda: [
            c for c in self.lab.connections("node2")
            if c["source_principal"] == "spiffe://cluster.local/ns/legacy/sa/tester"
            and c["destination"] == f"{self.server_ip}:8082"])
        self.assertTrue(rec[-1]["source"].startswith(f"{self.tester_ip}:"))
        self.assertTrue(rec[-1]["mutual_tls"])

    def test_bad_input_on_15008_is_closed_bounded_counted_and_harmless(self):
        holder = self.lab.spawn("shop/client", sys.executable, os.path.join(REPO, "tests", "e2e", "apps", "tcpapp.py"),
                                "hold", self.server_ip, "8082", "25")
        before = self.hbone_stats("node2")
        chain, key = self.mesh_cert
        r = self.h2("bad", self.server_ip, "15008", "random")
        self.assertIsNotNone(r["closed_after"])
        self.assertLess(r["closed_after"], 5)
        r = self.h2("bad", self.server_ip, "15008", "tls12")
        self.assertIn("handshake_error", r)
        r = self.h2("bad", self.server_ip, "15008", "stall")
        self.assertIsNotNone(r["closed_after"])
        self.assertLess(r["closed_after"], 15)  # handshake deadline: 10 s
        r = self.h2("bad", self.server_ip, "15008", "preface", chain, key, self.anchor)
        self.assertIsNotNone(r["closed_after"])
        self.assertLess(r["closed_after"], 15)  # no CONNECT within the deadline
        r = self.h2("bad", self.server_ip, "15008", "get", chain, key, self.anchor)
        self.assertIsNotNone(r["closed_after"])
        self.assertLess(r["closed_after"], 5)
        self.assertTrue(r["goaway"])
        r = self.h2("connect", self.server_ip, "15008", f"{self.other_ip}:8082", chain, key, self.anchor, "x")
        self.assertEqual(r["status"], "401")
        after = wait_for("counters", lambda: (lambda a: a if a["timeouts"] >= before["timeouts"] + 2 else None)(
            self.hbone_stats("node2")))
        self.assertGreaterEqual(after["handshake_failures"], before["handshake_failures"] + 2)  # random, tls12
        self.assertGreaterEqual(after["bad_requests"], before["bad_requests"] + 1)  # GET
        self.assertGreaterEqual(after["refused"], before["refused"] + 1)  # other pod's port
        # The mesh connection held open through all of it never missed a round trip.
        self.assertIn("ok n=", holder.stdout.read())
        self.assertEqual(holder.wait(timeout=60), 0)

    def test_zz_rotation_keeps_old_and_new_connections_working(self):
        serials = {self.lab.cert("node1", f"{TD}/web")["serial"]}
        holder = self.lab.spawn("shop/client", sys.executable, os.path.join(REPO, "tests", "e2e", "apps", "tcpapp.py"),
                                "hold", self.server_ip, "8082", str(4 * CERT_TTL // 2 - 20))
        failures, attempts = [], 0
        deadline = time.monotonic() + 4 * CERT_TTL // 2
        while time.monotonic() < deadline and len(serials) < 4:
            p = self.lab.client("shop/client", "say", self.server_ip, "8082", f"new-{attempts}", check=False)
            attempts += 1
            if p.stdout.strip() != f"new-{attempts - 1}":
                failures.append(p.stdout + p.stderr)
            serials.add(self.lab.cert("node1", f"{TD}/web")["serial"])
            time.sleep(1)
        self.assertGreaterEqual(len(serials), 4, f"fewer than three renewals seen: {serials}")
        self.assertEqual(failures, [], f"{len(failures)} of {attempts} new connections failed")
        self.assertIn("ok n=", holder.stdout.read())
        self.assertEqual(holder.wait(timeout=60), 0)


class MtlsSockmapTest(SockmapOn, MtlsTest):
    """Every mTLS scenario above again with --sockmap=on on both nodes (issue 11): the
    client pod's app <-> proxy hop on node1 and the server pod's proxy <-> app hop on
    node2 go through the sockhash; the tunnel between the nodes is TCP and TLS as before.
    Certificate rotation touches the tunnels, not the pod-local hops, and takes most of
    MtlsTest's time (about 200 s of waiting for renewals): it runs in MtlsTest only."""
    test_zz_rotation_keeps_old_and_new_connections_working = None

    def test_sockmap_mode_is_on_and_carries_the_bytes(self):
        self.assert_sockmap_on()
        self.lab.server("shop/server", "stream", 8085)  # 8084: the reset test's watch server
        # Each node redirects at least the stream its proxy writes to the app (node1 the
        # download to the client, node2 the upload to the server): the proxy writes once
        # both hop ends are in the sockhash. The apps' own sends are redirected too unless
        # their first write raced the handshake (msg_tcp), so they are not asserted.
        size = 4 << 20
        with self.assert_sockmap_moves({"node1": size, "node2": size},
                                       {"node1": CLIENT_HOP, "node2": SERVER_HOP}):
            out = self.lab.client("shop/client", "transfer", self.server_ip, "8085", str(size),
                                  str(size)).stdout
            self.assertIn("down_ok=True up_ok=True", out)

    def test_sockmap_bulk_sender_faster_than_the_tunnel_is_pushed_back(self):
        """iperf3 from the client pod (node1) to the server pod (node2): the app writes
        faster than its proxy encrypts, so its redirected hop's queue passes the 4 MiB bound,
        the app's sends move to loopback TCP (sockmap_behind_tcp) and TCP's window pushes
        back. Without the bound the queue grew to the host's tcp_mem pressure level (about
        1.5 GB) and iperf3 failed with ENOMEM, every TCP socket of the host short of memory."""
        self.assert_sockmap_on()
        server = subprocess.Popen([sys.executable, LAB, "exec", "shop/server", "--", "iperf3", "-s", "-1", "-p", "5203"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.lab.env)
        self.addCleanup(lambda: (server.kill(), server.wait()))
        behind_before = self.lab.ctl("node1", "stats")["bpf"]["sockmap_behind_tcp"]
        peak = [0]
        sampling = [True]

        def sample():  # the host's TCP memory (pages, global across netns), every 0.1 s
            while sampling[0]:
                with open("/proc/net/sockstat") as f:
                    for line in f:
                        if line.startswith("TCP:"):
                            fields = line.split()
                            peak[0] = max(peak[0], int(fields[fields.index("mem") + 1]))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            out = None
            for _ in range(50):  # the server listens shortly after it starts
                out = self.lab.exec("shop/client", "iperf3", "-c", self.server_ip, "-p", "5203",
                                    "-n", "2G", "-J", check=False, timeout=120)
                if "unable to connect" not in out.stdout:
                    break
                time.sleep(0.2)
        finally:
            sampling[0] = False
            sampler.join()
        result = json.loads(out.stdout)
        self.assertNotIn("error", result, result.get("error"))
        self.assertEqual(out.returncode, 0)
        self.assertGreaterEqual(result["end"]["sum_sent"]["bytes"], 2 << 30)
        peak_mib = peak[0] * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
        self.assertLess(peak_mib, 512, "the host's TCP memory grew as if unbounded")
        self.assertGreater(self.lab.ctl("node1", "stats")["bpf"]["sockmap_behind_tcp"], behind_before)


class MtlsDualStackTest(MtlsTest):
    """The same suite on a dual-stack lab (lab up --ip-family dual): pods have an IPv6
    address beside the IPv4 one the mesh carries, and nothing of this changes. Certificate
    rotation does not depend on the pods' addresses and takes most of MtlsTest's time
    (about 200 s of waiting for renewals): it runs in MtlsTest only."""
    IP_FAMILY = "dual"
    test_zz_rotation_keeps_old_and_new_connections_working = None


if __name__ == "__main__":
    unittest.main()
