"""The instance root file system: host base, whiteouts, configurable base; and runc's own example spec."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from runtime_helpers import assert_nothing_left, wait_for_log, wait_until

from aos_operator.runtime import InstanceIdentity, Phase, Runtime, RuntimeConfig
from aos_operator.runtime.network.model import NetworkConfig
from aos_operator.runtime.mounts import MS_RDONLY, mount, mount_points, umount
from aos_operator.runtime.rootfs import TEMPLATES_DIR, _template, hosts_file, prune_templates
from aos_operator.runtime.spec import runc_example_spec

pytestmark = pytest.mark.root  # runc, mounts, loop devices, cgroups

EXAMPLE_SERVICE = """
import json, os, sys, time

state = open("/state.dat").read() or "{}"
visits = json.loads(state).get("visits", 0) + 1
with open("/state.dat", "w") as f:
    f.write(json.dumps({"visits": visits}))
print(f"hello from {os.environ['AOS_SERVICE_ID']} instance {os.environ['AOS_INSTANCE_INDEX']}, "
      f"python {sys.version.split()[0]} at {sys.executable}, visit {visits}", flush=True)
while True:
    time.sleep(1)
"""


def test_example_python_service_runs_on_the_hosts_python(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = runtime.install(make_package(
        {"usr/bin/services/hello_world.py": EXAMPLE_SERVICE},
        cmd=["python3", "-u", "/usr/bin/services/hello_world.py"], working_dir="/",
        service_config={"quotas": {"cpuDmipsLimit": 5000, "ramLimit": 64 << 20, "stateLimit": 4096}}))
    identity = InstanceIdentity("hello-world", "subject", 0)
    status = runtime.start(identity, package)
    assert status.phase == Phase.RUNNING
    text = wait_for_log(runtime, identity.instance_id, "hello from hello-world instance 0")
    assert "python 3.11.2 at /usr/bin/python3, visit 1" in text  # Debian's python3 from the host /usr
    runtime.stop(identity.instance_id)
    runtime.start(identity, package)
    wait_for_log(runtime, identity.instance_id, "visit 2")


def test_layer_whiteouts_hide_host_files(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    def empty(name: str) -> tuple[tarfile.TarInfo, bytes]:
        return tarfile.TarInfo(name), b""

    script = "ls /usr/share; ls -d /usr/lib/python3.11/json 2>/dev/null || echo json-hidden; echo checked; sleep 3600"
    package = runtime.install(make_package(
        {"usr/share/only-this": "x"}, cmd=["/bin/busybox", "sh", "-c", script],
        extra_members=[empty("usr/share/.wh..wh..opq"), empty("usr/lib/python3.11/.wh.json")]))
    identity = InstanceIdentity("svc-whiteouts", "subject", 0)
    runtime.start(identity, package)
    text = wait_for_log(runtime, identity.instance_id, "checked")
    assert text.splitlines()[:2] == ["only-this", "json-hidden"]
    assert Path("/usr/lib/python3.11/json").is_dir()  # the host is untouched


@pytest.fixture
def busybox_base(tmp_path: Path) -> Iterator[Path]:
    """A base file system on its own tmpfs (so one overlay of four layers suffices)."""
    base = tmp_path / "base"
    base.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(base)], check=True)
    try:
        (base / "bin").mkdir()
        shutil.copy("/bin/busybox", base / "bin" / "busybox")
        os.symlink("busybox", base / "bin" / "sh")
        (base / "secret").write_text("hidden\n")
        (base / "extra").mkdir()
        yield base
    finally:
        umount(base)


def test_base_path_and_visible_entries_are_configurable(runtime_config: RuntimeConfig, busybox_base: Path,
                                                        make_package: Callable[..., Path]) -> None:
    runtime = Runtime(replace(runtime_config, base_path=str(busybox_base), base_visible=("bin", "extra"),
                              host_binds=()))
    try:
        package = runtime.install(make_package({"app/hello.txt": "hi\n"},
                                               cmd=["/bin/sh", "-c", "ls /; cat /app/hello.txt; sleep 3600"]))
        identity = InstanceIdentity("svc-base", "subject", 0)
        runtime.start(identity, package)
        text = wait_for_log(runtime, identity.instance_id, "hi")
        assert text.split() == ["app", "bin", "dev", "etc", "extra", "proc", "sys", "hi"]  # no "secret"
        rootfs_mounts = [line for line in Path("/proc/mounts").read_text().splitlines()
                         if str(runtime.run_dir(identity.instance_id)) in line and " overlay " in line]
        assert len(rootfs_mounts) == 1  # no separate base view needed here
    finally:
        runtime.cleanup()
    assert_nothing_left(runtime)


def test_base_spec_is_runc_1_1_5_example(tmp_path: Path) -> None:
    subprocess.run(["runc", "spec", "--bundle", str(tmp_path)], check=True)
    assert json.loads((tmp_path / "config.json").read_text()) == runc_example_spec()


def _template_entries(run_root: Path) -> list[str]:
    templates = run_root / TEMPLATES_DIR
    return sorted(os.listdir(templates)) if templates.is_dir() else []


def test_a_run_root_of_its_own_file_system_shares_the_generated_layers(
        runtime_config: RuntimeConfig, make_package: Callable[..., Path]) -> None:
    """As /run is on a device: the top and whiteouts layers are made once per content and shared;
    a warm start makes no new file; what differs (the hostname) gets its own; idle, all go.
    Without the instance network here: with it, each instance's hosts file names its own address."""
    run_root = runtime_config.run_root
    run_root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(run_root)], check=True)
    runtime = Runtime(replace(runtime_config, network=NetworkConfig(enabled=False)))
    try:
        script = "ls /; cat /etc/hosts; echo listed; sleep 3600"
        plain = runtime.install(make_package({"app/x": "x"}, cmd=["/bin/busybox", "sh", "-c", script]))
        named = runtime.install(make_package({"app/y": "y"}, cmd=["/bin/busybox", "sh", "-c", script],
                                             service_config={"hostname": "named-host"}))
        first, second, third = (InstanceIdentity(f"svc-share-{n}", "subject", 0) for n in (1, 2, 3))
        runtime.start(first, plain)
        runtime.start(second, plain)
        for identity in (first, second):
            listing = wait_for_log(runtime, identity.instance_id, "listed").split()
            assert "app" in listing and "usr" in listing and "root" not in listing and "home" not in listing
        entries = _template_entries(run_root)
        assert len(entries) == 1, "two instances of the same content share one template"
        top = run_root / TEMPLATES_DIR / entries[0] / "top"
        hosts_inode = (top / "etc" / "hosts").stat().st_ino

        runtime.stop(first.instance_id)
        runtime.start(first, plain)  # warm: the same template, not made again
        wait_for_log(runtime, first.instance_id, "listed")
        assert _template_entries(run_root) == entries
        assert (top / "etc" / "hosts").stat().st_ino == hosts_inode

        runtime.start(third, named)
        assert "named-host" in wait_for_log(runtime, third.instance_id, "listed")
        assert len(_template_entries(run_root)) == 2
        for point in mount_points():
            assert not point.startswith(str(run_root / TEMPLATES_DIR)), "templates are directories, not mounts"
        runtime.cleanup()
        # the supervisor, idle, removes the templates as it exits
        wait_until(lambda: not (run_root / TEMPLATES_DIR).exists(), timeout=10, what="templates removed")
    finally:
        runtime.cleanup()
        # busy until the exiting supervisor has closed its lock file there
        wait_until(lambda: umount(run_root) in (0, errno.EINVAL), timeout=10, what="run root unmounted")
    assert_nothing_left(runtime)


def test_pruning_keeps_the_templates_a_mounted_overlay_uses(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    for name in ("used", "spare", "stale1", "stale2"):
        (templates / name / "top").mkdir(parents=True)
    (templates / "used" / "top" / "marker").write_text("here\n")
    (templates / ".half-made").mkdir()  # one being made: never touched
    (tmp_path / "other").mkdir()
    merged = tmp_path / "merged"
    merged.mkdir()
    mount("overlay", merged, "overlay", MS_RDONLY, f"lowerdir={templates / 'used' / 'top'}:{tmp_path / 'other'}")
    try:
        prune_templates(templates, keep=10)
        assert sorted(os.listdir(templates)) == [".half-made", "spare", "stale1", "stale2", "used"]
        prune_templates(templates, keep=2, spare="spare")
        assert sorted(os.listdir(templates)) == [".half-made", "spare", "used"]
        assert (merged / "marker").read_text() == "here\n"
    finally:
        umount(merged)
    prune_templates(templates)
    assert sorted(os.listdir(templates)) == [".half-made"]


def test_a_template_name_held_by_other_content_takes_the_next_slot(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    points = [("proc", True, 0o755)]
    top, _ = _template(templates, points, hosts_file("a"), "", ["root"])
    taken = top.parent
    assert (top / "proc").is_dir() and (top / "etc" / "hosts").read_text().endswith("127.0.1.1\ta\n")
    (taken / "content.json").write_bytes(b"[]")  # as if other content had the same CRC
    moved, _ = _template(templates, points, hosts_file("a"), "", ["root"])
    assert moved.parent.name == f"{taken.name}-1"
    assert _template(templates, points, hosts_file("a"), "", ["root"])[0] == moved  # found there again
    assert sorted(os.listdir(templates)) == [taken.name, f"{taken.name}-1"]
