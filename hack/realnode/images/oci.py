"""Write an OCI image layout archive from plain layer tarballs, without a daemon or registry.

    python3 oci.py SPEC.json OUT.tar

SPEC: {"layers": {"<id>": "<path of an uncompressed layer tar>"},
       "images": [{"name": "registry.local/x:tag", "layers": ["<id>", ...],
                   "config": {<OCI image config "config" object>}}]}

Each layer is gzipped once (deterministically: no name, mtime 0) and shared by every
image that lists it. The index annotates each manifest with the names containerd
(`io.containerd.image.name`) and the OCI spec (`org.opencontainers.image.ref.name`)
read, so `ctr images import` registers every image under its full name.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

CREATED = "1980-01-01T00:00:00Z"


def _digest_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.split(":")[1]).write_bytes(data)
    return digest, len(data)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(spec: dict, out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        root = Path(tmp) / "layout"
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layers: dict[str, tuple[str, str, int]] = {}  # id -> (diff_id, digest, size)
        for layer_id, src in spec["layers"].items():
            diff_id, _ = _digest_file(Path(src))
            gz = Path(tmp) / f"{layer_id}.tar.gz"
            with (
                open(src, "rb") as fin,
                open(gz, "wb") as raw,
                gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6
                ) as fout,
            ):
                shutil.copyfileobj(fin, fout, 1 << 20)
            digest, size = _digest_file(gz)
            gz.rename(blobs / digest.split(":")[1])
            layers[layer_id] = (diff_id, digest, size)
        manifests = []
        for image in spec["images"]:
            ids = image["layers"]
            config = {
                "created": CREATED,
                "architecture": "amd64",
                "os": "linux",
                "config": image["config"],
                "rootfs": {"type": "layers", "diff_ids": [layers[i][0] for i in ids]},
                "history": [
                    {"created": CREATED, "created_by": "hack/realnode/images"} for _ in ids
                ],
            }
            cdigest, csize = _blob(blobs, _canonical(config))
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": cdigest,
                    "size": csize,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layers[i][1],
                        "size": layers[i][2],
                    }
                    for i in ids
                ],
            }
            mdigest, msize = _blob(blobs, _canonical(manifest))
            name = image["name"]
            manifests.append(
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": mdigest,
                    "size": msize,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            )
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (root / "index.json").write_bytes(
            _canonical(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": manifests,
                }
            )
        )
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            for path in sorted(root.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if info.isfile():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        partial.rename(out)


def directory_layer(src: Path, out: Path) -> None:
    """A layer tar of a directory tree: root-owned, mtime 0, sorted (deterministic)."""
    with tarfile.open(out, "w") as tar:
        for path in sorted(src.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(src)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "layer":
        directory_layer(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 3:
        build(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
