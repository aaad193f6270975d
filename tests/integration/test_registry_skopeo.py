"""Cross-checks with skopeo: it reads what we push, and we pull what it pushes.

skopeo keeps the manifest bytes (so `aosService` survives) but copies only config and layers:
the aosService blob must reach the registry some other way, which the last test shows.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from registry_support import OCI_MANIFEST, Package, RegistryServer, make_package

from aos_operator.errors import RegistryError
from aos_operator.registry import BytesBlob, RegistryClient


def skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def write_oci_layout(package: Package, directory: Path, tag: str) -> Path:
    """An OCI image layout by hand: oci-layout, index.json, blobs (manifest included)."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for digest, data in {**package.blobs, package.digest: package.manifest}.items():
        (blobs / digest.split(":")[1]).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": package.digest,
                "size": len(package.manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def test_skopeo_reads_what_we_push(registry: RegistryServer, tmp_path: Path) -> None:
    package = make_package(layer_sizes=(45_000, 5_000))
    reference = f"{registry.host}/aos/ours:v1"
    with RegistryClient() as client:
        client.push(reference, package.manifest, OCI_MANIFEST, package.sources())
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reference}").stdout
    assert raw == package.manifest
    assert json.loads(raw)["aosService"]["digest"] == package.service_digest

    skopeo("copy", "--src-tls-verify=false", f"docker://{reference}", f"oci:{tmp_path / 'layout'}:v1")
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == package.digest
    copied = tmp_path / "layout" / "blobs" / "sha256"
    for digest in [package.config_digest, *package.layer_digests]:
        assert (copied / digest.split(":")[1]).read_bytes() == package.blobs[digest]


def test_we_pull_what_skopeo_pushes(registry: RegistryServer, tmp_path: Path) -> None:
    package = make_package(name="fromskopeo", layer_sizes=(35_000,))
    layout = write_oci_layout(package, tmp_path / "layout", "v1")
    reference = f"{registry.host}/aos/theirs:v1"
    with RegistryClient() as client:
        # skopeo does not know aosService: upload that one blob ourselves first.
        client.push_blob(reference, BytesBlob(package.blobs[package.service_digest]))
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{reference}")
        pulled = client.pull(reference, tmp_path / "pkg")
    assert pulled.digest == package.digest
    assert (tmp_path / "pkg" / "manifest.json").read_bytes() == package.manifest
    for digest, data in package.blobs.items():
        stored = (tmp_path / "pkg" / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == digest.split(":")[1] and stored == data


def test_skopeo_alone_leaves_aos_service_blob_behind(registry: RegistryServer, tmp_path: Path) -> None:
    package = make_package(name="incomplete", layer_sizes=(10_000,))
    layout = write_oci_layout(package, tmp_path / "layout", "v1")
    reference = f"{registry.host}/aos/incomplete:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{reference}")
    with RegistryClient() as client:
        assert not client.blob_exists(reference, package.service_digest)
        with pytest.raises(RegistryError) as caught:
            client.pull(reference, tmp_path / "pkg")
    assert package.service_digest in str(caught.value) and "404" in str(caught.value)
    assert not (tmp_path / "pkg" / "manifest.json").exists()
