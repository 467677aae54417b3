#!/usr/bin/python3
"""pause_image.py BINARY IMAGE_NAME OUT.tar — the pod sandbox image, built locally.

Packs one static program (tests/cri/pause.c) as /pause in a single-layer OCI image
and writes it as an OCI image-layout tarball (oci-layout, index.json, blobs/sha256/...),
the format `ctr images import` reads. No registry, no base image: everything in the
image is written here. IMAGE_NAME (e.g. sluice.local/pause:1) goes into the index's
io.containerd.image.name annotation, the name containerd gives the imported image.
"""
import hashlib
import io
import json
import sys
import tarfile


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def add(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def build(binary, name, out):
    with open(binary, "rb") as f:
        program = f.read()
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        add(layer, "pause", program, 0o755)
    layer = layer_buf.getvalue()
    layer_digest, layer_size = blob(layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},  # uncompressed: diff_id == digest
        "history": [{"created_by": "tests/cri/pause_image.py"}],
    }, sort_keys=True).encode()
    config_digest, config_size = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }, sort_keys=True).encode()
    manifest_digest, manifest_size = blob(manifest)
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name.rpartition(":")[2]}}],
    }, sort_keys=True).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add(tar, "index.json", index)
        for digest, data in ((layer_digest, layer), (config_digest, config), (manifest_digest, manifest)):
            add(tar, "blobs/sha256/" + digest.split(":")[1], data)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 else 2)
    build(*sys.argv[1:])
