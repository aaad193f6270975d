"""build_package: reproducible bytes, package shape, the cache, progress, and clean failures."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from aos_operator.digests import sha256_digest
from aos_operator.errors import BuildError, InputError
from aos_operator.image import build_package, open_package
from aos_operator.image import cache as cache_module
from aos_operator.image import layer as layer_module
from aos_operator.image.progress import Progress


def _copy_tree_differently(source: Path, target: Path, *, umask: int, owner: int, mtime: float) -> None:
    """Recreate `source` at `target` in reverse creation order, with another umask, owner and times."""
    old_umask = os.umask(umask)
    try:
        target.mkdir()
        entries = sorted(source.rglob("*"), key=lambda p: str(p))
        for path in entries:
            relative = target / path.relative_to(source)
            if path.is_dir() and not path.is_symlink():
                relative.mkdir(parents=True, exist_ok=True)
        for path in reversed(entries):
            relative = target / path.relative_to(source)
            if path.is_symlink():
                os.symlink(os.readlink(path), relative)
            elif path.is_file():
                relative.write_bytes(path.read_bytes())
                if path.stat().st_mode & 0o111:
                    relative.chmod(0o777 & ~umask)
        # Hard links of the source become hard links here too.
        seen: dict[int, Path] = {}
        for path in entries:
            if path.is_file() and not path.is_symlink() and path.stat().st_nlink > 1:
                inode = path.stat().st_ino
                if inode in seen:
                    (target / path.relative_to(source)).unlink()
                    os.link(target / seen[inode].relative_to(source), target / path.relative_to(source))
                else:
                    seen[inode] = path
        for path in [target, *target.rglob("*")]:
            os.lchown(path, owner, owner)
            if not path.is_symlink():
                os.utime(path, (mtime, mtime))
    finally:
        os.umask(old_umask)


def _build(tree: Path, out: Path, image_config: dict[str, Any], service_config: dict[str, Any], **options: Any):
    out.mkdir(parents=True, exist_ok=True)
    options.setdefault("tag", "v1")
    return build_package(tree, image_config, service_config, archive=out / "pkg.tar", oci_layout=out / "layout", **options)


@pytest.mark.root
def test_same_inputs_give_the_same_bytes_whatever_the_filesystem_says(
    tmp_path: Path, generated_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    copy = tmp_path / "copy"
    _copy_tree_differently(generated_tree, copy, umask=0o002, owner=1234, mtime=1_000_000_000)
    os.utime(generated_tree / "etc/hello.cfg", (1_700_000_000, 1_700_000_000))
    first = _build(generated_tree, tmp_path / "one", image_config, service_config, source_date_epoch=1_600_000_000)
    second = _build(copy, tmp_path / "two", image_config, service_config, source_date_epoch=1_600_000_000)
    assert first.manifest_digest == second.manifest_digest
    assert first.diff_id == second.diff_id
    assert (tmp_path / "one/pkg.tar").read_bytes() == (tmp_path / "two/pkg.tar").read_bytes()
    for name in ("index.json", "oci-layout"):
        assert (tmp_path / "one/layout" / name).read_bytes() == (tmp_path / "two/layout" / name).read_bytes()
    blobs_one = sorted(p.name for p in (tmp_path / "one/layout/blobs/sha256").iterdir())
    assert blobs_one == sorted(p.name for p in (tmp_path / "two/layout/blobs/sha256").iterdir())


def test_source_date_epoch_comes_from_the_environment(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    from_env = _build(example_tree, tmp_path / "env", image_config, service_config)
    explicit = _build(example_tree, tmp_path / "arg", image_config, service_config, source_date_epoch=1700000000)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    default = _build(example_tree, tmp_path / "zero", image_config, service_config)
    assert from_env.manifest_digest == explicit.manifest_digest != default.manifest_digest
    with open_package(tmp_path / "env/pkg.tar") as package:
        assert package.image_config()["created"] == "2023-11-14T22:13:20Z"
    with open_package(tmp_path / "zero/pkg.tar") as package:
        assert package.image_config()["created"] == "1970-01-01T00:00:00Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InputError, match="SOURCE_DATE_EPOCH='yesterday'"):
        _build(example_tree, tmp_path / "bad", image_config, service_config)


def test_package_shape(tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]) -> None:
    result = _build(example_tree, tmp_path / "out", image_config, service_config, source_date_epoch=42)
    manifest = json.loads(result.manifest_bytes)
    assert result.manifest_bytes == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
    assert manifest["aosService"]["mediaType"] == "application/vnd.aos.service.config.v1+json"
    assert result.manifest_digest == sha256_digest(result.manifest_bytes)

    with tarfile.open(tmp_path / "out/pkg.tar") as archive:
        names = archive.getnames()
        assert names == [".", "./blobs", "./blobs/sha256"] + sorted(
            f"./blobs/sha256/{d.digest[7:]}" for d in (result.config, result.service_config, result.layer)
        ) + ["./manifest.json"]
        assert archive.extractfile("./manifest.json").read() == result.manifest_bytes  # type: ignore[union-attr]
        layer_bytes = archive.extractfile(f"./blobs/sha256/{result.layer.digest[7:]}").read()  # type: ignore[union-attr]
        config = json.loads(archive.extractfile(f"./blobs/sha256/{result.config.digest[7:]}").read())  # type: ignore[union-attr]
        service = archive.extractfile(f"./blobs/sha256/{result.service_config.digest[7:]}").read()  # type: ignore[union-attr]
    uncompressed = gzip.decompress(layer_bytes)
    assert result.diff_id == "sha256:" + hashlib.sha256(uncompressed).hexdigest()
    assert config == {**image_config, "created": "1970-01-01T00:00:42Z", "rootfs": {"type": "layers", "diff_ids": [result.diff_id]}}
    assert service == json.dumps(service_config, sort_keys=True, separators=(",", ":")).encode()

    with tarfile.open(fileobj=io.BytesIO(uncompressed)) as layer:
        members = {m.name: m for m in layer.getmembers()}
    assert list(members) == [
        "etc", "etc/hello.cfg", "usr", "usr/bin", "usr/bin/hello", "usr/bin/services",
        "usr/bin/services/hello_world.py", "var", "var/lib", "var/lib/hello",
    ]
    assert all((m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 42) for m in members.values())
    assert members["usr/bin/services/hello_world.py"].mode == 0o755
    assert members["usr/bin/hello"].linkname == "services/hello_world.py"

    index = json.loads((tmp_path / "out/layout/index.json").read_bytes())
    assert index["manifests"] == [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": result.manifest_digest,
         "size": len(result.manifest_bytes), "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    ]


@pytest.mark.parametrize("key", ["rootfs", "created"])
def test_image_config_fields_owned_by_the_build_are_refused(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any], key: str
) -> None:
    with pytest.raises(InputError, match=f"'{key}' is set"):
        _build(example_tree, tmp_path / "out", {**image_config, key: "x"}, service_config)


def test_invalid_tag_is_refused(tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="not a valid OCI tag"):
        _build(example_tree, tmp_path / "out", image_config, service_config, tag="-bad:tag")


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_failed_build_leaves_no_output_and_no_temp_files(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    out = tmp_path / "out"
    os.mkfifo(example_tree / "etc/pipe")
    with pytest.raises(BuildError, match="pipe"):
        _build(example_tree, out, image_config, service_config)
    assert _leftovers(out) == []


def test_failure_while_streaming_keeps_the_previous_outputs_intact(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    _build(example_tree, out, image_config, service_config)
    before = (out / "pkg.tar").read_bytes(), (out / "layout/index.json").read_bytes()
    (example_tree / "etc/hello.cfg").write_text("changed content\n")
    real_stream = layer_module._stream_file

    def failing_stream(root: Path, entry: Any, *args: Any) -> None:
        if entry.path == "usr/bin/services/hello_world.py":
            raise BuildError(f"{root / entry.path}: simulated read failure")
        real_stream(root, entry, *args)

    monkeypatch.setattr(layer_module, "_stream_file", failing_stream)
    with pytest.raises(BuildError, match="simulated"):
        _build(example_tree, out, image_config, service_config)
    assert _leftovers(out) == ["layout", "pkg.tar"]
    assert ((out / "pkg.tar").read_bytes(), (out / "layout/index.json").read_bytes()) == before


def test_file_changed_during_the_build_is_an_error(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_check = layer_module._check_unchanged
    target = example_tree / "etc/hello.cfg"

    def grow_then_check(path: Path, entry: Any, now: os.stat_result) -> None:
        if path == target and not getattr(grow_then_check, "done", False):
            grow_then_check.done = True  # type: ignore[attr-defined]
            with open(target, "ab") as file:
                file.write(b"more\n")
            now = os.stat(target)
        real_check(path, entry, now)

    monkeypatch.setattr(layer_module, "_check_unchanged", grow_then_check)
    with pytest.raises(BuildError, match=f"{target}: was modified while"):
        _build(example_tree, tmp_path / "out", image_config, service_config)
    assert _leftovers(tmp_path / "out") == []


def test_oci_layout_target_that_is_not_a_layout_is_not_replaced(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not ours to replace"):
        build_package(example_tree, image_config, service_config, oci_layout=precious)
    assert _leftovers(precious) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "src"]


def test_hostile_tree_is_reported_before_anything_is_written(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    os.symlink("/etc/shadow", example_tree / "etc/shadow")
    with pytest.raises(BuildError, match=r"etc/shadow: symbolic link to '/etc/shadow' is absolute"):
        _build(example_tree, tmp_path / "out", image_config, service_config)
    assert _leftovers(tmp_path / "out") == []
    deleted = _build(example_tree, tmp_path / "out", image_config, service_config, symlinks="delete")
    with open_package(tmp_path / "out/pkg.tar") as package:
        layer = gzip.decompress(package.read_blob(deleted.layer.digest))
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        assert "etc/shadow" not in archive.getnames() and "usr/bin/hello" not in archive.getnames()


def test_warnings_reach_the_result(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    os.chmod(example_tree / "usr/bin/services/hello_world.py", 0o4755)
    result = _build(example_tree, tmp_path / "out", image_config, service_config)
    assert len(result.warnings) == 1 and "hello_world.py" in result.warnings[0]


def test_progress_reports_every_phase_up_to_its_total(
    tmp_path: Path, generated_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    reports: list[Progress] = []
    _build(generated_tree, tmp_path / "out", image_config, service_config, progress=reports.append)
    phases = [report.phase for report in reports]
    assert phases == sorted(phases, key=["scan", "hash", "layer", "write"].index)
    assert {"scan", "layer", "write"} <= set(phases)
    for phase in ("layer", "write"):
        of_phase = [r for r in reports if r.phase == phase]
        done = [r.done_bytes for r in of_phase]
        assert done == sorted(done)
        assert of_phase[-1].done_bytes == of_phase[-1].total_bytes > 0
    layer_end = [r for r in reports if r.phase == "layer"][-1]
    assert layer_end.done_files == layer_end.total_files > 50


# --- the cache ------------------------------------------------------------------------------


@pytest.fixture
def settled_tree(generated_tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tree whose files are old enough for the cache to trust their stat identity."""
    monkeypatch.setattr(cache_module, "RACY_WINDOW_NS", 0)
    time.sleep(0.05)
    return generated_tree


def _forbid_reading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    real_stream = layer_module._stream_file

    def recording_stream(root: Path, entry: Any, *args: Any) -> None:
        read.append(entry.path)
        real_stream(root, entry, *args)

    monkeypatch.setattr(layer_module, "_stream_file", recording_stream)
    return read


def test_rebuild_of_an_unchanged_tree_reuses_the_cache_and_gives_the_same_bytes(
    tmp_path: Path, settled_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache_dir = tmp_path / "cache"
    cold = _build(settled_tree, tmp_path / "cold", image_config, service_config, cache_dir=cache_dir)
    read = _forbid_reading(monkeypatch)
    warm = _build(settled_tree, tmp_path / "warm", image_config, service_config, cache_dir=cache_dir)
    assert not cold.layer_from_cache and warm.layer_from_cache
    assert read == []  # nothing was read, let alone compressed
    assert warm.manifest_digest == cold.manifest_digest
    assert (tmp_path / "warm/pkg.tar").read_bytes() == (tmp_path / "cold/pkg.tar").read_bytes()
    uncached = _build(settled_tree, tmp_path / "plain", image_config, service_config)
    assert uncached.manifest_digest == cold.manifest_digest


def test_one_byte_change_with_same_size_and_mtime_invalidates_the_cache(
    tmp_path: Path, settled_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    cache_dir = tmp_path / "cache"
    cold = _build(settled_tree, tmp_path / "cold", image_config, service_config, cache_dir=cache_dir)
    target = settled_tree / "etc/hello.cfg"
    before = target.stat()
    content = bytearray(target.read_bytes())
    content[0] ^= 0x20
    target.write_bytes(bytes(content))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    changed = _build(settled_tree, tmp_path / "changed", image_config, service_config, cache_dir=cache_dir)
    assert not changed.layer_from_cache
    assert changed.diff_id != cold.diff_id
    with open_package(tmp_path / "changed/pkg.tar") as package:
        layer = gzip.decompress(package.read_blob(changed.layer.digest))
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        assert archive.extractfile("etc/hello.cfg").read() == bytes(content)  # type: ignore[union-attr]


def test_touching_files_without_changing_content_still_hits_the_cache(
    tmp_path: Path, settled_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache_dir = tmp_path / "cache"
    cold = _build(settled_tree, tmp_path / "cold", image_config, service_config, cache_dir=cache_dir)
    os.utime(settled_tree / "etc/hello.cfg", (1, 1))
    time.sleep(0.05)
    read = _forbid_reading(monkeypatch)
    touched = _build(settled_tree, tmp_path / "touched", image_config, service_config, cache_dir=cache_dir)
    assert touched.layer_from_cache and touched.manifest_digest == cold.manifest_digest
    assert read == ["etc/hello.cfg"]  # only the touched file was hashed again


def test_changed_settings_do_not_reuse_a_layer(
    tmp_path: Path, settled_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    cache_dir = tmp_path / "cache"
    base = _build(settled_tree, tmp_path / "a", image_config, service_config, cache_dir=cache_dir)
    other_level = _build(settled_tree, tmp_path / "b", image_config, service_config, cache_dir=cache_dir, compression_level=1)
    other_epoch = _build(settled_tree, tmp_path / "c", image_config, service_config, cache_dir=cache_dir, source_date_epoch=5)
    assert not other_level.layer_from_cache and other_level.layer.digest != base.layer.digest
    assert other_level.diff_id == base.diff_id
    assert not other_epoch.layer_from_cache and other_epoch.diff_id != base.diff_id


def test_files_modified_just_before_the_build_are_not_trusted(
    tmp_path: Path, generated_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    cache_dir = tmp_path / "cache"
    _build(generated_tree, tmp_path / "a", image_config, service_config, cache_dir=cache_dir)
    remembered = json.loads(next((cache_dir / "files").iterdir()).read_bytes())
    assert remembered["entries"] == {}  # the whole tree was written within RACY_WINDOW_NS


def test_corrupt_cache_files_are_a_miss_not_an_error(
    tmp_path: Path, settled_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    cache_dir = tmp_path / "cache"
    cold = _build(settled_tree, tmp_path / "a", image_config, service_config, cache_dir=cache_dir)
    for path in [*(cache_dir / "files").iterdir(), *(cache_dir / "layers").iterdir()]:
        path.write_text("{not json")
    again = _build(settled_tree, tmp_path / "b", image_config, service_config, cache_dir=cache_dir)
    assert not again.layer_from_cache and again.manifest_digest == cold.manifest_digest


def test_blob_copy_falls_back_when_the_kernel_cannot_copy(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = _build(example_tree, tmp_path / "fast", image_config, service_config)

    def cross_device(*args: Any) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    fallback = _build(example_tree, tmp_path / "slow", image_config, service_config)
    assert fallback.manifest_digest == expected.manifest_digest
    assert (tmp_path / "slow/pkg.tar").read_bytes() == (tmp_path / "fast/pkg.tar").read_bytes()


def test_output_paths_are_checked_before_building(
    tmp_path: Path, example_tree: Path, image_config: dict[str, Any], service_config: dict[str, Any]
) -> None:
    with pytest.raises(InputError, match="does not exist"):
        build_package(example_tree, image_config, service_config, archive=tmp_path / "missing/pkg.tar")
    with pytest.raises(InputError, match="is a directory"):
        build_package(example_tree, image_config, service_config, archive=tmp_path)
