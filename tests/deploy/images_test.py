#!/usr/bin/env python3
"""Builds the three images with tools/build-images.sh (buildah, offline) and
checks each docker archive the way a runtime would use it: the tag, the
entrypoint and user from the image config, and the entrypoint running
`--help` chrooted into the unpacked layers. Root-only (buildah, chroot).

Usage: images_test.py BUILD_DIR
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
IMAGES = {  # image: (binary, user)
    "agent": ("sluice-agent", "0:0"),
    "controlplane": ("sluice-controlplane", "65532:65532"),
    "cni": ("sluice-cni", "0:0"),
}
TAG = "test"


def check_archive(path, image, binary, user, workdir):
    problems = []
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        if len(manifest) != 1:
            return [f"{path}: {len(manifest)} images in the archive, expected 1"]
        entry = manifest[0]
        tags = entry.get("RepoTags") or []
        if f"sluice/{image}:{TAG}" not in [t.removeprefix("localhost/") for t in tags]:
            problems.append(f"{path}: tags {tags}, expected sluice/{image}:{TAG}")
        config = json.load(tar.extractfile(entry["Config"]))["config"]
        if config.get("Entrypoint") != [f"/usr/local/bin/{binary}"]:
            problems.append(f"{path}: entrypoint {config.get('Entrypoint')}")
        if config.get("User") != user:
            problems.append(f"{path}: user {config.get('User')!r}, expected {user!r}")
        rootfs = os.path.join(workdir, f"rootfs-{image}")
        os.makedirs(rootfs)
        for layer in entry["Layers"]:
            with tarfile.open(fileobj=tar.extractfile(layer)) as layer_tar:
                layer_tar.extractall(rootfs)
    run = subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", rootfs, f"/usr/local/bin/{binary}", "--help"],
                         env={}, capture_output=True, text=True)
    if run.returncode != 0 or binary not in run.stdout:
        problems.append(f"{path}: {binary} --help in the unpacked image failed "
                        f"(exit {run.returncode}): {run.stdout[-500:]}{run.stderr[-500:]}")
    return problems


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    build = sys.argv[1]
    if os.geteuid() != 0:
        print("FAIL: this test needs root (buildah storage, chroot)")
        return 1
    if not shutil.which("buildah"):
        print("FAIL: buildah is not installed; run `bash tools/deps.sh`")
        return 1
    workdir = tempfile.mkdtemp(prefix="sluice-images-test-")
    try:
        out = os.path.join(workdir, "out")
        subprocess.run(["bash", os.path.join(REPO, "tools", "build-images.sh"), build, out, TAG],
                       check=True)
        problems = []
        for image, (binary, user) in IMAGES.items():
            found = check_archive(os.path.join(out, f"sluice-{image}.tar"), image, binary, user,
                                  workdir)
            problems += found
            if not found:
                print(f"ok   sluice/{image}:{TAG}: entrypoint {binary}, user {user}, "
                      f"runs from its own layers")
        for p in problems:
            print(f"FAIL {p}")
        return 1 if problems else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
