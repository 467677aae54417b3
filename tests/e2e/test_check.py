"""`sluicectl check` on a lab node: healthy, then each thing broken in turn
(CNI unchained, control plane stopped, agent stopped, a pinned link gone, a
certificate expired, a meshed pod the agent never enrolled) and the right ✘
with its hint, then healthy again."""
import json
import os
import time
import unittest

from labkit import LAB_DIR, PIN_ROOT, SLUICECTL, LabTest, wait_for

MESH = "sluice.dev/mesh"
CONFLIST = os.path.join(LAB_DIR, "node1", "net.d", "10-sluice-lab.conflist")
PIN_DIR = os.path.join(PIN_ROOT, "node1")


class CheckTest(LabTest):
    NODES = 1

    # Short-lived certificates, so that one can expire within the test.
    AGENT_ARGS = "--cert-ttl 60"

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        lab.pod("shop", "web", sa="web")
        wait_for("shop/web enrolled", lambda: lab.enrolled("node1", "shop/web"))
        cls.uri = "spiffe://cluster.local/ns/shop/sa/web"
        wait_for("the web certificate", lambda: lab.cert("node1", cls.uri)["state"] == "valid")

    def check(self, *args):
        """(exit status, {title: result}) of `sluicectl check -o json` on node1."""
        p = self.lab.lab("node", "exec", "node1", "--", SLUICECTL, "--bpf-pin-dir", PIN_DIR,
                         "--cni-conf-dir", os.path.dirname(CONFLIST),
                         "--cni-bin-dir", os.path.join(LAB_DIR, "cni-bin"), "-o", "json", "check",
                         *args, check=False)
        self.assertIn(p.returncode, (0, 1), p.stdout + p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(out["success"], p.returncode == 0)
        return p.returncode, {c["title"]: c for c in out["checks"]}

    def problems(self):
        rc, results = self.check()
        return rc, {t: r for t, r in results.items() if r["result"] != "ok"}

    def assertHealthy(self):
        self.assertEqual(self.problems(), (0, {}))

    def waitHealthy(self, timeout=60):
        """After a repair: retries and renewals settle."""
        wait_for("every check to pass", lambda: self.problems() == (0, {}), timeout=timeout,
                 interval=0.5)

    def assertFailed(self, title, detail_has, hint_has):
        rc, results = self.check()
        self.assertEqual(rc, 1)
        r = results[title]
        self.assertEqual(r["result"], "error", r)
        self.assertIn(detail_has, r["detail"])
        self.assertIn(hint_has, r["hint"])
        return results

    def test_1_a_healthy_node_passes_every_check(self):
        self.assertHealthy()
        # The table form: grouped lines and the closing status line.
        p = self.lab.lab("node", "exec", "node1", "--", SLUICECTL, "--cni-conf-dir",
                         os.path.dirname(CONFLIST), "--cni-bin-dir",
                         os.path.join(LAB_DIR, "cni-bin"), "check")
        self.assertIn("sluice-agent\n------------\n\u2714 the agent's admin API answers", p.stdout)
        self.assertIn("Status check results are \u2714", p.stdout)

    def test_2_pre_install_checks_probe_this_kernel(self):
        rc, results = self.check("--pre")
        self.assertEqual(rc, 0, results)
        for program in ("sluice_connect4", "sluice_sockops", "sluice_getsockopt",
                        "sluice_getpeername4", "sluice_getpeername6", "sluice_tc_inbound"):
            loads = [r for t, r in results.items() if t.startswith(program + " ")]
            self.assertEqual([r["result"] for r in loads], ["ok"], program)
        uring = results["io_uring works with the proxy's setup"]
        self.assertEqual(uring["result"], "ok", uring)  # a warning before 6.15: no NO_IOWAIT
        self.assertIn("NO_IOWAIT", json.dumps(uring))
        # The agent on the same kernel says the same in /config_dump.
        self.assertFalse(self.lab.config_dump("node1")["proxy"]["idle_wait_counts_as_iowait"])
        self.assertEqual(
            results["the primary CNI configuration is found and can chain sluice-cni"]["result"],
            "ok")

    def test_3_an_unchained_plugin_is_an_error_with_its_hint(self):
        with open(CONFLIST) as f:
            original = f.read()
        conf = json.loads(original)
        conf["plugins"] = [p for p in conf["plugins"] if p["type"] != "sluice-cni"]
        try:
            with open(CONFLIST, "w") as f:
                json.dump(conf, f)
            self.assertFailed("sluice-cni is chained in the CNI configuration",
                              "does not chain sluice-cni", "NOT meshed")
        finally:
            with open(CONFLIST, "w") as f:
                f.write(original)
        self.assertHealthy()

    def test_4_a_stopped_control_plane_is_an_error_with_its_hint(self):
        self.lab.lab("controlplane", "stop")
        try:
            wait_for("the agent to notice", lambda: self.check()[1][
                "the agent is connected to the control plane"]["result"] == "error", timeout=30)
            results = self.assertFailed("the agent is connected to the control plane",
                                        "not connected to 10.99.0.1:15010",
                                        "sluice-controlplane is running")
            self.assertEqual(results["the agent's view is live"]["result"], "warning")
        finally:
            self.lab.lab("controlplane", "start")
        self.waitHealthy()

    def test_5_a_stopped_agent_is_an_error_with_its_hint(self):
        self.lab.lab("agent", "stop", "node1")
        try:
            self.assertFailed("the agent's admin API answers", "cannot reach the agent admin API",
                              "start sluice-agent")
        finally:
            self.lab.lab("agent", "start", "node1")
        self.waitHealthy()

    def test_6_a_missing_pinned_link_is_an_error_with_its_hint(self):
        for program in ("sluice_connect4", "sluice_getpeername6"):
            link = os.path.join(PIN_DIR, "link_" + program)
            self.assertTrue(os.path.exists(link), os.listdir(PIN_DIR))
            os.unlink(link)
        # Each enrolled pod's netns has its sk_lookup link (shop/web's among them).
        lookups = [f for f in os.listdir(PIN_DIR) if f.startswith("link_lookup_")]
        self.assertTrue(lookups, os.listdir(PIN_DIR))
        for f in lookups:
            os.unlink(os.path.join(PIN_DIR, f))
        try:
            results = self.assertFailed("BPF programs are pinned and attached", "is missing",
                                        "restart sluice-agent")
            detail = results["BPF programs are pinned and attached"]["detail"]
            self.assertIn("sluice_connect4: pinned link", detail)
            self.assertIn("sluice_getpeername6: pinned link", detail)
            self.assertNotIn("sluice_getpeername4", detail)
            captured = results["every enrolled pod is in the capture map"]
            self.assertEqual(captured["result"], "error", captured)
            self.assertIn("without their sk_lookup link", captured["detail"])
            self.assertIn("shop/web", captured["detail"])
            self.assertIn("TIME_WAIT", captured["hint"])
        finally:
            self.lab.lab("agent", "restart", "node1")
        self.waitHealthy()

    def test_7_an_expired_certificate_is_an_error_with_its_hint(self):
        # Without the control plane the agent cannot renew: the 60 s
        # certificate runs out.
        self.lab.lab("controlplane", "stop")
        try:
            not_after = self.lab.cert("node1", self.uri)["not_after_unix"]
            wait_for("the certificate to expire", lambda: time.time() > not_after + 1,
                     timeout=90, interval=0.5)
            self.assertFailed("every enrolled pod has a valid certificate",
                              "shop/web: the certificate of " + self.uri + " expired",
                              "make it reachable")
        finally:
            self.lab.lab("controlplane", "start")
        self.waitHealthy()

    def test_8_a_meshed_pod_the_agent_never_enrolled_is_an_error_with_its_hint(self):
        # As for a pod started before sluice-cni was chained, or while the
        # agent was away with failOpen: no CNI ADD ever reached this agent.
        # The agent is made to forget shop/late's ADD (its state file).
        self.lab.pod("shop", "late", sa="web")
        wait_for("shop/late enrolled", lambda: self.lab.enrolled("node1", "shop/late"))
        state = os.path.join(LAB_DIR, "node1", "state", "pods.json")
        self.lab.lab("agent", "stop", "node1")
        try:
            with open(state) as f:
                saved = json.load(f)
            saved["pods"] = [p for p in saved["pods"] if p["name"] != "late"]
            with open(state, "w") as f:
                json.dump(saved, f)
        finally:
            self.lab.lab("agent", "start", "node1")
        try:
            wait_for("the agent's view", lambda: self.check()[1][
                "the agent's view is live"]["result"] == "ok", timeout=30)
            results = self.assertFailed("every pod of a meshed namespace on this node is enrolled",
                                        "shop/late (the agent does not know it: no CNI ADD reached the agent",
                                        "delete each pod so that it is re-created")
            self.assertNotIn("shop/web", results[
                "every pod of a meshed namespace on this node is enrolled"]["detail"])
        finally:
            self.lab.lab("pod", "del", "shop", "late")
        self.waitHealthy()


if __name__ == "__main__":
    unittest.main()
