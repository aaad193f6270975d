"""Service packages that carry Aos layers in layers[1..], checked with skopeo, umoci, GNU tar and gzip."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aos_operator.errors import InputError, PackageError
from aos_operator.image import build_package, open_package
from aos_operator.image.aos_layer import AosLayer, build_aos_layer, open_layer_package, write_layer_package
from aos_operator.image.store import BlobStore

pytestmark = pytest.mark.root  # umoci unpack keeps owners, which needs root


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True)


def _layer_tree(root: Path, name: str) -> Path:
    (root / "usr" / "lib" / name).mkdir(parents=True)
    (root / "usr" / "lib" / name / "module.py").write_text(f"NAME = {name!r}\n")
    (root / "etc").mkdir()
    (root / "etc" / ".wh.motd").write_bytes(b"")  # an OCI whiteout, carried as an empty file
    return root


def _layers(tmp_path: Path) -> list[AosLayer]:
    store = BlobStore(tmp_path / "store")
    return [
        build_aos_layer(_layer_tree(tmp_path / "first", "first"), "first-layer", "1.2.0", store=store),
        build_aos_layer(_layer_tree(tmp_path / "second", "second"), "second-layer", "2.0.0-rc.1", store=store),
    ]


def _gunzip_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def test_manifest_lists_the_layers_after_the_service_layer_with_type_and_annotations(
    tmp_path: Path, example_tree_factory: Any, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    layers = _layers(tmp_path)
    built = build_package(example_tree_factory(tmp_path / "src"), image_config, service_config,
                          oci_layout=tmp_path / "layout", archive=tmp_path / "pkg.tar", layers=layers)
    manifest = json.loads(built.manifest_bytes)
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert "annotations" not in manifest["layers"][0]
    assert [entry["mediaType"] for entry in manifest["layers"][1:]] == ["application/vnd.aos.image.layer.v1.tar+gzip"] * 2
    assert [(entry["annotations"]["io.aosedge.layer.uid"], entry["annotations"]["io.aosedge.layer.version"])
            for entry in manifest["layers"][1:]] == [("first-layer", "1.2.0"), ("second-layer", "2.0.0-rc.1")]
    package = open_package(tmp_path / "pkg.tar")
    package.verify()
    config = package.image_config()
    blobs = tmp_path / "layout" / "blobs" / "sha256"
    # diff_ids: the uncompressed digest of every layer in manifest order, computed here independently
    assert config["rootfs"]["diff_ids"] == [_gunzip_digest(blobs / entry["digest"].split(":")[1])
                                            for entry in manifest["layers"]]
    listing = _run("tar", "-tzf", blobs / layers[0].descriptor.digest.split(":")[1])
    assert listing.returncode == 0, listing.stderr
    names = listing.stdout.split()
    assert "usr/lib/first/module.py" in names and "etc/.wh.motd" in names
    assert not any(name.startswith("/") for name in names)


def test_the_same_tree_gives_the_same_layer_and_a_changed_file_another(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    tree = _layer_tree(tmp_path / "tree", "lib")
    first = build_aos_layer(tree, "lib", "1.0.0", store=store)
    again = build_aos_layer(tree, "lib", "1.0.0", store=BlobStore(tmp_path / "other"), cache_dir=None)
    assert first.descriptor == again.descriptor
    (tree / "usr" / "lib" / "lib" / "module.py").write_text("NAME = 'changed'\n")
    changed = build_aos_layer(tree, "lib", "1.0.0", store=store)
    assert changed.descriptor.digest != first.descriptor.digest


def test_skopeo_reads_and_copies_every_layer(
    tmp_path: Path, example_tree_factory: Any, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    layers = _layers(tmp_path)
    built = build_package(example_tree_factory(tmp_path / "src"), image_config, service_config,
                          oci_layout=tmp_path / "layout", tag="v1", layers=layers)
    inspected = _run("skopeo", "inspect", f"oci:{tmp_path / 'layout'}:v1")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Layers"] == [built.layer.digest, *(layer.descriptor.digest for layer in layers)]
    copied = _run("skopeo", "copy", f"oci:{tmp_path / 'layout'}:v1", f"dir:{tmp_path / 'copy'}")
    assert copied.returncode == 0, copied.stderr
    for layer in layers:
        blob = tmp_path / "copy" / layer.descriptor.digest.split(":")[1]
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer.descriptor.digest
    copied_manifest = json.loads((tmp_path / "copy" / "manifest.json").read_bytes())
    assert copied_manifest["layers"][1]["annotations"]["io.aosedge.layer.uid"] == "first-layer"


def test_umoci_unpacks_the_service_layer_alone_and_refuses_the_aos_layer_type(
    tmp_path: Path, example_tree_factory: Any, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    """What the README says of umoci: it does not stack Aos layers, it stops at their media type."""
    tree = example_tree_factory(tmp_path / "src")
    build_package(tree, image_config, service_config, oci_layout=tmp_path / "plain", tag="v1")
    plain = _run("umoci", "unpack", "--image", f"{tmp_path / 'plain'}:v1", tmp_path / "bundle-plain")
    assert plain.returncode == 0, plain.stderr
    build_package(tree, image_config, service_config, oci_layout=tmp_path / "layered", tag="v1",
                  layers=_layers(tmp_path))
    assert _run("umoci", "stat", "--image", f"{tmp_path / 'layered'}:v1").returncode == 0
    layered = _run("umoci", "unpack", "--image", f"{tmp_path / 'layered'}:v1", tmp_path / "bundle-layered")
    assert layered.returncode != 0
    assert "application/vnd.aos.image.layer.v1.tar+gzip" in layered.stderr


def test_a_layer_package_round_trips_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    layer = _layers(tmp_path)[0]
    write_layer_package(tmp_path / "layer.tar", layer)
    listing = _run("tar", "-tf", tmp_path / "layer.tar")
    assert listing.returncode == 0 and "./layer.json" in listing.stdout.split()
    read = open_layer_package(tmp_path / "layer.tar", BlobStore(tmp_path / "read"))
    assert (read.uid, read.version, read.descriptor, read.diff_id) == (layer.uid, layer.version, layer.descriptor,
                                                                       layer.diff_id)
    damaged = bytearray((tmp_path / "layer.tar").read_bytes())
    offset = damaged.index(layer.blob.path.read_bytes())
    damaged[offset + 20] ^= 0xFF
    (tmp_path / "damaged.tar").write_bytes(bytes(damaged))
    with pytest.raises(PackageError, match=layer.descriptor.digest):
        open_layer_package(tmp_path / "damaged.tar", BlobStore(tmp_path / "read2"))


def test_a_uid_given_twice_is_refused(
    tmp_path: Path, example_tree_factory: Any, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    layer = _layers(tmp_path)[0]
    with pytest.raises(InputError, match="first-layer"):
        build_package(example_tree_factory(tmp_path / "src"), image_config, service_config,
                      oci_layout=tmp_path / "layout", layers=[layer, layer])
    assert not (tmp_path / "layout").exists()
