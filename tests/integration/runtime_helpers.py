"""Helpers of the runtime integration tests: waiting, reading logs, finding leftovers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aos_operator.runtime import InstanceStatus, Runtime
from aos_operator.runtime.cgroups import detect_cgroups
from aos_operator.runtime.mounts import mounts_under
from aos_operator.runtime.volumes import loop_devices_of

T = TypeVar("T")


def leftovers(runtime: Runtime) -> list[str]:
    """Everything instances put on the node (cgroups, mounts, loop devices, containers, run
    directories, processes) that is still there."""
    found: list[str] = []
    parent = runtime.config.cgroup_parent.strip("/")
    for root in detect_cgroups().all_roots:
        if (root / parent).exists():
            found.append(f"cgroup {root / parent}")
    found += [f"mount {point}" for point in mounts_under(runtime.config.run_root)]
    images = runtime.config.state_root.glob("instances/*/*.img")
    found += [f"loop {device}" for image in images for device in loop_devices_of(image)]
    found += [f"container {c['id']} ({c['status']})" for c in runtime.runc.list()]
    instances = runtime.config.run_root / "instances"
    if instances.exists():
        found += [f"run dir {path}" for path in instances.iterdir()]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(runtime.config.state_root) in cmdline or str(runtime.config.run_root) in cmdline:
                found.append(f"process {proc.name}: {cmdline}")
    return found


def wait_until(condition: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def log_text(runtime: Runtime, instance_id: str) -> str:
    path = runtime.log_path(instance_id)
    rotated = path.with_name(path.name + ".1")
    text = rotated.read_text(errors="replace") if rotated.exists() else ""
    return text + (path.read_text(errors="replace") if path.exists() else "")


def wait_for_log(runtime: Runtime, instance_id: str, needle: str, timeout: float = 30.0) -> str:
    wait_until(lambda: needle in log_text(runtime, instance_id), timeout, f"{needle!r} in the log of {instance_id}")
    return log_text(runtime, instance_id)


def wait_for_status(runtime: Runtime, instance_id: str, predicate: Callable[[InstanceStatus], bool],
                    timeout: float = 30.0, what: str = "status") -> InstanceStatus:
    def check() -> InstanceStatus | None:
        status = runtime.status(instance_id)
        return status if predicate(status) else None

    return wait_until(check, timeout, what)
