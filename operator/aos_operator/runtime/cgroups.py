"""The node's cgroup file systems, as far as the runtime reads or tidies them.

Works on cgroup v1 (one hierarchy per controller, as on this machine) and v2 (one unified
hierarchy). Reads CPU time, memory use, throttling and OOM kills of an instance's cgroup, and
removes the empty parent directories runc leaves behind after `runc delete`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CgroupMounts:
    """Where the hierarchies are: v1 controller name -> mount point, or the v2 mount point."""

    version: int
    v1: dict[str, Path] = field(default_factory=dict)
    unified: Path | None = None

    @property
    def all_roots(self) -> list[Path]:
        roots = sorted(set(self.v1.values()))
        return roots + ([self.unified] if self.unified else [])

    def directory(self, controller: str, cgroups_path: str) -> Path | None:
        root = self.unified if self.version == 2 else self.v1.get(controller)
        return None if root is None else root / cgroups_path.lstrip("/")


def detect_cgroups(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupMounts:
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for line in mountinfo.read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        point, fstype, options = Path(fields[4]), tail[0], tail[2].split(",")
        if fstype == "cgroup2":
            unified = point
        elif fstype == "cgroup":
            for option in options:
                if option not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec", "clone_children"):
                    v1[option] = point  # a controller, or name=<hierarchy>
    return CgroupMounts(version=1 if "memory" in v1 else 2, v1=v1, unified=unified)


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError:
        return None


def _keyed(text: str | None) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    return values


class InstanceCgroup:
    """Readings of one instance's cgroup (None when it does not exist, e.g. between restarts)."""

    def __init__(self, mounts: CgroupMounts, cgroups_path: str) -> None:
        self.mounts = mounts
        self.path = cgroups_path

    def _file(self, controller: str, name: str) -> Path | None:
        directory = self.mounts.directory(controller, self.path)
        return None if directory is None else directory / name

    def cpu_usage_ns(self) -> int | None:
        if self.mounts.version == 2:
            usec = _keyed(_read(self._file("cpu", "cpu.stat"))).get("usage_usec")
            return None if usec is None else usec * 1000
        text = _read(self._file("cpuacct", "cpuacct.usage"))
        return int(text) if text and text.strip().isdigit() else None

    def memory_bytes(self) -> int | None:
        name = "memory.current" if self.mounts.version == 2 else "memory.usage_in_bytes"
        text = _read(self._file("memory", name))
        return int(text) if text and text.strip().isdigit() else None

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer killed in this cgroup (v1 memory.oom_control, v2 memory.events)."""
        name = "memory.events" if self.mounts.version == 2 else "memory.oom_control"
        return _keyed(_read(self._file("memory", name))).get("oom_kill", 0)

    def cpu_throttling(self) -> dict[str, int]:
        """nr_periods, nr_throttled and throttled time of the CFS bandwidth controller."""
        return _keyed(_read(self._file("cpu", "cpu.stat")))

    def existing_directories(self) -> list[Path]:
        found = []
        for root in self.mounts.all_roots:
            directory = root / self.path.lstrip("/")
            if directory.is_dir():
                found.append(directory)
        return found

    def remove(self, keep_parents_above: int = 0) -> None:
        """rmdir the instance's cgroup (if runc left it) and every parent that became empty.

        `keep_parents_above` is how many leading path components never to remove (0: all of them).
        A parent still holding other instances fails with EBUSY/ENOTEMPTY and stays.
        """
        parts = [part for part in self.path.split("/") if part]
        for root in self.mounts.all_roots:
            for depth in range(len(parts), keep_parents_above, -1):
                directory = root.joinpath(*parts[:depth])
                try:
                    os.rmdir(directory)
                except FileNotFoundError:
                    continue
                except OSError as error:
                    if error.errno in (errno.EBUSY, errno.ENOTEMPTY):
                        break
                    raise


def swap_accounting(mounts: CgroupMounts) -> bool:
    """Whether memory+swap can be limited on this node."""
    if mounts.version == 1:
        memory = mounts.v1.get("memory")
        return memory is not None and (memory / "memory.memsw.limit_in_bytes").exists()
    if mounts.unified is None:
        return False
    own = Path("/proc/self/cgroup").read_text().splitlines()
    relative = next((line.split(":", 2)[2] for line in own if line.startswith("0::")), "/")
    return (mounts.unified / relative.lstrip("/") / "memory.swap.max").exists()
