"""Reading packages back: archive, extracted directory and OCI layout, every blob verified."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from aos_operator.digests import sha256_digest
from aos_operator.errors import InputError, PackageError
from aos_operator.image import BuildResult, build_package, open_package
from aos_operator.image.store import BlobStore


@pytest.fixture
def built(tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]) -> BuildResult:
    return build_package(
        example_tree, image_config, service_config, archive=tmp_path / "pkg.tar", oci_layout=tmp_path / "layout", tag="v1"
    )


def _extract(archive: Path, target: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.mark.parametrize("form", ["archive", "directory", "oci-layout"])
def test_every_form_reads_back_verified(tmp_path: Path, built: BuildResult, service_config: dict[str, Any], form: str) -> None:
    path = {"archive": tmp_path / "pkg.tar", "oci-layout": tmp_path / "layout"}.get(form) or _extract(
        tmp_path / "pkg.tar", tmp_path / "extracted"
    )
    with open_package(path) as package:
        assert package.kind == form
        assert package.manifest_bytes == built.manifest_bytes
        assert package.manifest_digest == built.manifest_digest
        assert package.manifest.layers[0].digest == built.layer.digest
        package.verify()
        for descriptor in package.manifest.descriptors:
            data = package.read_blob(descriptor.digest)
            assert (sha256_digest(data), len(data)) == (descriptor.digest, descriptor.size)
        assert package.service_config() == service_config
        assert package.image_config()["rootfs"]["diff_ids"] == [built.diff_id]
        with package.open_blob(built.layer.digest) as file:
            assert sha256_digest(gzip.decompress(file.read())) == built.diff_id


def test_streamed_blob_goes_into_a_store_verified(tmp_path: Path, built: BuildResult) -> None:
    store = BlobStore(tmp_path / "store")
    with open_package(tmp_path / "pkg.tar") as package:
        stored = store.put_stream(package.iter_blob(built.layer.digest), built.layer.digest, built.layer.size)
    assert stored.size == built.layer.size


def _corrupt_layout_blob(layout: Path, digest: str, data: bytes) -> None:
    path = layout / "blobs/sha256" / digest[7:]
    path.chmod(0o644)
    path.write_bytes(data)


def test_corrupt_blob_raises_naming_the_digest(tmp_path: Path, built: BuildResult) -> None:
    original = (tmp_path / "layout/blobs/sha256" / built.layer.digest[7:]).read_bytes()
    flipped = bytes([original[0] ^ 1]) + original[1:]
    _corrupt_layout_blob(tmp_path / "layout", built.layer.digest, flipped)
    with open_package(tmp_path / "layout") as package:
        with pytest.raises(PackageError, match=f"blob {built.layer.digest} is corrupt"):
            package.verify()
        package.read_blob(built.config.digest)  # the other blobs are still fine


def test_wrong_size_raises_naming_the_digest(tmp_path: Path, built: BuildResult) -> None:
    _corrupt_layout_blob(tmp_path / "layout", built.config.digest, b"{}")
    with open_package(tmp_path / "layout") as package:
        with pytest.raises(PackageError, match=f"blob {built.config.digest} has 2 bytes, the manifest says"):
            package.image_config()


def test_missing_and_unreferenced_blobs(tmp_path: Path, built: BuildResult) -> None:
    (tmp_path / "layout/blobs/sha256" / built.service_config.digest[7:]).unlink()
    with open_package(tmp_path / "layout") as package:
        with pytest.raises(PackageError, match=f"blob {built.service_config.digest} is missing"):
            package.service_config()
        stranger = sha256_digest(b"not in the manifest")
        with pytest.raises(PackageError, match=f"blob {stranger} is not referenced"):
            package.read_blob(stranger)


def test_tampered_archive_member_is_detected(tmp_path: Path, built: BuildResult) -> None:
    data = bytearray((tmp_path / "pkg.tar").read_bytes())
    manifest_at = data.index(b'{"aosService"')
    # Change a byte of the service config blob, which precedes manifest.json in the archive.
    service_at = data.rindex(b'"alertRules"', 0, manifest_at)
    data[service_at + 1] ^= 0x01
    (tmp_path / "pkg.tar").write_bytes(bytes(data))
    with open_package(tmp_path / "pkg.tar") as package:
        with pytest.raises(PackageError, match=f"blob {built.service_config.digest} is corrupt"):
            package.verify()


def test_gzipped_archive_is_refused_with_a_hint(tmp_path: Path, built: BuildResult) -> None:
    (tmp_path / "pkg.tar.gz").write_bytes(gzip.compress((tmp_path / "pkg.tar").read_bytes()))
    with pytest.raises(PackageError, match="gzip-compressed"):
        open_package(tmp_path / "pkg.tar.gz")


def test_not_a_package(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="neither an OCI layout"):
        open_package(tmp_path / "empty")
    (tmp_path / "junk.tar").write_bytes(b"\0" * 1024)
    with pytest.raises(PackageError, match="no manifest.json"):
        open_package(tmp_path / "junk.tar")
    with pytest.raises(InputError, match="no such package"):
        open_package(tmp_path / "missing")


def test_bad_manifest_names_the_field(tmp_path: Path, built: BuildResult) -> None:
    directory = _extract(tmp_path / "pkg.tar", tmp_path / "extracted")
    manifest = json.loads((directory / "manifest.json").read_bytes())
    manifest["layers"][0]["digest"] = "sha256:nothex"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"layers\[0\]\.digest: 'sha256:nothex' is not"):
        open_package(directory)


def test_layout_with_several_manifests_needs_a_tag(tmp_path: Path, built: BuildResult) -> None:
    index_path = tmp_path / "layout/index.json"
    index = json.loads(index_path.read_bytes())
    second = dict(index["manifests"][0], annotations={"org.opencontainers.image.ref.name": "v2"})
    index["manifests"].append(second)
    index_path.write_text(json.dumps(index))
    with pytest.raises(PackageError, match="give a tag from: v1, v2"):
        open_package(tmp_path / "layout")
    with open_package(tmp_path / "layout", tag="v2") as package:
        assert package.manifest_digest == built.manifest_digest
    with pytest.raises(PackageError, match="tag 'v3'"):
        open_package(tmp_path / "layout", tag="v3")


def test_corrupt_manifest_blob_in_layout(tmp_path: Path, built: BuildResult) -> None:
    tampered = built.manifest_bytes.replace(b'"size":', b'"sizf":', 1)
    _corrupt_layout_blob(tmp_path / "layout", built.manifest_digest, tampered)
    with pytest.raises(PackageError, match=f"manifest blob {built.manifest_digest} is corrupt"):
        open_package(tmp_path / "layout")
