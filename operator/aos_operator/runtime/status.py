"""The status of an instance as the runtime reports it, and its file on disk.

The node supervisor is the only writer while it supervises the instance (the runtime writes
the first Pending status when no supervisor answers its start request, and, with no supervisor,
a final one; a running supervisor gets Pending with the request); each write replaces
`status.json` atomically and bumps `generation`, so a poller sees each change once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from aos_operator.runtime.files import read_state, write_atomically
from aos_operator.runtime.identity import InstanceIdentity


class Phase(StrEnum):
    PENDING = "Pending"  # accepted, rootfs and volumes being set up
    STARTING = "Starting"  # runc is creating the container, or a restart is waiting for restartInterval
    RUNNING = "Running"
    FAILED = "Failed"  # gave up: start limit hit, or setup failed
    STOPPED = "Stopped"  # stopped on request

    @property
    def terminal(self) -> bool:
        return self in (Phase.FAILED, Phase.STOPPED)


class Reason:
    """Why a container ended or an instance is in its phase."""

    COMPLETED = "Completed"  # exited 0
    CRASHED = "Crashed"  # exited non-zero or died of a signal
    OOM_KILLED = "OOMKilled"  # the memory cgroup's OOM killer killed a process of it
    START_ERROR = "StartError"  # runc could not create or start it
    KILLED = "Killed"  # killed (SIGKILL) by a stop request
    CRASH_LOOP = "CrashLoop"  # more than startBurst starts within startInterval
    SETUP_ERROR = "SetupError"  # rootfs, volumes or supervisor could not be set up
    SUPERVISOR_LOST = "SupervisorLost"  # no node supervisor runs; recover() starts one, which adopts it
    STOPPED = "Stopped"  # stopped on request; as a last exit: ended after the stop's SIGTERM
    TRAFFIC_LIMIT = "TrafficLimitReached"  # running, but uploadLimit/downloadLimit is used up this period
    OFFLINE_TIMEOUT = "OfflineTimeout"  # offline for longer than the service's offlineTTL: stopped, not started


@dataclass(frozen=True)
class Termination:
    """How one run of the container ended."""

    exit_code: int  # the exit status, or 128 + signal
    reason: str
    finished_at: float
    signal: int | None = None
    oom_kills: int = 0
    message: str = ""


@dataclass(frozen=True)
class InstanceStatus:
    instance_id: str
    identity: InstanceIdentity
    package: str
    phase: Phase = Phase.PENDING
    reason: str | None = None
    message: str = ""
    starts: int = 0
    restarts: int = 0
    start_time: float | None = None  # of the current or last run (epoch seconds)
    pid: int | None = None  # container init, host PID namespace
    last_exit: Termination | None = None
    generation: int = 0
    # Sampled from the cgroup when the status is read; never stored.
    cpu_millicores: float | None = field(default=None, compare=False)
    ram_bytes: int | None = field(default=None, compare=False)
    # From the instance network when the status is read; never stored.
    ip: str | None = field(default=None, compare=False)
    traffic_blocked: tuple[str, ...] = field(default=(), compare=False)  # "upload", "download"
    traffic_message: str = field(default="", compare=False)

    @property
    def exit_code(self) -> int | None:
        return None if self.last_exit is None else self.last_exit.exit_code

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["identity"] = self.identity.to_json()
        data["phase"] = self.phase.value
        for name in ("cpu_millicores", "ram_bytes", "ip", "traffic_blocked", "traffic_message"):
            data.pop(name)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceStatus:
        values = dict(data)
        values["identity"] = InstanceIdentity.from_json(values["identity"])
        values["phase"] = Phase(values["phase"])
        if values.get("last_exit"):
            values["last_exit"] = Termination(**values["last_exit"])
        return cls(**values)

    def evolve(self, **changes: Any) -> InstanceStatus:
        return replace(self, generation=self.generation + 1, **changes)


def write_status(path: Path, status: InstanceStatus) -> None:
    write_atomically(path, json.dumps(status.to_json(), sort_keys=True))


def read_status(path: Path) -> InstanceStatus | None:
    return read_state(path, InstanceStatus.from_json)
