"""Our packages checked by the real tools: skopeo, umoci, GNU tar and gzip."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aos_operator.image import BuildResult, build_package, open_package

pytestmark = pytest.mark.root  # umoci unpack keeps owners, which needs root


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    environment = {**os.environ, "TZ": "UTC"}  # tar prints dates in local time
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, env=environment)
    assert done.returncode == 0, f"{command} failed: {done.stderr}"
    return done.stdout


def _build(tree: Path, out: Path, image_config: dict[str, Any], service_config: dict[str, Any]) -> BuildResult:
    out.mkdir()
    return build_package(
        tree, image_config, service_config, archive=out / "pkg.tar", oci_layout=out / "layout", tag="v1",
        source_date_epoch=1_700_000_000,
    )


def _describe(root: Path) -> dict[str, tuple[str, ...]]:
    """What the layer promises about a tree: kind, normalized mode, content or link target."""
    seen: dict[tuple[int, int], str] = {}
    described: dict[str, tuple[str, ...]] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            described[relative] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            described[relative] = ("dir",)
        else:
            executable = "x" if info.st_mode & 0o111 else "-"
            first = seen.setdefault((info.st_dev, info.st_ino), relative)
            described[relative] = ("file", executable, path.read_bytes().hex(), "same inode as " + first)
    return described


@pytest.fixture(params=["example", "generated"])
def tree(request: pytest.FixtureRequest, tmp_path: Path, example_tree_factory: Any, generated_tree_factory: Any) -> Path:
    factory = example_tree_factory if request.param == "example" else generated_tree_factory
    return factory(tmp_path / "src")


def test_skopeo_reads_the_layout_and_copies_it(
    tmp_path: Path, tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    result = _build(tree, tmp_path / "out", image_config, service_config)
    raw = _run("skopeo", "inspect", "--raw", f"oci:{tmp_path / 'out/layout'}:v1")
    assert raw.encode() == result.manifest_bytes
    config = json.loads(_run("skopeo", "inspect", "--config", "--raw", f"oci:{tmp_path / 'out/layout'}:v1"))
    assert config["rootfs"]["diff_ids"] == [result.diff_id]

    _run("skopeo", "copy", f"oci:{tmp_path / 'out/layout'}:v1", f"oci:{tmp_path / 'other'}:v1")
    index = json.loads((tmp_path / "other/index.json").read_bytes())
    assert [m["digest"] for m in index["manifests"]] == [result.manifest_digest]
    for descriptor in (result.config, result.layer):
        copied = tmp_path / "other/blobs/sha256" / descriptor.digest[7:]
        assert copied.read_bytes() == (tmp_path / "out/layout/blobs/sha256" / descriptor.digest[7:]).read_bytes()


def test_umoci_unpacks_the_source_tree(
    tmp_path: Path, tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    _build(tree, tmp_path / "out", image_config, service_config)
    _run("umoci", "unpack", "--image", f"{tmp_path / 'out/layout'}:v1", tmp_path / "bundle")
    rootfs = tmp_path / "bundle/rootfs"
    assert _describe(rootfs) == _describe(tree)
    for path in rootfs.rglob("*"):
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (0, 0)
        if not stat.S_ISLNK(info.st_mode):
            assert stat.S_IMODE(info.st_mode) in (0o644, 0o755), path
    runtime_config = json.loads((tmp_path / "bundle/config.json").read_bytes())
    assert runtime_config["process"]["args"] == image_config["config"]["Cmd"]


def test_device_style_unpack_with_gnu_tar(
    tmp_path: Path, tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    result = _build(tree, tmp_path / "out", image_config, service_config)
    unpacked = tmp_path / "device"
    unpacked.mkdir()
    _run("tar", "-xf", tmp_path / "out/pkg.tar", "-C", unpacked)
    assert sorted(p.name for p in unpacked.iterdir()) == ["blobs", "manifest.json"]
    with open_package(unpacked) as package:
        assert package.manifest_digest == result.manifest_digest
        package.verify()
        for descriptor in package.manifest.descriptors:
            data = package.read_blob(descriptor.digest)
            assert len(data) == descriptor.size

    layer = unpacked / "blobs/sha256" / result.layer.digest[7:]
    _run("gzip", "-t", layer)
    listing = _run("tar", "--numeric-owner", "-tvzf", layer).splitlines()
    assert listing and all(" 0/0 " in line and " 2023-11-14 " in line for line in listing)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    _run("tar", "-xzf", layer, "-C", rootfs)
    assert _describe(rootfs) == _describe(tree)
