#!/usr/bin/env python3
"""deploy/dashboards/ without a cluster: the Grafana dashboards are well formed and
every PromQL expression in them parses (promtool check rules), the Prometheus
scrape job is a valid configuration (promtool check config), and the agent's
manifest carries what the scrape job and the PodMonitor select on.
tests/e2e/test_dashboards.py proves the expressions return data against the lab.

Usage: dashboards_test.py [--repo DIR]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "support"))
import dashboards  # noqa: E402

DIR = os.path.join(REPO, "deploy", "dashboards")
# Any value parses: each variable's own regex matcher gets one.
EXAMPLE = {"namespace": "shop", "workload": "web", "instance": ".*", "datasource": "prom"}


def promtool():
    path = shutil.which("promtool")
    if not path:
        raise AssertionError("promtool is not installed: run `bash tools/deps.sh` (Debian's prometheus)")
    return path


class DashboardsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.boards = dashboards.load(REPO)
        cls.tmp = tempfile.mkdtemp(prefix="sluice-dash-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_three_dashboards_with_unique_uids_and_a_datasource_variable(self):
        self.assertEqual(sorted(self.boards), ["sluice-agent.json", "sluice-mesh.json", "sluice-workload.json"])
        uids = [b["uid"] for b in self.boards.values()]
        self.assertEqual(len(set(uids)), len(uids))
        for name, b in self.boards.items():
            with self.subTest(dashboard=name):
                self.assertIn("datasource", [v["name"] for v in dashboards.variables(b)])
                ids = [p["id"] for p in dashboards.panels(b)]
                self.assertEqual(len(set(ids)), len(ids), "panel ids are unique")
                for p in dashboards.panels(b):
                    self.assertIn("gridPos", p)
                    for t in p.get("targets", []):
                        self.assertEqual(t["datasource"]["uid"], "${datasource}", p["title"])
                        self.assertTrue(t["expr"].strip(), p["title"])

    def test_http_golden_tcp_and_agent_panels_are_there(self):
        exprs = {name: " ".join(e for _, e in dashboards.expressions(b)) for name, b in self.boards.items()}
        for name in ("sluice-mesh.json", "sluice-workload.json"):
            with self.subTest(dashboard=name):
                text = exprs[name]
                self.assertIn("istio_requests_total", text)
                self.assertIn("response_code", text)
                self.assertIn('response_code!~"0|5.."', text)  # success rate
                for q in ("0.5", "0.95", "0.99"):
                    self.assertIn(f"histogram_quantile({q}, sum by (le", text)
                self.assertIn("istio_request_duration_milliseconds_bucket", text)
                for m in ("istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total",
                          "istio_tcp_connections_opened_total"):
                    self.assertIn(m, text)
        for m in ("sluice_build_info", "process_resident_memory_bytes", "process_cpu_seconds_total",
                  "process_open_fds", "process_start_time_seconds", "sluice_bpf_connect_redirected_total",
                  "sluice_bpf_map_entries", "sluice_controlplane_connected",
                  "sluice_certificate_expiration_timestamp_seconds", "sluice_pods_enrolled"):
            self.assertIn(m, exprs["sluice-agent.json"])

    def test_every_expression_uses_only_defined_variables_and_parses(self):
        rules = []
        for name, b in self.boards.items():
            defined = {v["name"]: EXAMPLE[v["name"]] for v in dashboards.variables(b)}
            for title, expr in dashboards.expressions(b):
                rules.append((f"{name}: {title}", dashboards.substitute(expr, defined)))
            for v in dashboards.variables(b):
                if v.get("type") == "query":
                    q = dashboards.variable_promql(dashboards.variable_query(v))
                    self.assertIsNotNone(q, f"{name}: variable {v['name']} is not label_values(...)")
                    rules.append((f"{name}: variable {v['name']}", dashboards.substitute(q, defined)))
        self.assertGreater(len(rules), 50)
        path = os.path.join(self.tmp, "rules.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboards", "rules": [
                {"record": f"dashboard:expr{i}", "expr": e, "labels": {"panel": t}}
                for i, (t, e) in enumerate(rules)]}]}, f)
        p = subprocess.run([promtool(), "check", "rules", path], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, f"promtool check rules:\n{p.stdout}{p.stderr}")
        self.assertIn(f"{len(rules)} rules found", p.stdout)
        # And the check can fail: one broken expression among them is refused.
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "d", "rules": [
                {"record": "dashboard:broken", "expr": 'sum(rate(istio_requests_total{reporter="x"}[1m])'}]}]}, f)
        p = subprocess.run([promtool(), "check", "rules", path], capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)

    def test_scrape_config_is_valid_prometheus_configuration(self):
        with open(os.path.join(DIR, "prometheus-scrape.yaml")) as f:
            scrape = yaml.safe_load(f)
        job = scrape["scrape_configs"][0]
        self.assertEqual(job["job_name"], "sluice-agents")
        self.assertEqual(job["kubernetes_sd_configs"], [{"role": "pod", "namespaces": {"names": ["sluice-system"]}}])
        # Debian's Prometheus is built without Kubernetes discovery (its promtool
        # rejects kubernetes_sd_configs): the rest of the job, relabelling
        # included, is checked with a static target in its place.
        job = dict(job)
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": ["10.0.0.1:15020"]}]
        path = os.path.join(self.tmp, "prometheus.yml")
        with open(path, "w") as f:
            yaml.safe_dump({"global": {"scrape_interval": "15s"}, "scrape_configs": [job]}, f)
        p = subprocess.run([promtool(), "check", "config", path], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, f"promtool check config:\n{p.stdout}{p.stderr}")

    def test_agent_manifest_carries_the_annotations_and_port_the_scrapers_select(self):
        with open(os.path.join(REPO, "deploy", "agent.yaml")) as f:
            ds = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "DaemonSet")
        meta = ds["spec"]["template"]["metadata"]
        self.assertEqual(meta["annotations"]["prometheus.io/scrape"], "true")
        self.assertEqual(meta["annotations"]["prometheus.io/port"], "15020")
        self.assertEqual(meta["annotations"]["prometheus.io/path"], "/metrics")
        agent = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
        # No declared port: on the host network it would be a host port and keep the
        # surge pod of a rolling update (maxSurge) off the node.
        self.assertNotIn("ports", agent)
        with open(os.path.join(DIR, "podmonitor.yaml")) as f:
            pm = yaml.safe_load(f)
        self.assertEqual(pm["kind"], "PodMonitor")
        for k, v in pm["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(meta["labels"].get(k), v)
        endpoint = pm["spec"]["podMetricsEndpoints"][0]
        self.assertNotIn("port", endpoint)
        relabel = {r["sourceLabels"][0]: r for r in endpoint["relabelings"]}
        self.assertEqual(relabel["__meta_kubernetes_pod_container_name"]["regex"], "agent")
        self.assertEqual(relabel["__meta_kubernetes_pod_ip"]["replacement"], "$1:15020")
        with open(os.path.join(DIR, "prometheus-scrape.yaml")) as f:
            job = yaml.safe_load(f)["scrape_configs"][0]
        keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        self.assertIn("__meta_kubernetes_pod_label_app_kubernetes_io_name", keep[1]["source_labels"])
        self.assertEqual(keep[1]["regex"], meta["labels"]["app.kubernetes.io/name"])


if __name__ == "__main__":
    if "--repo" in sys.argv:
        i = sys.argv.index("--repo")
        REPO = os.path.abspath(sys.argv[i + 1])
        DIR = os.path.join(REPO, "deploy", "dashboards")
        del sys.argv[i:i + 2]
    unittest.main(verbosity=2)
