"""Policies through the control plane on a two-node lab (the control-plane side
of zero-trust policy): `lab apply FILE` puts AuthorizationPolicy and
PeerAuthentication objects into local mode's config directory, the control
plane validates them and sends each node exactly the policies that select one
of its workloads; a second apply of a changed file replaces, `lab delete FILE`
removes exactly what apply added; a malformed policy is rejected (`lab apply`
exits 1 naming the object and field, and so does a control plane log line)
while its last good version stays in force; non-policy files are refused by the lab. Asserted on what the control
plane sends each node, as its log reports it."""
import os
import re
import tempfile

from labkit import LAB_DIR, LabTest, wait_for

MESH = "sluice.dev/mesh"


def authz(name, selector=None, extra=""):
    sel = f"  selector:\n    matchLabels: {{app: {selector}}}\n" if selector else ""
    return (f"apiVersion: security.sluice.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n"
            f"  name: {name}\n  namespace: shop\nspec:\n{sel}  action: ALLOW\n  rules:\n"
            f"  - from:\n    - source:\n        principals: [\"cluster.local/ns/shop/sa/client\"]\n"
            f"{extra}")


STRICT = ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n"
          "  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n")


class PolicyControlPlaneTest(LabTest):
    NODES = 2

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        lab.pod("shop", "web", node="node1", sa="web", labels=["app=web"])
        lab.pod("shop", "db", node="node2", sa="db", labels=["app=db"])
        for node, pod in (("node1", "shop/web"), ("node2", "shop/db")):
            wait_for(f"{pod} enrolled", lambda node=node, pod=pod: lab.enrolled(node, pod))
        cls.tmp = tempfile.TemporaryDirectory(prefix="sluice-policy-cp-")

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "tmp", None):
            cls.tmp.cleanup()
        super().tearDownClass()

    # ---------------------------------------------------------------- helpers

    def file(self, name, text):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    @staticmethod
    def cp_log():
        with open(os.path.join(LAB_DIR, "controlplane.log")) as f:
            return f.read()

    def sent(self, node):
        """The policy set the control plane last sent `node`: sorted names."""
        lines = re.findall(rf"node {node} policies at version \d+: \d+ in force:?(.*)", self.cp_log())
        if not lines:
            return None
        names = re.findall(r"(AuthorizationPolicy|PeerAuthentication) (\S+)", lines[-1])
        return sorted(f"{kind} {name}" for kind, name in names)

    def wait_sent(self, node, want):
        wait_for(f"node {node} to be sent {want}", lambda: self.sent(node) == sorted(want))

    def wait_stand_in(self, node, name):
        """The fail-closed stand-in of AuthorizationPolicy `name` as `node` enforces it."""
        def stand_in():
            for pol in self.lab.ctl(node, "policies")["authorization_policies"]:
                if pol["name"] == name and any("no good version" in w for w in pol["warnings"]):
                    return pol
            return None
        return wait_for(f"the stand-in of {name} on {node}", stand_in, timeout=30)

    def config_files(self):
        return sorted(f for f in os.listdir(os.path.join(LAB_DIR, "config")) if f.startswith("policy-"))

    # ------------------------------------------------------------------ tests

    def test_apply_replace_delete(self):
        first = self.file("first.yaml", authz("allow-web", "web") + "---\n" + STRICT)
        out = self.lab.lab("apply", first).stdout
        self.assertIn("AuthorizationPolicy shop/allow-web applied", out)
        # Per node: the namespace-wide STRICT reaches both, the web policy only web's node.
        self.wait_sent("node1", ["AuthorizationPolicy shop/allow-web", "PeerAuthentication shop/strict"])
        self.wait_sent("node2", ["PeerAuthentication shop/strict"])

        # The same file changed: STRICT dropped, the policy now selects db.
        self.file("first.yaml", authz("allow-web", "db"))
        self.lab.lab("apply", first)
        self.wait_sent("node1", [])
        self.wait_sent("node2", ["AuthorizationPolicy shop/allow-web"])
        self.assertEqual(self.config_files(), ["policy-authorizationpolicy-shop.allow-web.yaml"])

        # Another file's objects stay when the first one is deleted.
        other = self.file("other.yaml", STRICT)
        self.lab.lab("apply", other)
        self.wait_sent("node1", ["PeerAuthentication shop/strict"])
        self.lab.lab("delete", first)
        self.wait_sent("node2", ["PeerAuthentication shop/strict"])
        self.lab.lab("delete", other)
        self.wait_sent("node1", [])
        self.wait_sent("node2", [])
        self.assertEqual(self.config_files(), [])
        again = self.lab.lab("delete", other, check=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn("none of the objects", again.stderr)

    def test_malformed_policy_keeps_last_good_version(self):
        good = self.file("mal.yaml", authz("guarded", "web"))
        self.lab.lab("apply", good)
        self.wait_sent("node1", ["AuthorizationPolicy shop/guarded"])
        bad = authz("guarded", "web").replace(
            'principals: ["cluster.local/ns/shop/sa/client"]', 'ipBlocks: ["10.0.0.0/33"]')
        p = self.lab.lab("apply", self.file("mal.yaml", bad), check=False)
        # lab apply says so at once, as kubectl would for an object the API server refused.
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertNotIn("applied", p.stdout)
        self.assertIn("AuthorizationPolicy shop/guarded rejected by the control plane", p.stderr)
        self.assertIn("ipBlocks", p.stderr)
        self.assertIn("its last good version stays in force", p.stderr)
        self.assertNotIn("failing closed", p.stderr)
        line = wait_for("the rejection in the control plane's log", lambda: next(
            (l for l in self.cp_log().splitlines()
             if "rejected a policy" in l and "shop/guarded" in l), None))
        self.assertIn("policy-authorizationpolicy-shop.guarded.yaml", line)
        self.assertIn("AuthorizationPolicy shop/guarded", line)
        self.assertIn("ipBlocks", line)
        self.assertIn("last good version stays in force", line)
        self.assertEqual(self.sent("node1"), ["AuthorizationPolicy shop/guarded"])

        # A key written twice is refused, and what the lab drops into the config directory
        # is the document as written: read back by PyYAML (the last key wins) it would be a
        # valid ALLOW the control plane never checked.
        twice = authz("guarded", "web").replace("  action: ALLOW\n", "  action: DENY\n  action: ALLOW\n")
        p = self.lab.lab("apply", self.file("mal.yaml", twice), check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("AuthorizationPolicy shop/guarded rejected by the control plane", p.stderr)
        self.assertIn("action", p.stderr)
        with open(os.path.join(LAB_DIR, "config", "policy-authorizationpolicy-shop.guarded.yaml")) as f:
            self.assertIn("  action: DENY\n  action: ALLOW\n", f.read())
        self.assertEqual(self.sent("node1"), ["AuthorizationPolicy shop/guarded"])

        # Warnings (an HTTP field in a DENY rule) are logged once per version.
        warned = authz("guarded", "web").replace("action: ALLOW", "action: DENY") + \
            "    to:\n    - operation:\n        methods: [\"GET\"]\n"
        p = self.lab.lab("apply", self.file("mal.yaml", warned))
        self.assertIn("AuthorizationPolicy shop/guarded applied", p.stdout)
        self.assertIn("Warning: AuthorizationPolicy shop/guarded: ", p.stderr)
        self.assertIn("methods", p.stderr)
        wait_for("the warning", lambda: "AuthorizationPolicy shop/guarded in" in self.cp_log())
        self.lab.lab("delete", good)
        self.wait_sent("node1", [])
        warnings = [l for l in self.cp_log().splitlines() if "AuthorizationPolicy shop/guarded in" in l]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("methods", warnings[0])

    def test_a_refused_policy_without_a_good_version_fails_closed_after_a_restart(self):
        """The last good version lives in the control plane's memory: after a restart a policy
        edited into a refused form has none. It must not vanish (an ALLOW gone is everything
        allowed): it stands in as an ALLOW that allows nothing, with a warning saying why."""
        path = self.file("restart.yaml", authz("only-client", "web"))
        self.lab.lab("apply", path)
        self.wait_sent("node1", ["AuthorizationPolicy shop/only-client"])
        bad = authz("only-client", "web").replace("principals:", "principal:")
        self.assertEqual(self.lab.lab("apply", self.file("restart.yaml", bad), check=False).returncode, 1)
        try:
            self.lab.lab("controlplane", "restart")
            # Applied again, `lab apply` knows the new control plane has no good version of it.
            p = self.lab.lab("apply", self.file("restart.yaml", bad), check=False)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            self.assertIn("it has no good version, so it is enforced failing closed now", p.stderr)
            p = self.wait_stand_in("node1", "only-client")
            self.assertEqual((p["action"], p["rules"]), ("ALLOW", 0))
            self.assertIn("enforced as an ALLOW that allows nothing", " ".join(p["warnings"]))
        finally:
            self.lab.lab("delete", path, check=False)
        self.wait_sent("node1", [])

    def test_a_new_policy_born_invalid_fails_closed_and_lab_apply_says_so(self):
        """A policy that was never accepted has no good version: its stand-in is in force at
        once (a typo must not leave a workload open), and `lab apply` says so, and how out."""
        typo = authz("born-bad", "db").replace("  selector:", "  selectr:")
        path = self.file("born.yaml", typo)
        p = self.lab.lab("apply", path, check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("AuthorizationPolicy shop/born-bad rejected by the control plane", p.stderr)
        self.assertIn("selectr", p.stderr)
        self.assertIn("it has no good version, so it is enforced failing closed now", p.stderr)
        self.assertIn(f"lab delete {path}", p.stderr)
        self.assertNotIn("last good version stays", p.stderr)
        pol = self.wait_stand_in("node2", "born-bad")
        self.assertEqual((pol["action"], pol["rules"]), ("ALLOW", 0))
        self.lab.lab("delete", path)
        self.wait_sent("node2", [])

    def test_names_the_api_server_takes_are_applied_and_deleted(self):
        """The longest policy name (253 characters) in a long namespace, and two objects whose
        namespace and name join to the same with '-' (shop-a/x and shop/a-x): each is its own
        object in the config directory."""
        long_name = ".".join(["a" * 63] * 4)[:253].rstrip(".")
        ns = "shop-" + "n" * 58  # 63 characters
        text = authz(long_name, "web").replace("namespace: shop", f"namespace: {ns}")
        path = self.file("long.yaml", text)
        p = self.lab.lab("apply", path)
        self.assertIn(f"AuthorizationPolicy {ns}/{long_name} applied", p.stdout)
        self.assertEqual(len(self.config_files()), 1)
        self.lab.lab("delete", path)
        self.assertEqual(self.config_files(), [])
        twins = self.file("twins.yaml", authz("x").replace("namespace: shop", "namespace: shop-a") + "---\n" +
                          authz("a-x"))
        p = self.lab.lab("apply", twins)
        self.assertIn("AuthorizationPolicy shop-a/x applied", p.stdout)
        self.assertIn("AuthorizationPolicy shop/a-x applied", p.stdout)
        self.assertEqual(len(self.config_files()), 2)
        self.lab.lab("delete", twins)
        self.assertEqual(self.config_files(), [])

    def test_non_policy_and_non_yaml_files_are_refused(self):
        pod = self.file("pod.yaml", authz("fine") + "---\napiVersion: v1\nkind: Pod\nmetadata:\n"
                        "  name: x\n  namespace: shop\n")
        p = self.lab.lab("apply", pod, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("document 2 is a Pod", p.stderr)
        self.assertIn("AuthorizationPolicy and PeerAuthentication", p.stderr)
        junk = self.file("junk.yaml", "kind: [AuthorizationPolicy\n  : :\n")
        p = self.lab.lab("apply", junk, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("is not YAML", p.stderr)
        self.assertEqual(self.config_files(), [])


if __name__ == "__main__":
    import unittest
    unittest.main()
