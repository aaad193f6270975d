"""Test service packages, written with Python's tarfile and gzip.

build_test_package() writes a package directory as AosEdge devices receive it (manifest.json with
an aosService descriptor + blobs/sha256/<hex>). It stands in for the image room's package builder
until that lands; the lead swaps it for the real builder. Used by the runtime tests and
benchmarks/run.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FileContent = bytes | str | tuple[bytes | str, int]  # content, or (content, mode)
ExtraMember = tuple[tarfile.TarInfo, bytes | None]


def _blob(directory: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build_test_layer(files: Mapping[str, FileContent], extra_members: Sequence[ExtraMember] = ()) -> bytes:
    """A tar of `files` (parents added as directories), then `extra_members` as given (hostile ones too)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for path in sorted(files):
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            content = files[path]
            data, mode = content if isinstance(content, tuple) else (content, 0o644)
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode = len(raw), mode
            tar.addfile(info, io.BytesIO(raw))
        for info, data in extra_members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def build_test_package(directory: Path, files: Mapping[str, FileContent] | None = None, *,
                       cmd: Sequence[str], entrypoint: Sequence[str] = (), env: Sequence[str] = (),
                       working_dir: str = "", service_config: Mapping[str, Any] | None = None,
                       image_os: str = "linux", extra_members: Sequence[ExtraMember] = (),
                       layer: bytes | None = None, exposed_ports: Sequence[str] = ()) -> Path:
    """Write a test package into `directory`; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    tar = layer if layer is not None else build_test_layer(files or {}, extra_members)
    compressed = gzip.compress(tar, mtime=0)
    image_config = {
        "architecture": "amd64", "os": image_os,
        "config": {"Cmd": list(cmd), "Entrypoint": list(entrypoint) or None, "Env": list(env),
                   "WorkingDir": working_dir, **({"ExposedPorts": {port: {} for port in exposed_ports}}
                                                 if exposed_ports else {})},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
    }
    config = _blob(directory, json.dumps(image_config).encode())
    service = _blob(directory, json.dumps(dict(service_config or {})).encode())
    layer_descriptor = _blob(directory, compressed)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "aosService": {"mediaType": "application/vnd.aos.service.config.v1+json", **service},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_descriptor}],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return directory


# --- Aos layers (manifest layers[1..]) ------------------------------------------------------------
# The build side adds layers[1..] to the package builder in parallel; until then the tests add the
# descriptors here, with blobs made by the image room's own layer writer (or raw bytes for hostile ones).

AOS_LAYER_MEDIA_TYPE = "application/vnd.aos.image.layer.v1.tar+gzip"


def build_aos_layer_blob(tree: Path, scratch: Path) -> tuple[bytes, str]:
    """The gzip tar blob of the directory `tree`, written by image/layer.py; and its diff_id."""
    from aos_operator.image.deflate import Compression
    from aos_operator.image.layer import build_layer
    from aos_operator.image.progress import ProgressReporter
    from aos_operator.image.store import BlobStore
    from aos_operator.image.tree import scan_tree

    layer = build_layer(scan_tree(tree), store=BlobStore(scratch), cache=None, compression=Compression(),
                        mtime=0, reporter=ProgressReporter(None), scan_started_ns=0)
    return layer.path.read_bytes(), layer.diff_id


def add_aos_layers(package: Path, layers: Sequence[tuple[bytes, str] | bytes], *,
                   media_type: str = AOS_LAYER_MEDIA_TYPE) -> list[str]:
    """Append Aos layers (blob, diff_id) or raw blobs to the package's manifest as layers[1..], in
    order, with the contract's annotations; the image config's diff_ids follow. Returns their digests."""
    manifest = json.loads((package / "manifest.json").read_text())
    config_hex = manifest["config"]["digest"].split(":", 1)[1]
    image_config = json.loads((package / "blobs" / "sha256" / config_hex).read_bytes())
    digests = []
    for number, layer in enumerate(layers, start=len(manifest["layers"])):
        blob, diff_id = layer if isinstance(layer, tuple) else (layer, "sha256:" + hashlib.sha256(
            gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer).hexdigest())
        descriptor = _blob(package, blob)
        manifest["layers"].append({"mediaType": media_type, **descriptor, "annotations": {
            "io.aosedge.layer.uid": f"layer-{number}", "io.aosedge.layer.version": "1.0.0"}})
        image_config["rootfs"]["diff_ids"].append(diff_id)
        digests.append(descriptor["digest"])
    manifest["config"].update(_blob(package, json.dumps(image_config).encode()))
    (package / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return digests


def gzip_tar(files: Mapping[str, FileContent], extra_members: Sequence[ExtraMember] = ()) -> bytes:
    """A raw layer blob written with tarfile: for layers the image room's writer would never make."""
    return gzip.compress(build_test_layer(files, extra_members), mtime=0)
