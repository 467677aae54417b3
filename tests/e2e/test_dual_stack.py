#!/usr/bin/python3
"""Issue 15 (dual stack), end to end: the lab's --ip-family, pods with addresses of both
families, IPv6 routed between nodes, the pods' IPv6 addresses carried by discovery (CNI
prevResult -> agent, Pod status.podIPs -> control plane -> every agent), the IPv4 mesh
unchanged on a dual-stack lab, and an IPv6-only pod refused enrollment with a clear error.
The capture, mTLS, Services and policy suites also run whole on a dual-stack lab
(their *DualStackTest classes)."""
import ipaddress
import sys
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
        cls.legacy_client_ip = lab.pod("legacy", "client", node="node1", sa="legacy")
        lab.pod("legacy", "server", node="node2", sa="legacy")
        for node, pod in (("node1", "shop/client"), ("node2", "shop/server")):
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

    def test_ipv6_to_an_enrolled_pod_is_dropped_and_from_it_is_captured(self):
        # No proxy listener takes IPv6 on this branch: the SYN is dropped at the enrolled
        # pod's interface rather than let to the app around mTLS and policy, and counted.
        lab = self.lab
        server6 = lab.ip("shop", "server", 6)
        refused = lab.exec("legacy/client", sys.executable, APP, "get", server6, "8086", "3", check=False)
        self.assertNotEqual(refused.returncode, 0, refused.stdout)
        self.assertIn("timed out", refused.stderr)
        self.assertGreater(lab.ctl("node2", "stats")["bpf"]["ip6_tc_no_listener_dropped"], 0)
        # The enrolled pod's own IPv6 connections are captured by connect6 (to its [::1]:15001):
        # with no proxy listener there they are refused, never sent around the mesh.
        legacy6 = lab.ip("legacy", "server", 6)
        out = lab.exec("shop/client", sys.executable, APP, "get", legacy6, "8086", "3", check=False)
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertIn("refused", out.stderr)
        self.assertGreater(lab.ctl("node1", "stats")["bpf"]["ip6_connect_redirected"], 0)

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

    def test_ipv6_only_pods_talk_and_an_enrolled_one_is_refused_clearly(self):
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

        # Sluice meshes pods over IPv4: an IPv6-only pod in an enrolled namespace fails its
        # CNI ADD (fail closed) with an error saying why and what to do, and leaves nothing.
        lab.lab("ns", "label", "shop", f"{MESH}=enabled")
        add = lab.lab("pod", "add", "shop", "web", "--node", "node1", "--sa", "web", check=False)
        self.assertNotEqual(add.returncode, 0)
        self.assertIn("only an IPv6 address", add.stderr)
        self.assertIn("dual stack", add.stderr)
        self.assertNotIn("shop/web", lab.lab("pod", "list").stdout)
        self.assertNotIn("shop/web", [f"{p['namespace']}/{p['name']}" for p in lab.config_dump("node1")["pods"]
                                      if p["enrolled"]])


if __name__ == "__main__":
    unittest.main()
