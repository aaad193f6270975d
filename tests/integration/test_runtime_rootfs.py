"""The instance root file system: host base, whiteouts, configurable base; and runc's own example spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from runtime_helpers import assert_nothing_left, wait_for_log

from aos_operator.runtime import InstanceIdentity, Phase, Runtime, RuntimeConfig
from aos_operator.runtime.mounts import umount
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
