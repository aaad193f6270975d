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

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.files import read_state, write_if_changed
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.rootfs import TEMPLATES_DIR, RootfsPlan
from aos_operator.runtime.service_config import RunParameters
from aos_operator.runtime.volumes import STATE, STORAGE, Volume

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
    def load(cls, path: Path, run_root: Path) -> SupervisorPlan:
        """The plan in `path` (an instance's data directory), refused when it names places that are
        not that instance's under this runtime's roots: the supervisor and teardown kill, unmount,
        detach and remove what a plan names, as root."""
        plan = read_state(path, cls.from_json)
        if plan is None:
            raise FileNotFoundError(errno.ENOENT, "no plan", str(path))
        wrong = plan.misplaced(path.parent, run_root)
        if wrong:
            raise RuntimeFailure(f"{path}: names places that are not this instance's: {'; '.join(wrong)}",
                                 hint="remove the file, or the instance it belongs to (aosctl rm -f)")
        return plan

    def misplaced(self, data_dir: Path, run_root: Path) -> list[str]:
        """What this plan names otherwise than the runtime does for the instance of `data_dir`. The
        runc binary and the cgroup parent are the runtime config's, which the supervisor does not
        have: a runtime tidying up uses its own, and the cgroups path must end in the instance ID."""
        run_dir = run_root / "instances" / data_dir.name
        layers = data_dir.parent.parent / "layers"
        expected: list[tuple[str, object, object]] = [
            ("instance ID", self.instance_id, data_dir.name), ("data_dir", self.data_dir, str(data_dir)),
            ("run_dir", self.run_dir, str(run_dir)), ("rootfs.run_dir", self.rootfs.run_dir, str(run_dir)),
            ("runc_root", self.runc_root, str(run_root / "runc")),
            ("cgroup_lock", self.cgroup_lock, str(run_root / "cgroups.lock")),
        ]
        if self.rootfs.templates is not None:
            expected.append(("rootfs.templates", self.rootfs.templates, str(run_root / TEMPLATES_DIR)))
        for volume in self.volumes:
            expected += [(f"{volume.kind} volume image", volume.image, str(data_dir / f"{volume.kind}.img")),
                         (f"{volume.kind} volume mount point", volume.mountpoint, str(run_dir / "volumes" / volume.kind))]
        wrong = [f"{field} {value!r}, not {want!r}" for field, value, want in expected if value != want]
        parts = self.cgroups_path.split("/")
        if not self.cgroups_path.startswith("/") or parts[-1] != data_dir.name or ".." in parts or "" in parts[1:]:
            wrong.append(f"cgroups_path {self.cgroups_path!r}, not <cgroup parent>/{data_dir.name}")
        if any(volume.kind not in (STORAGE, STATE) for volume in self.volumes):
            wrong.append("a volume of another kind than storage or state")
        for lower in (self.rootfs.service_layer, *self.rootfs.aos_layers):
            if Path(lower).parent != layers or Path(lower).name in ("", ".", ".."):
                wrong.append(f"layer {lower!r}, not in {str(layers)!r}")
        return wrong
