#!/usr/bin/python3
"""sluice-cni under a real container runtime: Debian's containerd with its CRI
plugin, driven through the CRI v1 gRPC API as a kubelet drives it
(RunPodSandbox / PodSandboxStatus / StopPodSandbox / RemovePodSandbox with pod
metadata), in a one-node lab. The runtime runs the node's CNI configuration
itself (bridge + host-local, then sluice-cni), so the plugin gets the CNI_ARGS
and the DEL a kubelet's runtime sends."""
import os
import subprocess
import sys
import uuid

from crikit import Containerd
from labkit import APP, LAB_DIR, LabTest, wait_for

MESH = "sluice.dev/mesh"


def cni_log_lines(prefix):
    try:
        with open(os.path.join(LAB_DIR, "node1", "cni.log")) as f:
            return [line.rstrip("\n") for line in f if f" sluice-cni {prefix}" in line]
    except FileNotFoundError:
        return []


def cni_args_of(line):
    """The CNI_ARGS a sluice-cni log line reports, as a dict."""
    args = line.split("CNI_ARGS ", 1)[1].split(")", 1)[0]
    return dict(kv.split("=", 1) for kv in args.split(";") if kv)


class CriTest(LabTest):
    NODES = 1
    cri = None

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        cls.server_ip = lab.pod("shop", "server", sa="api")
        wait_for("shop/server enrolled", lambda: lab.enrolled("node1", "shop/server"))
        lab.server("shop/server", "whoami", 8080)
        cls.cri = Containerd(1)
        try:
            cls.cri.start()
        except BaseException:
            cls.cri.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        leftovers = []
        try:
            if cls.cri:
                cls.cri.cleanup()
                leftovers = cls.cri.mounts() + cls.cri.shims() + cls.cri.cgroup_dirs()
                if os.path.exists(cls.cri.dir):
                    leftovers.append(cls.cri.dir)
        finally:
            super().tearDownClass()
        if leftovers:
            raise AssertionError(f"containerd left behind: {leftovers}")

    def test_kubelet_sandbox_is_enrolled_captured_and_deleted(self):
        lab, cri = self.lab, self.cri
        version = cri.cri("version").stdout
        self.assertIn('"runtime_name":"containerd"', version)
        uid = str(uuid.uuid4())
        # As in Kubernetes, the Pod object exists (scheduled to node1) before its sandbox.
        lab.lab("pod", "object", "shop", "web", "--uid", uid, "--sa", "web", "--node", "node1")
        try:
            sid = cri.run_sandbox("web", "shop", uid)
            status = cri.status(sid)
            self.assertEqual(status["state"], "SANDBOX_READY")
            self.assertEqual(status["info"]["info"]["processStatus"], "running")  # our pause, from our image
            self.assertEqual(status["info"]["info"]["image"], "sluice.local/pause:1")
            self.assertEqual((status["namespace"], status["name"], status["uid"]), ("shop", "web", uid))
            self.assertTrue(status["ip"].startswith("10.244.1."), status["ip"])
            netns = cri.netns_path(status)

            # The plugin got exactly what a kubelet's runtime passes, and enrolled the pod.
            adds = cni_log_lines("ADD shop/web ")
            self.assertEqual(len(adds), 1, adds)
            self.assertTrue(adds[0].endswith(": enrolled"), adds[0])
            self.assertIn(f"(container {sid};", adds[0])
            self.assertEqual(cni_args_of(adds[0]), {
                "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web",
                "K8S_POD_INFRA_CONTAINER_ID": sid, "K8S_POD_UID": uid})
            pod = lab.pods_of("node1")["shop/web"]
            self.assertTrue(pod["enrolled"])
            self.assertEqual((pod["uid"], pod["container_id"], pod["netns"], pod["ip"]),
                             (uid, sid, netns, status["ip"]))
            cookie = pod["netns_cookie"]
            self.assertIn(cookie, [e["netns_cookie"] for e in lab.ctl("node1", "bpf")["enrolled"]])

            # A connection from inside the sandbox's network namespace is meshed.
            out = subprocess.run(["nsenter", f"--net={netns}", sys.executable, APP, "get", self.server_ip, "8080"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
            self.assertIn(f"peer={status['ip']}:", out)
            conns = wait_for("the sandbox's connection record", lambda: [
                c for c in lab.connections("node1")
                if c["pod"] == "shop/web" and c["destination"] == f"{self.server_ip}:8080"])
            self.assertEqual(conns[-1]["source_principal"], "spiffe://cluster.local/ns/shop/sa/web")
            self.assertEqual(conns[-1]["destination_principal"], "spiffe://cluster.local/ns/shop/sa/api")

            # The kubelet's teardown: the runtime's own DEL (on StopPodSandbox, with the
            # same CNI_ARGS) takes the pod out of the agent and the BPF maps.
            cri.stop(sid)
            dels = cni_log_lines("DEL shop/web ")
            self.assertTrue(dels, "containerd sent no DEL on StopPodSandbox")
            self.assertEqual(cni_args_of(dels[0]), cni_args_of(adds[0]))
            self.assertNotIn("shop/web", lab.pods_of("node1"))
            self.assertNotIn(cookie, [e["netns_cookie"] for e in lab.ctl("node1", "bpf")["enrolled"]])
            self.assertFalse(os.path.exists(netns), f"{netns} outlived its sandbox")
            # RemovePodSandbox (containerd DELs again: a no-op for the agent) forgets it.
            cri.remove(sid)
            self.assertNotEqual(cri.cri("status", sid, check=False).returncode, 0)
            self.assertNotIn("shop/web", lab.pods_of("node1"))
            self.assertEqual(len(cni_log_lines("ADD shop/web ")), 1)
            self.assertTrue(all(cni_args_of(d) == cni_args_of(adds[0]) for d in cni_log_lines("DEL shop/web ")))
        finally:
            lab.lab("pod", "del", "shop", "web")
        # The lab's own pod is untouched by all of it.
        self.assertTrue(lab.enrolled("node1", "shop/server"))

    def test_sandbox_in_a_namespace_not_enrolled_runs_unmeshed(self):
        lab, cri = self.lab, self.cri
        uid = str(uuid.uuid4())
        lab.lab("pod", "object", "legacy", "old", "--uid", uid, "--node", "node1")
        try:
            sid = cri.run_sandbox("old", "legacy", uid)
            status = cri.status(sid)
            adds = cni_log_lines("ADD legacy/old ")
            self.assertEqual(len(adds), 1, adds)
            self.assertTrue(adds[0].endswith(": ok (not enrolled)"), adds[0])
            pod = lab.pods_of("node1")["legacy/old"]
            self.assertFalse(pod["enrolled"])
            self.assertEqual((pod["uid"], pod["container_id"]), (uid, sid))
            outbound = lambda: [c for c in lab.connections("node1")  # noqa: E731
                                if c["pod"] == "legacy/old" and c["direction"] == "outbound"]
            before = len(outbound())
            out = subprocess.run(["nsenter", f"--net={cri.netns_path(status)}", sys.executable, APP, "get",
                                  self.server_ip, "8080"], capture_output=True, text=True, timeout=60,
                                 check=True).stdout
            self.assertIn(f"peer={status['ip']}:", out)
            # Not through the outbound proxy (the enrolled server's side may still see it inbound).
            self.assertEqual(before, len(outbound()))
            cri.stop(sid)
            cri.remove(sid)
            self.assertNotIn("legacy/old", lab.pods_of("node1"))
        finally:
            lab.lab("pod", "del", "legacy", "old")
