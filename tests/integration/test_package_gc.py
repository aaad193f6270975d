"""Device package GC: the chooser's rules (pure), then real packages in a real PackageStore, and the
agent core keeping the previous version of a service after an update."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from aos_operator.agent.core import DeviceAgent
from aos_operator.errors import InputError
from aos_operator.runtime.package import PackageStore
from aos_operator.runtime.package_gc import GcPolicy, StoredPackage, choose_garbage
from tests.runtime_test_packages import build_test_package

CMD = ["/bin/sh", "-c", "true"]


def stored(digest: str, service: str | None, age: float, size: int = 100) -> StoredPackage:
    return StoredPackage(digest, service, 1000.0 - age, size)


# --- the chooser --------------------------------------------------------------------------------


def test_keeps_needed_and_the_previous_of_each_service_and_drops_the_rest() -> None:
    packages = [stored("a4", "A", 0), stored("a3", "A", 10), stored("a2", "A", 20), stored("a1", "A", 30),
                stored("b2", "B", 5), stored("b1", "B", 15), stored("x", None, 1)]
    assert choose_garbage(packages, {"a4"}, GcPolicy(keep_previous=1)) == ["a1", "a2", "b1", "x"]
    assert choose_garbage(packages, {"a4", "b1"}, GcPolicy(keep_previous=0)) == ["a1", "a2", "a3", "b2", "x"]
    assert choose_garbage(packages, {"a1", "a2", "a3", "a4"}, GcPolicy(keep_previous=1)) == ["b1", "x"]


def test_limits_drop_previous_versions_least_recently_used_first_but_never_needed_ones() -> None:
    packages = [stored("a2", "A", 0, 10), stored("a1", "A", 50, 10), stored("b2", "B", 1, 10), stored("b1", "B", 40, 10)]
    needed = {"a2", "b2"}
    assert choose_garbage(packages, needed, GcPolicy(keep_previous=1)) == []
    assert choose_garbage(packages, needed, GcPolicy(keep_previous=1, max_packages=3)) == ["a1"]
    assert choose_garbage(packages, needed, GcPolicy(keep_previous=1, max_bytes=30)) == ["a1"]
    assert choose_garbage(packages, needed, GcPolicy(keep_previous=1, max_bytes=5)) == ["a1", "b1"]
    assert choose_garbage(packages, needed, GcPolicy(max_packages=0)) == ["a1", "b1"]  # needed ones stay anyway


def test_policy_refuses_negative_limits() -> None:
    with pytest.raises(InputError, match="max_packages"):
        GcPolicy(max_packages=-1)


# --- real packages --------------------------------------------------------------------------------


def install_versions(store: PackageStore, tmp: Path, service: str, count: int, *, shared: bytes | None = None) -> list[str]:
    digests = []
    for version in range(count):
        files = {"app/version": f"{service} {version}\n"} if shared is None else None
        directory = build_test_package(tmp / f"pkg-{service}-{version}", files, cmd=CMD, env=[f"V={version}"],
                                       layer=shared)
        digest = store.install(directory).digest
        store.note_use(digest, service)
        used = time.time() - 100 + version  # later versions were used later
        os.utime(store.root / "uses" / digest.removeprefix("sha256:"), (used, used))
        digests.append(digest)
    return digests


def test_store_collect_removes_old_packages_and_their_layers_only(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "state")
    a = install_versions(store, tmp_path, "A", 4)
    b = install_versions(store, tmp_path, "B", 1)
    layers_before = {p.name for p in store.layers.root.iterdir()}
    assert len(layers_before) == 5
    removed = store.collect({a[3]}, GcPolicy(keep_previous=1))
    assert sorted(removed) == sorted(a[:2])
    assert set(store.digests()) == {a[2], a[3], b[0]}
    for digest in store.digests():  # every kept package is still whole: manifest, configs and layer
        assert store.get(digest).layer_path.is_dir()
    assert len(list(store.layers.root.iterdir())) == 3
    # Nothing more goes on a second pass.
    assert store.collect({a[3]}, GcPolicy(keep_previous=1)) == []


def test_store_collect_keeps_a_layer_shared_with_a_kept_package(tmp_path: Path) -> None:
    from tests.runtime_test_packages import build_test_layer

    store = PackageStore(tmp_path / "state")
    layer = build_test_layer({"app/main": "same layer\n"})
    a = install_versions(store, tmp_path, "A", 3, shared=layer)  # three packages, one layer (env differs)
    assert len(list(store.layers.root.iterdir())) == 1
    assert store.collect({a[2]}, GcPolicy(keep_previous=0)) == [a[0], a[1]]
    assert store.digests() == [a[2]] and store.get(a[2]).layer_path.is_dir()


def test_store_collect_removes_orphan_layers_and_blobs(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "state")
    a = install_versions(store, tmp_path, "A", 1)
    orphan_layer = store.layers.root / ("e" * 64)
    orphan_layer.mkdir()
    (orphan_layer / "file").write_text("left by a crash")
    orphan_blob = store.root / "blobs" / "sha256" / ("f" * 64)
    orphan_blob.write_text("{}")
    unrelated = store.layers.root / "not-a-digest"
    unrelated.mkdir()
    assert store.collect({a[0]}, GcPolicy()) == []
    assert not orphan_layer.exists() and not orphan_blob.exists()
    assert unrelated.exists()  # only what looks like ours is ours to delete
    assert store.digests() == a


class _Status:
    def __init__(self, package: str) -> None:
        self.package = package


class _RuntimeOfStore:
    """The two things DeviceAgent's GC reads of a Runtime: its package store and its instances."""

    def __init__(self, store: PackageStore, running: list[str]) -> None:
        self.packages = store
        self.running = running

    def list(self) -> list[_Status]:
        return [_Status(digest) for digest in self.running]


def test_agent_gc_keeps_assigned_and_existing_instances_packages(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "state")
    a = install_versions(store, tmp_path, "A", 4)
    b = install_versions(store, tmp_path, "B", 3)
    runtime = _RuntimeOfStore(store, running=[b[0]])  # an instance of B still runs its oldest version
    agent = DeviceAgent(runtime, registry=None, package_cache=tmp_path / "pulls",  # type: ignore[arg-type]
                        gc=GcPolicy(keep_previous=1, max_packages=2))
    agent._assigned["instance-a"] = a[1]  # assigned, e.g. rolled back to an older revision
    removed = agent.collect_garbage()
    # Needed: a[1] (assigned), b[0] (an instance has it). The limit (2) leaves no room for previous versions.
    assert set(store.digests()) == {a[1], b[0]}
    assert set(removed) == {a[0], a[2], a[3], b[1], b[2]}
