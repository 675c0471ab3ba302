#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (oci-archive: a tar of an OCI image layout) without a
container engine: the layout of distroless/static's nonroot variant (passwd/group with user
65532, CA certificates, /tmp, /home/nonroot) plus one static binary.

    oci.py build IMAGE --binary FILE --name REF --out ARCHIVE   build the archive
    oci.py config IMAGE                                         print the image config (JSON)

IMAGE is one of the definitions below. The archive loads with `ctr images import` and pushes
with `skopeo copy oci-archive:ARCHIVE:TAG docker://REGISTRY/NAME:TAG`. Output is reproducible:
fixed timestamps and owners, sorted entries.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

# What each image runs. The operator's must match the Dockerfile's final stage (USER, EXPOSE,
# ENTRYPOINT, CMD); tests/it/image_oci.rs checks that it does.
IMAGES = {
    "operator": {
        "path": "/routestate",
        "entrypoint": ["/routestate"],
        "cmd": ["run"],
        "user": "65532:65532",
        "expose": ["8080/tcp"],
    },
    "game-server": {
        "path": "/game-server",
        "entrypoint": ["/game-server"],
        "cmd": [],
        "user": "65532:65532",
        "expose": ["8080/tcp"],
    },
    "pause": {
        "path": "/pause",
        "entrypoint": ["/pause"],
        "cmd": [],
        "user": "65535:65535",
        "expose": [],
    },
}

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
PATH = "/usr/local/bin:/usr/bin:/bin"


def fail(msg):
    print(f"oci.py: {msg}", file=sys.stderr)
    sys.exit(1)


def config(name):
    if name not in IMAGES:
        fail(f"unknown image {name!r} (one of: {', '.join(IMAGES)})")
    spec = IMAGES[name]
    cfg = {
        "User": spec["user"],
        "Env": [f"PATH={PATH}", f"SSL_CERT_FILE={CA_BUNDLE}"],
        "Entrypoint": spec["entrypoint"],
        "WorkingDir": "/",
    }
    if spec["cmd"]:
        cfg["Cmd"] = spec["cmd"]
    if spec["expose"]:
        cfg["ExposedPorts"] = {p: {} for p in spec["expose"]}
    return cfg


def layer(spec, binary):
    """The root filesystem as an uncompressed tar (bytes)."""
    entries = []

    def add(path, mode, data=None, uid=0, gid=0):
        entries.append((path, mode, data, uid, gid))

    for d, mode, owner in [
        ("etc", 0o755, 0),
        ("etc/ssl", 0o755, 0),
        ("etc/ssl/certs", 0o755, 0),
        ("home", 0o755, 0),
        ("home/nonroot", 0o700, 65532),
        ("root", 0o700, 0),
        ("tmp", 0o1777, 0),
    ]:
        add(d, mode | 0o040000, None, owner, owner)
    add("etc/passwd", 0o644, b"root:x:0:0:root:/root:/sbin/nologin\n"
        b"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    add("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")
    add("etc/nsswitch.conf", 0o644, b"hosts: files dns\n")
    try:
        with open(CA_BUNDLE, "rb") as f:
            add(CA_BUNDLE.lstrip("/"), 0o644, f.read())
    except OSError as e:
        fail(f"reading the CA bundle {CA_BUNDLE} (Debian package ca-certificates): {e}")
    try:
        with open(binary, "rb") as f:
            add(spec["path"].lstrip("/"), 0o755, f.read())
    except OSError as e:
        fail(f"reading the binary {binary}: {e}")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, data, uid, gid in sorted(entries):
            info = tarfile.TarInfo(path)
            info.mtime = EPOCH
            info.uid, info.gid = uid, gid
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = mode & 0o7777
                tar.addfile(info)
            else:
                info.mode = mode
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(name, binary, ref, out):
    spec = IMAGES[name] if name in IMAGES else fail(f"unknown image {name!r} (one of: {', '.join(IMAGES)})")
    if ":" not in ref.rsplit("/", 1)[-1]:
        fail(f"--name {ref!r} needs a tag (e.g. localhost/routestate:dev)")
    tag = ref.rsplit(":", 1)[1]
    raw = layer(spec, binary)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=EPOCH) as g:
        g.write(raw)
    layer_gz = gz.getvalue()
    created = "1970-01-01T00:00:00Z" if EPOCH == 0 else None
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config(name),
        "rootfs": {"type": "layers", "diff_ids": [blob(raw)]},
        "history": [{"created_by": f"hack/image/oci.py {name}"}],
    }
    if created:
        image_config["created"] = created
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blob(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": blob(layer_gz),
            "size": len(layer_gz),
        }],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(manifest_bytes),
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            # The tag for skopeo's oci-archive:FILE:TAG; the full name for `ctr images import`.
            "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": ref},
        }],
    }
    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True, indent=2).encode()),
    ]
    for data in (config_bytes, manifest_bytes, layer_gz):
        files.append(("blobs/sha256/" + blob(data).split(":", 1)[1], data))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    print(f"{out}: {ref} {blob(manifest_bytes)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    cfg = sub.add_parser("config", help="print an image's config")
    cfg.add_argument("image")
    b = sub.add_parser("build", help="write an oci-archive")
    b.add_argument("image")
    b.add_argument("--binary", required=True)
    b.add_argument("--name", required=True)
    b.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "config":
        print(json.dumps(config(args.image), indent=2, sort_keys=True))
    else:
        build(args.image, args.binary, args.name, args.out)


if __name__ == "__main__":
    main()
