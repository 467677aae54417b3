#!/usr/bin/python3
"""Issue 15 (dual stack), end to end: the lab's --ip-family, pods with addresses of both
families, IPv6 routed between nodes, the pods' IPv6 addresses carried by discovery (CNI
prevResult -> agent, Pod status.podIPs -> control plane -> every agent), the IPv4 mesh
unchanged on a dual-stack lab, and the IPv6 data path: meshed over HBONE to [pod-v6]:15008,
handed off on one node, IPv6 Service VIPs balanced, plaintext in on [pod-v6]:15006, policy
ipBlocks on IPv6 sources.
The capture, mTLS, Services and policy suites also run whole on a dual-stack lab
(their *DualStackTest classes)."""
import ipaddress
import json
import os
import sys
import tempfile
import unittest

from labkit import APP, LabTest, wait_for

MESH = "sluice.dev/mesh"

# whoami on [::]:PORT, IPv6 only: "peer=IP:PORT local=IP:PORT" per connection.
WHOAMI6 = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    local = c.getsockname()
    c.sendall(f"peer={peer[0]} local={local[0]}:{local[1]}\n".encode())
    c.close()
"""

def in_net(ip, net):
    return ipaddress.ip_address(ip) in ipaddress.ip_network(net)


class DualStackTest(LabTest):
    NODES = 2
    IP_FAMILY = "dual"

    @classmethod
    def setUpLab(cls):
        lab = cls.lab
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        cls.client_ip = lab.pod("shop", "client", node="node1", sa="web")
        cls.server_ip = lab.pod("shop", "server", node="node2", sa="api", labels=["app=server"])
        lab.pod("shop", "neighbor", node="node2", sa="web")
        cls.legacy_client_ip = lab.pod("legacy", "client", node="node1", sa="legacy")
        lab.pod("legacy", "server", node="node2", sa="legacy")
        for node, pod in (("node1", "shop/client"), ("node2", "shop/server"), ("node2", "shop/neighbor")):
            wait_for(f"{pod} enrolled", lambda node=node, pod=pod: lab.enrolled(node, pod))
        lab.server("shop/server", "whoami", 8080)
        lab.spawn("shop/server", sys.executable, "-c", WHOAMI6, "8086")
        lab.spawn("legacy/server", sys.executable, "-c", WHOAMI6, "8086")

    def test_pods_get_an_address_of_each_family(self):
        for ns, name, node in (("shop", "client", 1), ("shop", "server", 2), ("legacy", "server", 2)):
            v4, v6 = self.lab.ip(ns, name, 4), self.lab.ip(ns, name, 6)
            self.assertTrue(in_net(v4, f"10.244.{node}.0/24"), v4)
            self.assertTrue(in_net(v6, f"fd00:244:{node}::/64"), v6)
            self.assertEqual(self.lab.ip(ns, name), v4, "a dual-stack pod's first address is its IPv4 one")
        bad = self.lab.lab("pod", "ip", "shop", "client", "--family", "5", check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("--family 4|6", bad.stderr)

    def test_ipv6_is_routed_between_nodes(self):
        server6 = self.lab.ip("legacy", "server", 6)
        out = self.lab.exec("legacy/client", sys.executable, APP, "get", server6, "8086").stdout
        self.assertIn(f"peer={self.lab.ip('legacy', 'client', 6)} ", out)
        self.assertIn(f"local={server6}:8086", out)

    # --- the IPv6 data path (the proxy's [::1]:15001, [pod-v6]:15006 and :15008) ---

    def record(self, node, pred, what):
        return wait_for(what, lambda: [c for c in self.lab.connections(node) if pred(c)])[-1]

    def test_ipv6_from_outside_the_mesh_in_and_from_the_mesh_out(self):
        lab = self.lab
        server6, legacy6 = lab.ip("shop", "server", 6), lab.ip("legacy", "server", 6)
        legacy_client6 = lab.ip("legacy", "client", 6)
        # Plaintext from an unmeshed pod: tc hands the SYN to [server-v6]:15006, which relays it
        # to the app with the client's own IPv6 address as source.
        out = lab.exec("legacy/client", sys.executable, APP, "get", server6, "8086").stdout
        self.assertIn(f"peer={legacy_client6} ", out)
        self.assertIn(f"local={server6}:8086", out)
        rec = self.record("node2", lambda c: c["path"] == "inbound" and c["destination"] == f"[{server6}]:8086"
                          and c["source"].startswith(f"[{legacy_client6}]:"), "inbound IPv6 record on node2")
        self.assertEqual(rec["direction"], "inbound")
        self.assertFalse(rec["mutual_tls"])
        # The enrolled pod's own IPv6 connection to an unmeshed pod: captured (connect6 to
        # [::1]:15001) and passed through from its own IPv6 address.
        out = lab.exec("shop/client", sys.executable, APP, "get", legacy6, "8086").stdout
        self.assertIn(f"peer={lab.ip('shop', 'client', 6)} ", out)
        self.record("node1", lambda c: c["path"] == "passthrough" and c["destination"] == f"[{legacy6}]:8086",
                    "passthrough IPv6 record on node1")

    def test_ipv6_between_enrolled_pods_on_two_nodes_is_meshed(self):
        lab = self.lab
        server6, client6 = lab.ip("shop", "server", 6), lab.ip("shop", "client", 6)
        out = lab.exec("shop/client", sys.executable, APP, "get", server6, "8086").stdout
        self.assertIn(f"peer={client6} ", out)  # the app sees the client's IPv6 address
        self.assertIn(f"local={server6}:8086", out)
        dst = f"[{server6}]:8086"
        rec = self.record("node2", lambda c: c["direction"] == "inbound" and c["destination"] == dst,
                          "inbound IPv6 HBONE record on node2")
        self.assertEqual(rec["path"], "hbone")
        self.assertTrue(rec["mutual_tls"])
        self.assertEqual(rec["source_principal"], "spiffe://cluster.local/ns/shop/sa/web")
        self.assertEqual(rec["destination_principal"], "spiffe://cluster.local/ns/shop/sa/api")
        self.assertTrue(rec["source"].startswith(f"[{client6}]:"), rec)
        out_rec = self.record("node1", lambda c: c["direction"] == "outbound" and c["destination"] == dst,
                              "outbound IPv6 record on node1")
        self.assertEqual(out_rec["path"], "hbone")
        self.assertEqual(out_rec["destination_principal"], "spiffe://cluster.local/ns/shop/sa/api")

    def test_ipv6_to_an_enrolled_pod_on_the_same_node_is_handed_off(self):
        lab = self.lab
        server6, neighbor6 = lab.ip("shop", "server", 6), lab.ip("shop", "neighbor", 6)
        out = lab.exec("shop/neighbor", sys.executable, APP, "get", server6, "8086").stdout
        self.assertIn(f"peer={neighbor6} ", out)
        rec = self.record("node2", lambda c: c["path"] == "local_handoff" and c["destination"] == f"[{server6}]:8086",
                          "same-node IPv6 record on node2")
        self.assertEqual(rec["source_principal"], "spiffe://cluster.local/ns/shop/sa/web")
        self.assertEqual(rec["destination_principal"], "spiffe://cluster.local/ns/shop/sa/api")

    def test_an_ipv6_service_vip_is_balanced_over_ipv6_endpoints(self):
        lab = self.lab
        lab.lab("svc", "add", "shop", "six", "--selector", "app=server", "--port", "80:8086",
                "--ip-family-policy", "RequireDualStack")
        vips = wait_for("shop/six with two VIPs in node1's view", lambda: [
            s["vips"] for s in lab.ctl("node1", "services")["services"]
            if (s["namespace"], s["name"]) == ("shop", "six") and len(s["vips"]) == 2 and len(s["endpoints"]) == 2])[0]
        vip6 = vips[1]
        self.assertTrue(in_net(vip6, "fd00:96::/112"), vips)
        server6 = lab.ip("shop", "server", 6)
        out = lab.exec("shop/client", sys.executable, APP, "get", vip6, "80").stdout
        self.assertIn(f"peer={lab.ip('shop', 'client', 6)} ", out)
        self.assertIn(f"local={server6}:8086", out)  # the IPv6 endpoint, never the IPv4 one
        rec = self.record("node1", lambda c: c["destination_service"] == "shop/six", "shop/six record on node1")
        self.assertEqual(rec["destination"], f"[{server6}]:8086")
        self.assertEqual(rec["path"], "hbone")

    def test_a_policy_denies_by_ipv6_ip_block(self):
        lab = self.lab
        client6, server6 = lab.ip("shop", "client", 6), lab.ip("shop", "server", 6)
        path = os.path.join(tempfile.mkdtemp(prefix="sluice-dual-"), "deny6.yaml")
        with open(path, "w") as f:
            f.write("apiVersion: security.sluice.dev/v1\nkind: AuthorizationPolicy\n"
                    "metadata: {name: deny-client6, namespace: shop}\n"
                    "spec:\n  selector:\n    matchLabels: {app: server}\n  action: DENY\n"
                    f"  rules:\n  - from:\n    - source: {{ipBlocks: [\"{client6}/128\"]}}\n")
        lab.lab("apply", path)
        try:
            def in_force():
                return "shop/deny-client6" in {f"{p['namespace']}/{p['name']}"
                                               for p in lab.ctl("node2", "policies")["authorization_policies"]}
            wait_for("the IPv6 ipBlock policy in force on node2", in_force)
            denied = lab.exec("shop/client", sys.executable, APP, "get", server6, "8086", "5", check=False)
            self.assertNotIn("peer=", denied.stdout)
            rec = self.record("node2", lambda c: c["destination"] == f"[{server6}]:8086"
                              and c["reason"].startswith("denied"), "denied IPv6 record on node2")
            self.assertIn("deny-client6", rec["reason"])
            # The same client over IPv4 is another source: allowed.
            out = lab.client("shop/client", "get", self.server_ip, "8080").stdout
            self.assertIn(f"peer={self.client_ip}:", out)
        finally:
            lab.lab("delete", path, check=False)
            wait_for("the policy gone from node2", lambda: not in_force())

    def test_a_kubelet_probe_to_the_ipv6_address_passes_strict(self):
        lab = self.lab
        server6 = lab.ip("shop", "server", 6)
        path = os.path.join(tempfile.mkdtemp(prefix="sluice-dual-"), "strict.yaml")
        with open(path, "w") as f:
            f.write("apiVersion: security.sluice.dev/v1\nkind: PeerAuthentication\n"
                    "metadata: {name: strict6, namespace: shop}\nspec:\n  mtls: {mode: STRICT}\n")
        lab.lab("apply", path)

        def in_force():
            return "shop/strict6" in {f"{p['namespace']}/{p['name']}"
                                      for p in lab.ctl("node2", "policies")["peer_authentications"]}

        def reply(out):
            return json.loads(out.stdout.strip().splitlines()[-1])

        try:
            wait_for("STRICT in force on node2", in_force)
            # Plaintext from another pod to the IPv6 address: refused.
            r = reply(lab.exec("legacy/client", sys.executable, APP, "probe", server6, "8086"))
            self.assertEqual(r["reply"], "", f"legacy/client -> [{server6}]:8086 under STRICT: {r}")
            # The kubelet's probe: plaintext from the node (its IPv6 address on the pod's link).
            r = reply(lab.lab("node", "exec", "node2", "--", sys.executable, APP, "probe", server6, "8086"))
            self.assertTrue(r["reply"].startswith("peer="), f"node2 -> [{server6}]:8086: {r}")
        finally:
            lab.lab("delete", path, check=False)
            wait_for("STRICT gone from node2", lambda: not in_force())

    def test_discovery_carries_both_addresses(self):
        server4, server6 = self.server_ip, self.lab.ip("shop", "server", 6)
        # The control plane's view (status.podIPs), on the node that does not run the pod.
        wait_for("shop/server with both addresses in node1's view", lambda: [
            w for w in self.lab.ctl("node1", "workloads")["workloads"]
            if w["name"] == "server" and w["namespace"] == "shop" and w["ips"] == [server4, server6]])
        # The CNI result's IPv6 address reached the agent that runs the pod.
        pods = [p for p in self.lab.config_dump("node2")["pods"] if (p["namespace"], p["name"]) == ("shop", "server")]
        self.assertEqual([(p["ip"], p["ip6"], p["enrolled"]) for p in pods], [(server4, server6, True)])
        # ... and its BPF maps: connect6 knows the pod's own IPv6 address (sluice_enrolled6_v1).
        enrolled = {e["netns_cookie"]: e for e in self.lab.ctl("node2", "bpf")["enrolled"]}
        self.assertEqual(enrolled[pods[0]["netns_cookie"]]["pod_ip6"], server6)

    def test_a_dual_stack_service_is_balanced_on_its_ipv4_vip(self):
        lab = self.lab
        vip = lab.lab("svc", "add", "shop", "both", "--selector", "app=server", "--port", "80:8080",
                      "--ip-family-policy", "PreferDualStack").stdout.strip()
        single = lab.lab("svc", "add", "shop", "single", "--selector", "app=server", "--port", "80:8080").stdout.strip()
        self.assertTrue(in_net(vip, "10.96.0.0/16") and in_net(single, "10.96.0.0/16"), (vip, single))
        server6 = lab.ip("shop", "server", 6)

        def services():
            return {s["name"]: (s["vips"], sorted(e["ip"] for e in s["endpoints"]))
                    for s in lab.ctl("node1", "services")["services"] if s["namespace"] == "shop"}
        # A VIP of each family, and the endpoints of each family (the endpoints controller's
        # per-family slices); a SingleStack Service has IPv4 ones only.
        def ready():
            s = services()
            return (s.get("single") == ([single], [self.server_ip]) and "both" in s and
                    s["both"][1] == sorted([self.server_ip, server6]) and s)
        vips = wait_for("both services in node1's view", ready)["both"][0]
        self.assertEqual(len(vips), 2, vips)
        self.assertEqual(vips[0], vip)
        self.assertTrue(in_net(vips[1], "fd00:96::/112"), vips)
        out = lab.client("shop/client", "get", vip, "80").stdout
        self.assertIn(f"peer={self.client_ip}:", out)
        self.assertIn(f"local={self.server_ip}:8080", out)
        bad = lab.lab("svc", "add", "shop", "x", "--selector", "app=server", "--port", "80",
                      "--ip-family-policy", "DualStack", check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("SingleStack, PreferDualStack, RequireDualStack", bad.stderr)

    def test_ipv4_mesh_is_unchanged_on_a_dual_stack_lab(self):
        out = self.lab.client("shop/client", "get", self.server_ip, "8080").stdout
        self.assertIn(f"peer={self.client_ip}:", out)
        self.assertIn(f"local={self.server_ip}:8080", out)
        rec = wait_for("inbound record on node2", lambda: [
            c for c in self.lab.connections("node2")
            if c["direction"] == "inbound" and c["destination"] == f"{self.server_ip}:8080"])[-1]
        self.assertEqual(rec["path"], "hbone")
        self.assertTrue(rec["mutual_tls"])
        self.assertEqual(rec["source_principal"], "spiffe://cluster.local/ns/shop/sa/web")


class Ipv6OnlyTest(LabTest):
    NODES = 1
    IP_FAMILY = "ipv6"

    def test_ipv6_only_pods_talk_and_enrolled_ones_are_meshed(self):
        lab = self.lab
        client6 = lab.pod("legacy", "client", sa="legacy")
        server6 = lab.pod("legacy", "server", sa="legacy")
        for ip in (client6, server6):
            self.assertTrue(in_net(ip, "fd00:244:1::/64"), ip)
        self.assertEqual(lab.ip("legacy", "server", 6), server6)
        no4 = lab.lab("pod", "ip", "legacy", "server", "--family", "4", check=False)
        self.assertNotEqual(no4.returncode, 0)
        self.assertIn("has no IPv4 address", no4.stderr)
        lab.spawn("legacy/server", sys.executable, "-c", WHOAMI6, "8086")
        out = lab.exec("legacy/client", sys.executable, APP, "get", server6, "8086").stdout
        self.assertIn(f"peer={client6} ", out)

        # An enrolled IPv6-only pod is meshed like any other: the proxy listens on its IPv6
        # address only ([::1]:15001, [pod-v6]:15006/15008).
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        web6 = lab.pod("shop", "web", sa="web")
        api6 = lab.pod("shop", "api", sa="api")
        for pod in ("shop/web", "shop/api"):
            wait_for(f"{pod} enrolled", lambda pod=pod: lab.enrolled("node1", pod))
        pods = {f"{p['namespace']}/{p['name']}": p for p in lab.config_dump("node1")["pods"]}
        self.assertEqual((pods["shop/api"]["ip6"], pods["shop/api"]["enrolled"]), (api6, True))
        lab.spawn("shop/api", sys.executable, "-c", WHOAMI6, "8086")
        out = lab.exec("shop/web", sys.executable, APP, "get", api6, "8086").stdout
        self.assertIn(f"peer={web6} ", out)
        rec = wait_for("same-node IPv6 record", lambda: [
            c for c in lab.connections("node1")
            if c["path"] == "local_handoff" and c["destination"] == f"[{api6}]:8086"])[-1]
        self.assertEqual(rec["source_principal"], "spiffe://cluster.local/ns/shop/sa/web")
        self.assertEqual(rec["destination_principal"], "spiffe://cluster.local/ns/shop/sa/api")


if __name__ == "__main__":
    unittest.main()
