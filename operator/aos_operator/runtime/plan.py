"""Everything the node supervisor needs to run an instance, as one JSON file in the instance's data
directory: written by the runtime before it starts the supervisor, read by the supervisor, and by
a later runtime process that must tidy up after a supervisor that died.
"""

from __future__ import annotations

import errno
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aos_operator.runtime.files import read_state, write_if_changed
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.rootfs import RootfsPlan
from aos_operator.runtime.service_config import RunParameters
from aos_operator.runtime.volumes import Volume

PLAN_FILE = "plan.json"
SPEC_FILE = "config.json"  # the OCI runtime spec, in the data dir and in the bundle


@dataclass(frozen=True)
class SupervisorPlan:
    identity: InstanceIdentity
    package: str  # manifest digest
    run_dir: str  # the runc bundle: config.json, rootfs/, layers/ (tmpfs), volumes/
    data_dir: str  # kept across runs: plan.json, status.json, service.log, volume images
    runc_binary: str
    runc_root: str
    cgroups_path: str
    cgroup_lock: str  # serialises runc run with the removal of shared cgroup parents
    rootfs: RootfsPlan
    volumes: tuple[Volume, ...]
    run_parameters: RunParameters
    restart: bool
    log_max_bytes: int
    stop_signal: int = signal.SIGTERM  # sent first on a stop; SIGKILL follows after the grace period
    offline_ttl: float = 0.0  # seconds the instance may run without contact; 0: forever (offline.py)
    online_record: str = ""  # the node's last-contact record; empty: offlineTTL is not enforced
    stop_grace: float = 10.0  # SIGKILL this long after the stop signal, for stops the supervisor decides

    @property
    def instance_id(self) -> str:
        return self.identity.instance_id

    @property
    def status_path(self) -> Path:
        return Path(self.data_dir) / "status.json"

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / "service.log"

    @property
    def supervisor_log_path(self) -> Path:
        return Path(self.data_dir) / "supervisor.log"

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity.to_json(), "package": self.package, "run_dir": self.run_dir,
            "data_dir": self.data_dir, "runc_binary": self.runc_binary, "runc_root": self.runc_root,
            "cgroups_path": self.cgroups_path, "cgroup_lock": self.cgroup_lock, "rootfs": self.rootfs.to_json(),
            "volumes": [volume.to_json() for volume in self.volumes],
            "run_parameters": {"start_interval": self.run_parameters.start_interval,
                               "start_burst": self.run_parameters.start_burst,
                               "restart_interval": self.run_parameters.restart_interval},
            "restart": self.restart, "log_max_bytes": self.log_max_bytes, "stop_signal": int(self.stop_signal),
            "offline_ttl": self.offline_ttl, "online_record": self.online_record, "stop_grace": self.stop_grace,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SupervisorPlan:
        return cls(
            identity=InstanceIdentity.from_json(data["identity"]), package=data["package"],
            run_dir=data["run_dir"], data_dir=data["data_dir"], runc_binary=data["runc_binary"],
            runc_root=data["runc_root"], cgroups_path=data["cgroups_path"], cgroup_lock=data["cgroup_lock"],
            rootfs=RootfsPlan.from_json(data["rootfs"]),
            volumes=tuple(Volume(**volume) for volume in data["volumes"]),
            run_parameters=RunParameters(**data["run_parameters"]),
            restart=data["restart"], log_max_bytes=data["log_max_bytes"],
            stop_signal=int(data.get("stop_signal", signal.SIGTERM)),
            offline_ttl=float(data.get("offline_ttl", 0.0)), online_record=str(data.get("online_record", "")),
            stop_grace=float(data.get("stop_grace", 10.0)),
        )

    def save(self) -> Path:
        path = Path(self.data_dir) / PLAN_FILE
        write_if_changed(path, json.dumps(self.to_json(), sort_keys=True, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> SupervisorPlan:
        plan = read_state(path, cls.from_json)
        if plan is None:
            raise FileNotFoundError(errno.ENOENT, "no plan", str(path))
        return plan
