"""Installing packages: digests verified first, layers unpacked safely, hostile input refused."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from aos_operator.errors import InputError, PackageError
from aos_operator.runtime import Runtime
from aos_operator.runtime.package import PackageStore

pytestmark = pytest.mark.root  # runc, mounts, loop devices, cgroups

CMD = ["/usr/bin/python3", "/app/main.py"]


def member(name: str, kind: bytes = tarfile.REGTYPE, *, linkname: str = "", data: bytes = b"",
           mode: int = 0o644, uid: int = 0) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.uid, info.gid = kind, linkname, mode, uid, uid
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, (data if kind == tarfile.REGTYPE else None)


def store_is_empty(store: PackageStore) -> bool:
    layers = list(store.layers.root.iterdir()) if store.layers.root.exists() else []
    return store.digests() == [] and layers == []


HOSTILE = {
    "absolute path": [member("/etc/evil", data=b"x")],
    "dot-dot": [member("../evil", data=b"x")],
    "dot-dot inside": [member("app/../../evil", data=b"x")],
    "escaping relative symlink": [member("app/link", tarfile.SYMTYPE, linkname="../../../etc/shadow")],
    "write through a symlink": [member("etc", tarfile.SYMTYPE, linkname="/etc"),
                                member("etc/evil-file", data=b"owned")],
    "write through a relative symlink": [member("up", tarfile.SYMTYPE, linkname="."),
                                         member("hop", tarfile.SYMTYPE, linkname="up"),
                                         member("hop/x", data=b"x")],
    "hard link to an absolute path": [member("app/passwd", tarfile.LNKTYPE, linkname="/etc/passwd")],
    "hard link out of the layer": [member("app/passwd", tarfile.LNKTYPE, linkname="../etc/passwd")],
    "hard link to a missing file": [member("app/x", tarfile.LNKTYPE, linkname="app/nothing")],
    "hard link to a symlink": [member("app/s", tarfile.SYMTYPE, linkname="/etc/passwd"),
                               member("app/h", tarfile.LNKTYPE, linkname="app/s")],
    "character device": [member("dev/mem", tarfile.CHRTYPE)],
    "block device": [member("dev/sda", tarfile.BLKTYPE)],
    "fifo": [member("app/pipe", tarfile.FIFOTYPE)],
    "unknown special whiteout": [member("app/.wh..wh.plnk", data=b"")],
    "whiteout that is a symlink": [member("app/.wh.x", tarfile.SYMTYPE, linkname="y")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused_and_nothing_is_installed(case: str, runtime: Runtime,
                                                            make_package: Callable[..., Path]) -> None:
    package = make_package({"app/main.py": "print('never')\n"}, cmd=CMD, extra_members=HOSTILE[case])
    with pytest.raises(PackageError) as caught:
        runtime.install(package)
    message = str(caught.value)
    assert "rootfs layer sha256:" in message and "member" in message and "nothing was installed" in message
    assert store_is_empty(runtime.packages)
    assert not Path("/etc/evil-file").exists() and not Path("/evil").exists()
    assert runtime.list() == []


def _blob_of(package: Path, role: str) -> Path:
    manifest = json.loads((package / "manifest.json").read_text())
    descriptor = manifest["layers"][0] if role == "layer" else manifest[role]
    return package / "blobs" / "sha256" / descriptor["digest"].split(":")[1]


@pytest.mark.parametrize("role", ["layer", "config", "aosService"])
def test_digest_mismatch_names_the_digest(role: str, runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = make_package({"app/main.py": "print(1)\n"}, cmd=CMD)
    blob = _blob_of(package, role)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    blob.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=f"blob sha256:{blob.name}: content has digest sha256:"):
        runtime.install(package)
    assert store_is_empty(runtime.packages)


def test_size_mismatch_and_missing_blob(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = make_package({"app/main.py": "print(1)\n"}, cmd=CMD)
    blob = _blob_of(package, "layer")
    blob.write_bytes(blob.read_bytes() + b"\0")
    with pytest.raises(PackageError, match=rf"sha256:{blob.name}: size \d+ bytes, manifest says \d+"):
        runtime.install(package)
    blob.unlink()
    with pytest.raises(PackageError, match=rf"sha256:{blob.name}: missing"):
        runtime.install(package)
    assert store_is_empty(runtime.packages)


def test_corrupt_gzip_with_a_matching_digest(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = make_package({"app/main.py": "print(1)\n"}, cmd=CMD)
    blob = _blob_of(package, "layer")
    broken = blob.read_bytes()[:40]
    blob.unlink()
    digest = hashlib.sha256(broken).hexdigest()
    (blob.parent / digest).write_bytes(broken)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["layers"][0].update(digest=f"sha256:{digest}", size=len(broken))
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="not a valid tar or tar\\+gzip layer"):
        runtime.install(package)
    assert store_is_empty(runtime.packages)


def test_bad_manifests(runtime: Runtime, make_package: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        runtime.install(tmp_path / "nowhere")
    package = make_package({"app/main.py": "print(1)\n"}, cmd=CMD)
    manifest_path = package / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text("{")
    with pytest.raises(PackageError, match="manifest.json: not valid JSON"):
        runtime.install(package)
    two_layers = dict(manifest, layers=manifest["layers"] * 2)  # layers[1] is not an Aos layer
    manifest_path.write_text(json.dumps(two_layers))
    with pytest.raises(PackageError, match=r"layers\[1\] \(sha256:[0-9a-f]{64}\): mediaType .* is not an Aos layer"):
        runtime.install(package)
    manifest_path.write_text(json.dumps(dict(manifest, config={"digest": "md5:abc", "size": 1})))
    with pytest.raises(PackageError, match=r"config\.digest: 'md5:abc' is not a sha256"):
        runtime.install(package)
    assert store_is_empty(runtime.packages)


def test_non_linux_image_is_refused_at_install(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = make_package({"app/main.py": "print(1)\n"}, cmd=CMD, image_os="windows")
    with pytest.raises(PackageError, match="image config sha256:[0-9a-f]+.os: must be linux"):
        runtime.install(package)
    assert store_is_empty(runtime.packages)


def test_layer_unpacked_safely_with_whiteouts_links_and_owners(runtime: Runtime,
                                                               make_package: Callable[..., Path]) -> None:
    extra = [
        member("app/tool", data=b"#!/bin/sh\n", mode=0o4755, uid=1234),  # set-uid and a foreign owner
        member("app/tool-link", tarfile.LNKTYPE, linkname="app/tool"),
        member("app/python", tarfile.SYMTYPE, linkname="/usr/bin/python3"),
        member("app/sibling", tarfile.SYMTYPE, linkname="../app/main.py"),
        member("usr/share/.wh..wh..opq", data=b""),
        member("usr/share/only-this", data=b"x"),
        member("usr/lib/.wh.python3.11", data=b""),
        member("app/replaced", data=b"first"),
        member("app/replaced", data=b"second"),
    ]
    package = make_package({"app/main.py": "print(1)\n"}, cmd=CMD, extra_members=extra)
    installed = runtime.install(package)
    layer = installed.layer_path
    tool = os.lstat(layer / "app/tool")
    assert (tool.st_uid, tool.st_gid) == (0, 0)
    assert stat.S_IMODE(tool.st_mode) == 0o755  # set-uid dropped
    assert os.lstat(layer / "app/tool-link").st_ino == tool.st_ino
    assert os.readlink(layer / "app/python") == "/usr/bin/python3"
    assert os.readlink(layer / "app/sibling") == "../app/main.py"
    assert os.getxattr(layer / "usr/share", "trusted.overlay.opaque") == b"y"
    whiteout = os.lstat(layer / "usr/lib/python3.11")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert not (layer / "usr/share/.wh..wh..opq").exists() and not (layer / "usr/lib/.wh.python3.11").exists()
    assert (layer / "app/replaced").read_bytes() == b"second"


def test_layers_are_shared_by_digest_and_install_is_idempotent(runtime: Runtime,
                                                               make_package: Callable[..., Path]) -> None:
    files = {"app/main.py": "print(1)\n"}
    first = runtime.install(make_package(files, cmd=CMD))
    again = runtime.install(make_package(files, cmd=CMD))
    other_config = runtime.install(make_package(files, cmd=CMD, service_config={"hostname": "other"}))
    assert first == again
    assert other_config.digest != first.digest and other_config.layer_path == first.layer_path
    assert [p.name for p in runtime.packages.layers.root.iterdir()] == [first.layer_path.name]
    runtime.uninstall(first.digest)
    assert first.layer_path.is_dir()  # still used by the other package
    runtime.uninstall(other_config.digest)
    assert not first.layer_path.exists() and runtime.packages.digests() == []


def test_a_package_read_before_is_not_read_again_and_still_checked(runtime: Runtime,
                                                                   make_package: Callable[..., Path]) -> None:
    installed = runtime.install(make_package({"app/main.py": "print(1)\n"}, cmd=CMD))
    store = runtime.packages
    first = store.get(installed.digest)
    manifest = store.root / "packages" / f"{installed.digest.split(':')[1]}.json"
    original = manifest.read_bytes()
    manifest.write_bytes(b"not json")  # a rewrite the store never makes: a new mtime, so read again
    with pytest.raises(ValueError):
        store.get(installed.digest)
    manifest.write_bytes(original)
    again = store.get(installed.digest)
    assert again == first
    assert store.get(installed.digest) is again  # the same manifest file: the package read before
    os.rename(installed.layer_path, installed.layer_path.with_name("moved"))
    with pytest.raises(PackageError, match="its layer .* is missing"):
        store.get(installed.digest)  # remembered, and its layer is checked all the same
    os.rename(installed.layer_path.with_name("moved"), installed.layer_path)
    runtime.uninstall(installed.digest)
    with pytest.raises(PackageError, match="is not installed"):
        store.get(installed.digest)
