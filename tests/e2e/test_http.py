"""End to end: HTTP golden metrics at the node (no sidecar, no waypoint).

node1: shop/client (sa web, meshed), shop/near (sa api, meshed), legacy/plain
(not meshed); node2: shop/server (sa api, meshed).
The server answers a known mix of 200 and 503 (tests/e2e/apps/httpapp.py);
both agents must count exactly what the client saw: reporter=source on node1
(the outbound side of the HBONE stream), reporter=destination on node2 (the
server side), and the TCP byte counters must equal the bytes the apps
exchanged. A server-first default port (6379) stays opaque.

Declared ports (shop/decl on node2, sa api, runs HTTP servers on 9090-9092
and 6379): 9090 is opaque by the pod's sluice.dev/opaque-ports annotation,
9091 by a Service's annotation, 9092 by a Service port's appProtocol tcp;
6379, a default opaque port, is inspected because a Service port says
appProtocol http. Connections go to the Service VIPs (the annotated pod's
port directly). Opaque ones count TCP bytes and no requests.
"""
import json
import os
import shutil
import tempfile
import unittest

from labkit import LabTest, metric_sum, parse_metrics, wait_for, REPO

MESH = "sluice.dev/mesh"
APP = os.path.join(REPO, "tests", "e2e", "apps", "httpapp.py")
SYS_PY = "/usr/bin/python3"  # Debian's, with python3-h2
TD = "spiffe://cluster.local/ns/shop/sa"
REPORTERS = (("node1", "source"), ("node2", "destination"))


class HttpTest(LabTest):
    NODES = 2

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        cls.server_ip = lab.meshed_pair("shop")
        lab.spawn("shop/server", SYS_PY, APP, "server", "8080")
        lab.spawn("shop/server", SYS_PY, APP, "h2server", "8081")
        lab.spawn("shop/server", SYS_PY, APP, "server", "6379")
        cls.decl_ip = lab.pod("shop", "decl", node="node2", sa="api", labels=["app=decl"],
                              annotations=["sluice.dev/opaque-ports=9090,7000-7010"])
        vip = lambda *args: lab.lab("svc", "add", "shop", *args).stdout.strip()
        cls.vips = {
            9091: vip("decl-annotated", "--selector", "app=decl", "--port", "9091",
                      "--annotation", "sluice.dev/opaque-ports=9091"),
            9092: vip("decl-tcp", "--selector", "app=decl", "--port", "9092/tcp"),
            6379: vip("decl-http", "--selector", "app=decl", "--port", "6379:6379/http"),
        }
        for port in (9090, 9091, 9092, 6379):
            lab.spawn("shop/decl", SYS_PY, APP, "server", str(port))
        wait_for("shop/decl enrolled", lambda: lab.enrolled("node2", "shop/decl"))
        cls.near_ip = lab.pod("shop", "near", node="node1", sa="api")
        lab.pod("legacy", "plain", node="node1", sa="default")
        wait_for("shop/near enrolled", lambda: lab.enrolled("node1", "shop/near"))
        # node1's view holds the three Services with their endpoint.
        def declared():
            dump = lab.config_dump("node1")
            return len([d for d in dump.get("opaque_ports", {}).get("declared", [])
                        if "service" in d and d["endpoints"] == [f"{cls.decl_ip}:{d['port']}"]]) == 3
        wait_for("node1's opaque ports", declared)

    def samples(self, node):
        return parse_metrics(self.lab.scrape(node)[1])

    def requests(self, node, reporter, code, protocol="http"):
        return metric_sum(self.samples(node), "istio_requests_total", reporter=reporter,
                          response_code=str(code), request_protocol=protocol,
                          source_principal=f"{TD}/web", destination_principal=f"{TD}/api")

    def tcp_bytes(self, node, reporter):
        s = self.samples(node)
        return (metric_sum(s, "istio_tcp_received_bytes_total", reporter=reporter),
                metric_sum(s, "istio_tcp_sent_bytes_total", reporter=reporter))

    def client(self, *args):
        out = self.lab.exec("shop/client", SYS_PY, APP, *args).stdout
        return json.loads(out.strip().splitlines()[-1])

    def before(self):
        return {(node, rep, code): self.requests(node, rep, code)
                for node, rep in REPORTERS for code in (200, 503)}, \
               {(node, rep): self.tcp_bytes(node, rep) for node, rep in REPORTERS}

    def test_http1_keepalive_codes_and_bytes_on_both_reporters(self):
        reqs, tcp = self.before()
        seen = self.client("client", self.server_ip, "8080", "3", "4", "2")
        self.assertEqual(seen["codes"], {"200": 12, "503": 6})
        for node, rep in REPORTERS:
            for code in (200, 503):
                want = reqs[(node, rep, code)] + seen["codes"][str(code)]
                wait_for(f"{rep} requests {code} on {node} == {want}",
                         lambda node=node, rep=rep, code=code, want=want:
                         self.requests(node, rep, code) == want)
            # Request direction = received, response direction = sent (Istio's naming).
            want = (tcp[(node, rep)][0] + seen["sent"], tcp[(node, rep)][1] + seen["received"])
            wait_for(f"{rep} TCP bytes on {node} == {want}",
                     lambda node=node, rep=rep, want=want: self.tcp_bytes(node, rep) == want)
        # The histograms count the same requests; the response bodies are known.
        s = self.samples("node1")
        count = metric_sum(s, "istio_request_duration_milliseconds_count", reporter="source",
                           response_code="503")
        self.assertEqual(count, reqs[("node1", "source", 503)] + 6)
        inf = metric_sum(s, "istio_request_duration_milliseconds_bucket", reporter="source",
                         response_code="503", le="+Inf")
        self.assertEqual(inf, count)
        self.assertGreaterEqual(metric_sum(s, "istio_response_bytes_sum", reporter="source",
                                           response_code="503"), 6 * len("unavailable\n"))

    def test_unusual_endings_are_counted_on_both_reporters(self):
        """A 304 with a Content-Length (RFC 9110 allows it) has no body, and what follows it on
        the connection is counted; a response cut short keeps its status; a request the server
        resets without an answer is status 0 at both ends (the destination's too)."""
        codes = ("0", "200", "304", "503")
        before = {(node, rep, c): self.requests(node, rep, c) for node, rep in REPORTERS for c in codes}
        runs = (("/notmod", "/ok", "/fail"), ("/cut",), ("/reset",))
        for paths in runs:
            out = self.lab.exec("shop/client", SYS_PY, APP, "raw", self.server_ip, "8080", *paths).stdout
            r = json.loads(out.strip().splitlines()[-1])
            self.assertEqual(r["error"], "ConnectionResetError" if paths == ("/reset",) else None, (paths, r))
        want = {"0": 1, "200": 2, "304": 1, "503": 1}
        for node, rep in REPORTERS:
            for c in codes:
                n = before[(node, rep, c)] + want[c]
                wait_for(f"{rep} requests {c} on {node} == {n}",
                         lambda node=node, rep=rep, c=c, n=n: self.requests(node, rep, c) == n)

    def test_a_denied_request_has_no_response_and_response_flags_deny(self):
        """A request that rode with a CONNECT the destination refused (an AuthorizationPolicy
        DENY on its port) is counted at the source as response_code 0 with the connection's
        flag, DENY, as its TCP series; the destination counts no request."""
        self.lab.spawn("shop/server", SYS_PY, APP, "server", "8082")
        tmp = tempfile.mkdtemp(prefix="sluice-http-")
        self.addCleanup(shutil.rmtree, tmp, True)
        deny = os.path.join(tmp, "deny-8082.yaml")
        with open(deny, "w") as f:
            f.write("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                    "metadata: {name: deny-8082, namespace: shop}\n"
                    "spec:\n  action: DENY\n  rules:\n  - to: [{operation: {ports: [\"8082\"]}}]\n")
        denied = lambda: metric_sum(self.samples("node1"), "istio_requests_total", reporter="source",
                                    response_code="0", response_flags="DENY")
        at_server = lambda: metric_sum(self.samples("node2"), "istio_requests_total",
                                       reporter="destination", response_code="0")
        before, server_before = denied(), at_server()
        self.lab.lab("apply", deny)
        try:
            wait_for("deny-8082 in force on node2", lambda: any(
                p["name"] == "deny-8082" for p in self.lab.ctl("node2", "policies")["authorization_policies"]))
            out = self.lab.exec("shop/client", SYS_PY, APP, "raw", self.server_ip, "8082", "/ok").stdout
            self.assertEqual(json.loads(out.strip().splitlines()[-1])["received"], 0, out)
            wait_for(f"a denied request on node1 ({before + 1})", lambda: denied() == before + 1)
            self.assertEqual(at_server(), server_before)
        finally:
            self.lab.lab("delete", deny)

    def test_a_request_whose_app_connect_fails_is_counted_on_every_path(self):
        """Nothing listens on the port: the agent that connects to the app fails and resets the
        client. The request the client had sent by then (it writes once its connect returned)
        is counted at each reporter of its path, response_code 0 with the connection's flag,
        CONNECT: HBONE (source on node1, destination on node2), the same-node handoff (both
        on node1), plaintext to 15006 (destination on node2). A refused local connect can fail
        before the request has arrived, even before the client's connect() returned (then
        there is nothing to count), so each path gets up to 10 tries, stops at the first
        counted at every reporter, and never counts more than were sent."""
        closed, tries = "8099", 10
        cases = (  # client, destination, the (node, reporter) that count it
            ("shop/client", self.server_ip, "server", (("node1", "source"), ("node2", "destination"))),
            ("shop/client", self.near_ip, "near", (("node1", "source"), ("node1", "destination"))),
            ("legacy/plain", self.server_ip, "server", (("node2", "destination"),)),
        )

        def failed(node, reporter, src, dst):
            return metric_sum(self.samples(node), "istio_requests_total", reporter=reporter,
                              source_workload=src, destination_workload=dst, response_code="0",
                              response_flags="CONNECT")

        for client, ip, dst, where in cases:
            with self.subTest(client=client, destination=dst):
                src = client.split("/")[1]
                before = {w: failed(*w, src, dst) for w in where}
                counted = lambda src=src, dst=dst, before=before: all(
                    failed(*w, src, dst) > before[w] for w in where)
                sent = 0
                for _ in range(tries):
                    out = self.lab.exec(client, SYS_PY, APP, "raw", ip, closed, "/ok").stdout
                    self.assertEqual(json.loads(out.strip().splitlines()[-1])["received"], 0, out)
                    sent += 1
                    try:
                        wait_for("this try counted", counted, timeout=3)
                        break
                    except AssertionError:
                        continue  # reset before the request went out: nothing to count
                for node, reporter in where:
                    wait_for(f"{reporter} on {node} counts {client}'s requests to {dst}:{closed}",
                             lambda node=node, reporter=reporter:
                             failed(node, reporter, src, dst) > before[(node, reporter)])
                    self.assertLessEqual(failed(node, reporter, src, dst) - before[(node, reporter)], sent)

    def test_h2c_prior_knowledge(self):
        reqs, _ = self.before()
        seen = self.client("h2client", self.server_ip, "8081", "5", "3")
        self.assertEqual(seen["codes"], {"200": 5, "503": 3})
        for node, rep in REPORTERS:
            for code in (200, 503):
                want = reqs[(node, rep, code)] + seen["codes"][str(code)]
                wait_for(f"{rep} h2c requests {code} on {node} == {want}",
                         lambda node=node, rep=rep, code=code, want=want:
                         self.requests(node, rep, code) == want)

    def test_opaque_port_is_relayed_as_bytes(self):
        reqs, tcp = self.before()
        seen = self.client("client", self.server_ip, "6379", "1", "3", "0")
        self.assertEqual(seen["codes"], {"200": 3})
        for node, rep in REPORTERS:
            want = (tcp[(node, rep)][0] + seen["sent"], tcp[(node, rep)][1] + seen["received"])
            wait_for(f"{rep} TCP bytes on {node} == {want}",
                     lambda node=node, rep=rep, want=want: self.tcp_bytes(node, rep) == want)
            for code in (200, 503):
                self.assertEqual(self.requests(node, rep, code), reqs[(node, rep, code)])

    def declared(self, dst, port, inspected):
        """A request-response run to dst:port: TCP bytes counted on both reporters; requests
        counted (inspected) or not at all (opaque)."""
        reqs, tcp = self.before()
        decl = {(node, rep): metric_sum(self.samples(node), "istio_requests_total", reporter=rep,
                                        destination_workload="decl") for node, rep in REPORTERS}
        seen = self.client("client", dst, str(port), "1", "3", "0")
        self.assertEqual(seen["codes"], {"200": 3})
        for node, rep in REPORTERS:
            want = (tcp[(node, rep)][0] + seen["sent"], tcp[(node, rep)][1] + seen["received"])
            wait_for(f"{rep} TCP bytes on {node} == {want}",
                     lambda node=node, rep=rep, want=want: self.tcp_bytes(node, rep) == want)
            want = decl[(node, rep)] + (3 if inspected else 0)
            wait_for(f"{rep} requests to decl on {node} == {want}",
                     lambda node=node, rep=rep, want=want: metric_sum(
                         self.samples(node), "istio_requests_total", reporter=rep,
                         destination_workload="decl") == want)

    def test_pod_annotation_makes_a_port_opaque(self):
        self.declared(self.decl_ip, 9090, inspected=False)

    def test_service_annotation_makes_a_port_opaque(self):
        self.declared(self.vips[9091], 9091, inspected=False)

    def test_app_protocol_tcp_makes_a_port_opaque(self):
        self.declared(self.vips[9092], 9092, inspected=False)

    def test_app_protocol_http_inspects_a_default_opaque_port(self):
        self.declared(self.vips[6379], 6379, inspected=True)

    def test_config_dump_shows_the_opaque_ports(self):
        dump = self.lab.config_dump("node2")["opaque_ports"]
        self.assertIn(6379, dump["default"])
        pods = [d for d in dump["declared"] if d.get("pod") == "shop/decl"]
        self.assertEqual([(d["opaque_ports"], d["ips"]) for d in pods], [("9090,7000-7010", [self.decl_ip])])
        services = {d["service"]: (d["port"], d["opaque"], d["from"]) for d in dump["declared"] if "service" in d}
        self.assertEqual(services, {"shop/decl-annotated": (9091, True, "annotation"),
                                    "shop/decl-tcp": (9092, True, "appProtocol tcp"),
                                    "shop/decl-http": (6379, False, "appProtocol http")})


if __name__ == "__main__":
    unittest.main()
