"""A private containerd (Debian's, with its CRI plugin) inside a lab node, for
test_cri.py. Stdlib only.

It runs in the node's network namespace, so the CNI plugins it executes put the
bridge and veths where the lab's own pods are, with the node's CNI configuration
(<lab>/node<i>/net.d, which chains sluice-cni last) and the lab's plugin dir. It
never touches a system containerd: its own config file, root and state under a
temporary directory, its own socket, runc root and cgroup parent. The sandbox
image is built here from tests/cri (a static pause program packed by
pause_image.py) and imported with `ctr`; no registry is involved. cleanup()
removes everything it made, also after a failure: sandboxes, runc containers,
shims, mounts, network namespaces, cgroups, the directory.
"""
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from labkit import BUILD, LAB_DIR, REPO, _lab, run, stop_process, wait_for

CRI_CLIENT = os.path.join(BUILD, "tests", "cri", "cri_client")
PAUSE = os.path.join(BUILD, "tests", "cri", "sluice-pause")
PAUSE_IMAGE = os.path.join(REPO, "tests", "cri", "pause_image.py")
SANDBOX_IMAGE = "sluice.local/pause:1"
CGROUP_PARENT = "sluice-cri-test"
SNAPSHOTTER = "overlayfs"
SHIM_SOCKETS = "/run/containerd/s"

CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  stream_server_address = "127.0.0.1"
  netns_mounts_under_state_dir = true
  # The sandbox's oom_score_adj (-998) no lower than containerd's own: without
  # CAP_SYS_RESOURCE (this machine's root lacks it) runc cannot lower it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
"""


class Containerd:
    def __init__(self, node_index):
        self.node = node_index
        self.netns = _lab.netns_path(_lab.node_netns(node_index))
        self.dir = tempfile.mkdtemp(prefix="sluice-cri-", dir="/tmp")
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.log = os.path.join(self.dir, "containerd.log")
        self.proc = None
        self.sandboxes = []

    # ---------------------------------------------------------------- CRI
    def cri(self, *args, check=True, timeout=90):
        return run([CRI_CLIENT, "--endpoint", f"unix://{self.sock}", *args], check=check, timeout=timeout)

    def run_sandbox(self, name, namespace, uid):
        logs = os.path.join(self.dir, "pods", f"{namespace}_{name}_{uid}")
        os.makedirs(logs, exist_ok=True)
        p = self.cri("--name", name, "--namespace", namespace, "--uid", uid, "--log-dir", logs,
                     "--cgroup-parent", f"/{CGROUP_PARENT}", "run", check=False)
        if p.returncode != 0:
            raise AssertionError(f"RunPodSandbox failed: {p.stderr}\ncontainerd log:\n{self.log_tail()}")
        sid = json.loads(p.stdout)["id"]
        self.sandboxes.append(sid)
        return sid

    def status(self, sid):
        return json.loads(self.cri("status", sid).stdout)

    def stop(self, sid):
        self.cri("stop", sid)

    def remove(self, sid):
        self.cri("remove", sid)
        self.sandboxes.remove(sid)

    @staticmethod
    def netns_path(status):
        """The sandbox's network namespace, from the runtime spec in containerd's verbose info."""
        for ns in status["info"]["info"]["runtimeSpec"]["linux"]["namespaces"]:
            if ns["type"] == "network":
                return ns["path"]
        raise AssertionError(f"no network namespace in {status}")

    # ---------------------------------------------------------------- lifecycle
    def start(self):
        for b in (CRI_CLIENT, PAUSE):
            if not os.access(b, os.X_OK):
                raise AssertionError(f"{b} is missing: build the cri_client and sluice-pause targets")
        image = os.path.join(self.dir, "pause.tar")
        run([sys.executable, PAUSE_IMAGE, PAUSE, SANDBOX_IMAGE, image])
        config = os.path.join(self.dir, "config.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(d=self.dir, image=SANDBOX_IMAGE, snapshotter=SNAPSHOTTER,
                                  bin_dir=os.path.join(LAB_DIR, "cni-bin"),
                                  conf_dir=os.path.join(LAB_DIR, f"node{self.node}", "net.d")))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["nsenter", f"--net={self.netns}", "containerd", "--config", config],
                                         stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited ({self.proc.returncode}):\n{self.log_tail()}")
            return self.cri("--timeout", "2", "version", check=False).returncode == 0
        wait_for("containerd's CRI socket", up, timeout=30)
        run(["ctr", "--address", self.sock, "-n", "k8s.io", "images", "import", "--snapshotter", SNAPSHOTTER,
             image])

    def log_tail(self, n=30):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def cleanup(self):
        """Everything this instance made goes, whatever state it is in."""
        if self.proc and self.proc.poll() is None:
            for sid in list(self.sandboxes):  # as the kubelet would: stop, then remove
                self.cri("--timeout", "20", "stop", sid, check=False, timeout=30)
                self.cri("--timeout", "20", "remove", sid, check=False, timeout=30)
            stop_process(self.proc)
        # Containers the shims still run (containerd was killed, or a remove failed).
        runc_root = os.path.join(self.dir, "runc", "k8s.io")
        containers = os.listdir(runc_root) if os.path.isdir(runc_root) else []
        for cid in containers:
            run(["runc", "--root", runc_root, "kill", cid, "KILL"], check=False)
            run(["runc", "--root", runc_root, "delete", "--force", cid], check=False)
        for pid in self.shims():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A killed shim leaves its socket where containerd 1.6 puts every shim's:
        # /run/containerd/s/<sha256 of "<our socket>/<namespace>/<id>">.
        for cid in set(containers) | set(self.sandboxes):
            digest = hashlib.sha256(os.path.join(self.sock, "k8s.io", cid).encode()).hexdigest()
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(SHIM_SOCKETS, digest))
        self.unmount_all()
        self.remove_cgroups()
        shutil.rmtree(self.dir, ignore_errors=True)

    def shims(self):
        """The runc shims this containerd started (their -address is our socket)."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and self.sock.encode() in argv:
                out.append(int(pid))
        return out

    def mounts(self):
        """Mount points under our directory (rootfs, shm, netns), deepest first."""
        points = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point == self.dir or point.startswith(self.dir + "/"):
                    points.append(point)
        return sorted(points, key=len, reverse=True)

    def unmount_all(self):
        for point in self.mounts():
            run(["umount", "-l", point], check=False)

    @staticmethod
    def cgroup_dirs():
        """Our cgroup parent in every mounted hierarchy, where it exists."""
        root = "/sys/fs/cgroup"
        out = []
        for hierarchy in sorted(os.listdir(root)):
            d = os.path.join(root, hierarchy, CGROUP_PARENT)
            if os.path.isdir(d):
                out.append(d)
        return out

    def remove_cgroups(self):
        for d in self.cgroup_dirs():
            for sub, _, _ in sorted(os.walk(d), key=lambda w: len(w[0]), reverse=True):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
