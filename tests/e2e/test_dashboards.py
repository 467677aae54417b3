"""End to end: the Grafana dashboards (deploy/dashboards/) against the real thing.

Debian's Prometheus runs in the lab's hub namespace, where every agent's metrics
endpoint is reachable at its node's address (10.99.0.1N:15020), and scrapes them
every second. Meshed pods on two nodes exchange HTTP and TCP; then every PromQL
expression of every dashboard (and every query variable) is evaluated through
Prometheus's HTTP API and must return data.

node1: shop/client-7d9f8b6c5-x2x4z (Deployment "client": ReplicaSet owner + pod-template-hash),
       shop/db-q8m2p (DaemonSet "db"), shop/backup-28391040-zk2vh (CronJob "backup", from its Job)
node2: shop/web-0 (StatefulSet "web")
Traffic: client -> web (HTTP through Service web:80, a known share of 503s), web -> db (HTTP through
Service db:8080, TCP echo through db:5432), one refused connection client -> web-0:9999.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import labkit
from labkit import (LAB, APP, LabTest, REPO, metric_sum, parse_metrics, promtool_check_metrics, run, stop_process,
                    wait_for)

sys.path.insert(0, os.path.join(REPO, "tests", "support"))
import dashboards  # noqa: E402

MESH = "sluice.dev/mesh"
HTTPMIX = os.path.join(REPO, "tests", "e2e", "apps", "httpmix.py")
HUB_NETNS = f"/var/run/netns/{labkit.HUB_NETNS}"
PROM_ADDR = "127.0.0.1:9090"  # inside the hub namespace (the lab's own: nothing else listens)
TD = "spiffe://cluster.local/ns/shop/sa"
CLIENT = "client-7d9f8b6c5-x2x4z"
DB = "db-q8m2p"
BACKUP = "backup-28391040-zk2vh"
NODE2_AGENT = "10.99.0.12:15020"
HTTP_METRIC = re.compile(r"\bistio_(requests|request_duration_milliseconds|request_bytes|response_bytes)_")


def in_hub(*args, check=True, timeout=30):
    return run(["nsenter", f"--net={HUB_NETNS}", *args], check=check, timeout=timeout)


def has_data(result):
    """A query result with at least one finite value."""
    if result["resultType"] == "scalar":
        values = [result["result"][1]]
    else:
        values = [s["value"][1] for s in result["result"]]
    return any(math.isfinite(float(v)) for v in values)


class DashboardsTest(LabTest):
    NODES = 2
    prom = None
    prom_dir = None

    @classmethod
    def setUpClass(cls):
        try:
            super().setUpClass()
        except BaseException:
            cls.stop_prometheus()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.stop_prometheus()
        finally:
            super().tearDownClass()

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        cls.client_ip = lab.pod("shop", CLIENT, node="node1", sa="storefront", owner="ReplicaSet/client-7d9f8b6c5",
                                labels=("pod-template-hash=7d9f8b6c5", "app.kubernetes.io/name=storefront"))
        cls.db_ip = lab.pod("shop", DB, node="node1", sa="db", owner="DaemonSet/db",
                            labels=("app=db", "service.istio.io/canonical-revision=14"))
        cls.web_ip = lab.pod("shop", "web-0", node="node2", sa="web", owner="StatefulSet/web",
                             labels=("app=web", "version=v2"))
        cls.backup_ip = lab.pod("shop", BACKUP, node="node1", sa="backup", owner="Job/backup-28391040")
        cls.web_vip = lab.lab("svc", "add", "shop", "web", "--selector", "app=web", "--port", "80:8080",
                              "--port", "9000").stdout.strip()
        cls.db_vip = lab.lab("svc", "add", "shop", "db", "--selector", "app=db", "--port", "5432",
                             "--port", "8080").stdout.strip()
        for node, pod in (("node1", CLIENT), ("node1", DB), ("node1", BACKUP), ("node2", "web-0")):
            wait_for(f"shop/{pod} enrolled", lambda node=node, pod=pod: lab.enrolled(node, f"shop/{pod}"))
        lab.spawn("shop/web-0", sys.executable, HTTPMIX, "serve", "8080")
        lab.server("shop/web-0", "echo", 9000)
        lab.spawn(f"shop/{DB}", sys.executable, HTTPMIX, "serve", "8080")
        lab.server(f"shop/{DB}", "echo", 5432)
        cls.start_prometheus()
        # The load, until the lab goes down: HTTP client -> web -> db, and TCP web -> db.
        lab.spawn(f"shop/{CLIENT}", sys.executable, HTTPMIX, "load", cls.web_vip, "80")
        lab.spawn("shop/web-0", sys.executable, HTTPMIX, "load", cls.db_vip, "8080", "5")
        tcp = subprocess.Popen([sys.executable, LAB, "exec", "shop/web-0", "--", sys.executable, APP, "loop",
                                cls.db_vip, "5432", "1", "tcp-load", "50"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lab.procs.append(tcp)
        line = tcp.stdout.readline()
        if "ready" not in line:
            raise AssertionError(f"the TCP load did not start: {line}")
        # One request from the CronJob's pod.
        out = lab.exec(f"shop/{BACKUP}", sys.executable, HTTPMIX, "get", cls.web_vip, "80", "/").stdout
        if out.strip() != "200":
            raise AssertionError(f"backup -> web: {out}")
        # One failed connection: nothing listens on web-0:9999 (the failure panels).
        probe = json.loads(lab.client(f"shop/{CLIENT}", "probe", cls.web_ip, "9999").stdout)
        if probe["reply"]:
            raise AssertionError(f"something answers on web-0:9999: {probe}")

    # ------------------------------------------------------------------ Prometheus

    @classmethod
    def start_prometheus(cls):
        prometheus = shutil.which("prometheus")
        if not prometheus:
            raise AssertionError("prometheus is not installed: run `bash tools/deps.sh` (Debian's prometheus)")
        cls.prom_dir = tempfile.mkdtemp(prefix="sluice-prom-")
        targets = [f"10.99.0.{10 + i}:15020" for i in range(1, cls.NODES + 1)]
        config = os.path.join(cls.prom_dir, "prometheus.yml")
        with open(config, "w") as f:
            json.dump({"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                       "scrape_configs": [{"job_name": "sluice-agents",
                                           "static_configs": [{"targets": targets}]}]}, f)  # JSON is YAML
        cls.prom_log = open(os.path.join(cls.prom_dir, "prometheus.log"), "wb")
        cls.prom = subprocess.Popen(["nsenter", f"--net={HUB_NETNS}", prometheus, f"--config.file={config}",
                                     f"--storage.tsdb.path={os.path.join(cls.prom_dir, 'data')}",
                                     f"--web.listen-address={PROM_ADDR}", "--log.level=warn"],
                                    stdout=cls.prom_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

        def ready():
            if cls.prom.poll() is not None:
                raise AssertionError(f"prometheus exited ({cls.prom.returncode}): {cls.prom_log_tail()}")
            return in_hub("curl", "-sf", "-m", "2", f"http://{PROM_ADDR}/-/ready", check=False).returncode == 0
        wait_for("prometheus to be ready", ready, timeout=30)

        def targets_up():
            j = json.loads(in_hub("curl", "-sf", "-m", "5", f"http://{PROM_ADDR}/api/v1/targets").stdout)
            active = j["data"]["activeTargets"]
            return len(active) == len(targets) and all(t["health"] == "up" for t in active)
        wait_for("prometheus to scrape every agent", targets_up, timeout=30)

    @classmethod
    def prom_log_tail(cls):
        try:
            with open(os.path.join(cls.prom_dir, "prometheus.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    @classmethod
    def stop_prometheus(cls):
        if cls.prom is not None:
            stop_process(cls.prom)
            cls.prom = None
            cls.prom_log.close()
        if cls.prom_dir:
            shutil.rmtree(cls.prom_dir, ignore_errors=True)
            cls.prom_dir = None

    def query(self, expr):
        p = in_hub("curl", "-sS", "-m", "10", "-G", "--data-urlencode", f"query={expr}",
                   f"http://{PROM_ADDR}/api/v1/query", check=False)
        try:
            j = json.loads(p.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"prometheus answered {p.stdout!r} {p.stderr!r} to {expr}")
        self.assertEqual(j.get("status"), "success", f"{expr}: {j}")
        return j["data"]

    def value(self, expr):
        """The single value of an instant query (None without data)."""
        data = self.query(expr)["result"]
        return float(data[0]["value"][1]) if data else None

    # ------------------------------------------------------------------ tests

    def dashboard_expressions(self):
        """[(where, PromQL)] of every panel target and query variable, variables filled in:
        namespace shop, workload web (it serves HTTP and TCP and calls db over both), node2's agent."""
        values = {"datasource": "prometheus", "namespace": "shop", "workload": "web",
                  "instance": NODE2_AGENT.replace(".", "\\\\.")}
        exprs = []
        for name, board in dashboards.load(REPO).items():
            for title, expr in dashboards.expressions(board):
                exprs.append((f"{name} / {title}", dashboards.substitute(expr, values)))
            for v in dashboards.variables(board):
                if v.get("type") == "query":
                    q = dashboards.variable_promql(dashboards.variable_query(v))
                    exprs.append((f"{name} / variable ${v['name']}", dashboards.substitute(q, values)))
        return exprs

    def assert_all_return_data(self, exprs):
        missing = []

        def all_have_data():
            missing[:] = [(where, e) for where, e in exprs if not has_data(self.query(e))]
            return not missing
        try:
            wait_for("every dashboard expression to return data", all_have_data, timeout=90, interval=1)
        except AssertionError:
            self.fail(f"{len(missing)} of {len(exprs)} expressions return no data:\n" +
                      "\n".join(f"  {where}: {e}" for where, e in missing))

    def test_every_tcp_and_agent_expression_returns_data(self):
        exprs = [(w, e) for w, e in self.dashboard_expressions() if not HTTP_METRIC.search(e)]
        self.assertGreater(len(exprs), 40)
        self.assert_all_return_data(exprs)

    def test_every_http_expression_returns_data(self):
        """The HTTP golden panels: istio_requests_total by response_code, success rate, duration
        quantiles, sizes, on both reporters."""
        exprs = [(w, e) for w, e in self.dashboard_expressions() if HTTP_METRIC.search(e)]
        self.assertGreater(len(exprs), 20)
        self.assert_all_return_data(exprs)

    def test_workloads_services_and_security_as_istio_names_them(self):
        """The labels Prometheus stores: workloads from the pods' controllers (Deployment from a
        ReplicaSet, StatefulSet, DaemonSet, CronJob from a Job), canonical names from the labels, the
        Service on both reporters (guessed from the target port on the server side), mutual TLS."""
        def series(**labels):
            sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
            return f"sum(istio_tcp_connections_opened_total{{{sel}}})"
        client_to_web = dict(source_workload="client", source_canonical_service="storefront",
                             source_canonical_revision="latest", source_app="storefront",
                             source_principal=f"{TD}/storefront", destination_workload="web",
                             destination_canonical_service="web", destination_canonical_revision="v2",
                             destination_version="v2", destination_principal=f"{TD}/web",
                             destination_service="web.shop.svc.cluster.local", destination_service_name="web",
                             destination_service_namespace="shop", connection_security_policy="mutual_tls",
                             response_flags="-", request_protocol="tcp")
        for reporter in ("source", "destination"):
            wait_for(f"client -> web reported by the {reporter}",
                     lambda r=reporter: (self.value(series(reporter=r, **client_to_web)) or 0) > 0, timeout=30)
        web_to_db = dict(source_workload="web", destination_workload="db", destination_canonical_revision="14",
                         destination_service="db.shop.svc.cluster.local", connection_security_policy="mutual_tls")
        for reporter in ("source", "destination"):
            wait_for(f"web -> db reported by the {reporter}",
                     lambda r=reporter: (self.value(series(reporter=r, **web_to_db)) or 0) > 0, timeout=30)
        wait_for("the CronJob's pod named after the CronJob",
                 lambda: (self.value(series(reporter="destination", source_workload="backup",
                                            destination_workload="web")) or 0) > 0, timeout=30)
        # The refused connection to web-0:9999: opened under "-", failed under CONNECT, on both sides.
        for reporter in ("source", "destination"):
            wait_for(f"the failed connection reported by the {reporter}",
                     lambda r=reporter: (self.value(
                         f'sum(istio_tcp_connections_failed_total{{reporter="{r}",source_workload="client",'
                         f'destination_workload="web",response_flags="CONNECT"}})') or 0) > 0, timeout=30)
        # No pod name leaks into a workload label.
        for label in ("source_workload", "destination_workload"):
            names = {s["metric"][label] for s in self.query(
                f"count by ({label}) (istio_tcp_connections_opened_total)")["result"]}
            self.assertLessEqual(names, {"client", "web", "db", "backup", "unknown"}, label)

    def test_tcp_bytes_advance_while_the_connection_is_open(self):
        """A connection held open (a round trip every 0.2 s) moves both byte counters on both
        nodes before it closes."""
        # From the CronJob's pod: its only other connection (one GET) is long closed, so the
        # series holds this connection alone.
        hold = subprocess.Popen([sys.executable, LAB, "exec", f"shop/{BACKUP}", "--", sys.executable, APP, "hold",
                                 self.web_vip, "9000", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        self.lab.procs.append(hold)
        self.assertIn("ready", hold.stdout.readline())
        want = dict(source_workload="backup", destination_workload="web", destination_service_name="web")
        for node, reporter in (("node1", "source"), ("node2", "destination")):
            def counts(node=node, reporter=reporter):
                m = parse_metrics(self.lab.scrape(node)[1])
                return {n: metric_sum(m, f"istio_tcp_{n}_total", reporter=reporter, **want)
                        for n in ("connections_opened", "connections_closed", "received_bytes", "sent_bytes")}
            first = wait_for(f"the held connection on {node}",
                             lambda: (lambda c: c if c["connections_opened"] - c["connections_closed"] == 1
                                      and c["received_bytes"] > 0 else None)(counts()), timeout=15)

            def advanced(first=first, counts=counts):
                c = counts()
                return c if (c["received_bytes"] > first["received_bytes"]
                             and c["sent_bytes"] > first["sent_bytes"]) else None
            later = wait_for(f"byte counters on {node} to advance", advanced, timeout=15)
            self.assertIsNone(hold.poll(), "the connection is still open")
            self.assertEqual(later["connections_closed"], first["connections_closed"])
        hold.kill()
        hold.wait()

    def test_agent_health_in_prometheus(self):
        for i, node in ((1, "node1"), (2, "node2")):
            inst = f'instance="10.99.0.{10 + i}:15020"'
            with self.subTest(node=node):
                wait_for(f"captured connects on {node}",
                         lambda: (self.value(f"sluice_bpf_connect_redirected_total{{{inst}}}") or 0) > 0, timeout=20)
                self.assertEqual(self.value(f"sluice_controlplane_connected{{{inst}}}"), 1)
                self.assertEqual(self.value(f"sluice_controlplane_synced{{{inst}}}"), 1)
                self.assertGreater(self.value(f"sluice_controlplane_view_version{{{inst}}}"), 0)
                enrolled = self.value(f"sluice_pods_enrolled{{{inst}}}")
                self.assertEqual(enrolled, 3 if node == "node1" else 1)
                # One enrolled-map entry per enrolled pod (netns cookie).
                self.assertEqual(self.value(f'sluice_bpf_map_entries{{{inst},map="sluice_enrolled_v1"}}'), enrolled)
                self.assertEqual(self.value(f'sluice_bpf_map_max_entries{{{inst},map="sluice_orig_dst_v1"}}'), 65536)
                self.assertGreater(self.value(f"process_start_time_seconds{{{inst}}}"), 1e9)
                self.assertGreater(self.value(f"process_open_fds{{{inst}}}"), 0)
        # Certificate expiry per identity, in the future, on the node that serves it.
        for node, sa in ((1, "storefront"), (1, "db"), (2, "web")):
            t = self.value(f'sluice_certificate_expiration_timestamp_seconds{{instance="10.99.0.{10 + node}:15020",'
                           f'identity="{TD}/{sa}"}}')
            self.assertIsNotNone(t, sa)
            self.assertGreater(t, time.time())

    def test_promtool_accepts_every_agents_scrape(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool is not installed: run `bash tools/deps.sh`")
        for node in ("node1", "node2"):
            _, body = self.lab.scrape(node)
            self.assertIn("sluice_bpf_map_entries", body)
            self.assertEqual(promtool_check_metrics(promtool, body), [], f"promtool check metrics on {node}")
