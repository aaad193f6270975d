"""What an instance uses now, in the units of AosEdge's alert rules, and the node's totals that
percent rules are relative to.

Instance: cpu in DMIPS (its share of the node's cores times the node's DMIPS, AosEdge's
conversion), ram in bytes (the memory cgroup), storage and state in bytes used on their volumes,
download and upload in bytes counted this traffic period (only for a direction with a limit: the
counters exist only then). Node: DMIPS, MemTotal, and the size of the file system that holds the
instances' volumes (the node partition their quotas take from).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.status import InstanceStatus
from aos_operator.runtime.volumes import STATE, STORAGE

if TYPE_CHECKING:
    from aos_operator.runtime.runtime import Runtime


def _used_bytes(mount_point: Path) -> int | None:
    if not os.path.ismount(mount_point):
        return None
    stats = os.statvfs(mount_point)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def memory_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def node_totals(runtime: Runtime) -> dict[str, float]:
    totals: dict[str, float] = {"cpu": float(runtime.node.dmips)}
    memory = memory_total()
    if memory:
        totals["ram"] = float(memory)
    try:
        stats = os.statvfs(runtime.config.state_root)
        totals[STORAGE] = totals[STATE] = float(stats.f_blocks * stats.f_frsize)
    except OSError:
        pass
    return totals


def instance_usage(runtime: Runtime, status: InstanceStatus) -> dict[str, float]:
    """The samples of a running instance (its status as `Runtime.status` returns it)."""
    values: dict[str, float] = {}
    if status.cpu_millicores is not None:
        share = status.cpu_millicores / 1000 / max(runtime.node.cores, 1)
        values["cpu"] = round(share * runtime.node.dmips)
    if status.ram_bytes is not None:
        values["ram"] = float(status.ram_bytes)
    for kind in (STORAGE, STATE):
        used = _used_bytes(runtime.run_dir(status.instance_id) / "volumes" / kind)
        if used is not None:
            values[kind] = float(used)
    record = runtime.network.record(status.instance_id)
    if record is not None:
        try:
            for traffic in runtime.network.traffic(record):
                values[traffic.direction] = float(traffic.used)
        except RuntimeFailure:
            pass
    return values
