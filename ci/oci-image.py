#!/usr/bin/env python3
"""Writes one OCI image layout (and an OCI archive of it) without a container engine.

The image is one layer made of files of this machine: executables with the exact shared
libraries they link (their ldd closure), files of installed Debian packages, and small files
given inline (passwd, group). Everything is written deterministically (sorted entries, mtime 0,
uid/gid 0, gzip without a timestamp), so the same inputs give the same digests.

  oci-image.py --layout DIR --archive FILE --name REPO --tag TAG --user UID \
      [--binary SRC:DEST]... [--package NAME]... [--symlink DEST:TARGET]... \
      [--dir PATH:MODE]... [--text DEST:CONTENT]... [--entrypoint ARG]... [--cmd ARG]... \
      [--label K=V]... [--env K=V]...

Prints the manifest digest (sha256:...) on stdout.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile

SKIP_PACKAGE_PREFIXES = ("/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/lintian",
                         "/usr/share/locale", "/usr/share/bug", "/usr/share/bash-completion")


def fail(msg):
    print(f"oci-image: {msg}", file=sys.stderr)
    sys.exit(1)


def ldd_closure(path):
    """The shared libraries `path` loads (resolved paths), with the dynamic loader."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    text = out.stdout + out.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if out.returncode != 0:
        fail(f"ldd {path}: {text.strip()}")
    libs = []
    for line in text.splitlines():
        line = line.strip()
        if "=> not found" in line:
            fail(f"{path} needs {line.split()[0]}, which this machine does not have")
        m = re.match(r"\S+ => (/\S+) \(", line) or re.match(r"(/\S+) \(", line)
        if m:
            libs.append(m.group(1))
    return libs


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


class Tree:
    """The files of the layer: dest path -> ('file', src) | ('symlink', target) | ('dir', mode)
    | ('text', bytes, mode)."""

    def __init__(self):
        self.entries = {}

    def add_dir(self, path, mode=0o755):
        path = path.rstrip("/") or "/"
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/" + "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = ("dir", 0o755)
        self.entries[path] = ("dir", mode)

    def _parent(self, dest):
        parent = os.path.dirname(dest)
        if parent not in ("", "/") and parent not in self.entries:
            self.add_dir(parent)

    def add_host_path(self, src, dest=None):
        """Adds a host file at dest (default: the same path), following symlinks as symlinks
        and adding their targets too; ELF files bring their ldd closure."""
        dest = dest or src
        if dest in self.entries:
            return
        self._parent(dest)
        if os.path.islink(src):
            target = os.readlink(src)
            self.entries[dest] = ("symlink", target)
            resolved = os.path.normpath(os.path.join(os.path.dirname(src), target))
            self.add_host_path(resolved)
            return
        if os.path.isdir(src):
            self.add_dir(dest, stat.S_IMODE(os.stat(src).st_mode))
            return
        if not os.path.isfile(src):
            fail(f"{src} does not exist on this machine")
        self.entries[dest] = ("file", src)
        if is_elf(src):
            for lib in ldd_closure(src):
                self.add_host_path(lib)
        # A library's directory may be reached through a symlinked directory (/lib -> usr/lib).
        real = os.path.realpath(src)
        if real != src and real not in self.entries:
            self.add_host_path(real)

    def add_package(self, name):
        out = subprocess.run(["dpkg", "-L", name], capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"Debian package {name} is not installed (apt-get install {name}): {out.stderr.strip()}")
        for path in out.stdout.splitlines():
            path = path.strip()
            if not path or path == "/." or path.startswith(SKIP_PACKAGE_PREFIXES):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                continue
            if os.path.lexists(path):
                self.add_host_path(path)

    def add_symlink(self, dest, target):
        self._parent(dest)
        self.entries[dest] = ("symlink", target)

    def add_text(self, dest, content, mode=0o644):
        self._parent(dest)
        self.entries[dest] = ("text", content.encode(), mode)

    def layer(self):
        """(gzipped tar bytes, sha256 of the uncompressed tar)."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for dest in sorted(self.entries):
                entry = self.entries[dest]
                info = tarfile.TarInfo(dest.lstrip("/"))
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                kind = entry[0]
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    info.mode = entry[1]
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = entry[1]
                    info.mode = 0o777
                    tar.addfile(info)
                elif kind == "text":
                    info.size = len(entry[1])
                    info.mode = entry[2]
                    tar.addfile(info, io.BytesIO(entry[1]))
                else:
                    src = entry[1]
                    st = os.stat(src)
                    info.size = st.st_size
                    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                    with open(src, "rb") as f:
                        tar.addfile(info, f)
        tar_bytes = raw.getvalue()
        diff_id = hashlib.sha256(tar_bytes).hexdigest()
        gz = io.BytesIO()
        with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as g:
            g.write(tar_bytes)
        return gz.getvalue(), diff_id


def write_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return f"sha256:{digest}", len(data)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", required=True)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--name", required=True, help="repository, e.g. kars.local/kars-router")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--user", required=True, help="numeric uid[:gid] the image runs as")
    ap.add_argument("--binary", action="append", default=[], help="SRC:DEST, with its ldd closure")
    ap.add_argument("--package", action="append", default=[], help="an installed Debian package's files")
    ap.add_argument("--symlink", action="append", default=[], help="DEST:TARGET")
    ap.add_argument("--dir", action="append", default=[], help="PATH:OCTAL-MODE")
    ap.add_argument("--text", action="append", default=[], help="DEST:CONTENT (\\n for newlines)")
    ap.add_argument("--entrypoint", action="append", default=[])
    ap.add_argument("--cmd", action="append", default=[])
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--env", action="append", default=[])
    a = ap.parse_args()

    tree = Tree()
    for pkg in a.package:
        tree.add_package(pkg)
    for pair in a.binary:
        src, _, dest = pair.partition(":")
        tree.add_host_path(src, dest or src)
    for pair in a.symlink:
        dest, _, target = pair.partition(":")
        tree.add_symlink(dest, target)
    for pair in a.dir:
        path, _, mode = pair.partition(":")
        tree.add_dir(path, int(mode or "755", 8))
    for pair in a.text:
        dest, _, content = pair.partition(":")
        tree.add_text(dest, content.replace("\\n", "\n"))

    os.makedirs(a.layout, exist_ok=True)
    layer, diff_id = tree.layer()
    layer_digest, layer_size = write_blob(a.layout, layer)
    labels = dict(kv.split("=", 1) for kv in a.label)
    env = ["PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"] + a.env
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": a.user, "Env": env, "Entrypoint": a.entrypoint or None,
                   "Cmd": a.cmd or None, "Labels": labels, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "ci/oci-image.py", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    config_digest, config_size = write_blob(a.layout, canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
        "annotations": {k: v for k, v in labels.items() if k.startswith("org.opencontainers.image.")},
    }
    manifest_digest, manifest_size = write_blob(a.layout, canonical(manifest))
    descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "digest": manifest_digest, "size": manifest_size}
    # Two names for containerd's import: the tag, and the digest reference pods use (the CRI
    # finds an image by `repo@digest` only under that name; a pull would record it the same way).
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            dict(descriptor, annotations={"org.opencontainers.image.ref.name": a.tag,
                                          "io.containerd.image.name": f"{a.name}:{a.tag}"}),
            dict(descriptor, annotations={"io.containerd.image.name": f"{a.name}@{manifest_digest}"}),
        ],
    }
    with open(os.path.join(a.layout, "index.json"), "wb") as f:
        f.write(canonical(index))
    with open(os.path.join(a.layout, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))

    # The archive `ctr images import` reads: the layout as a tar, deterministic too.
    with tarfile.open(a.archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(a.layout):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, a.layout)
                info = tar.gettarinfo(path, rel)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    print(manifest_digest)


if __name__ == "__main__":
    main()
