"""The runtime API of a node: install packages, start, stop, watch and recover instances.

A plain class (no Kubernetes) that the device agent's loop and `aosctl run` drive. Each running
instance has a supervisor process (see supervisor.py) that owns its container; the runtime
writes the plan and the spec, starts the supervisor, and reads the status file the supervisor
keeps. Because supervisors run in their own sessions and all state is on disk, a new Runtime
object (or a new process) finds running instances again with `recover()`.

On disk:
    <state_root>/packages, blobs, layers   installed packages (package.py)
    <state_root>/ids.json                   UID/GID pool (ids.py)
    <state_root>/instances/<id>/            plan.json, config.json, status.json, service.log,
                                            supervisor.json, storage.img, state.img (kept)
    <run_root>/instances/<id>/              the runc bundle while it runs (removed at stop)
    <run_root>/runc/                        runc's state (--root): only this runtime's containers
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.cgroups import InstanceCgroup, detect_cgroups
from aos_operator.runtime.files import file_lock, write_atomically
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.ids import ID_RANGE, IdPool
from aos_operator.runtime.logs import DEFAULT_LOG_MAX_BYTES
from aos_operator.runtime.network.manager import NetworkManager
from aos_operator.runtime.network.model import DEFAULT_PROVIDER, InstanceNetwork, NetworkConfig, short_hash
from aos_operator.runtime.node import detect_node_facts
from aos_operator.runtime.package import InstalledPackage, PackageStore
from aos_operator.runtime.plan import PLAN_FILE, SPEC_FILE, SupervisorPlan
from aos_operator.runtime.rootfs import DEFAULT_BASE_VISIBLE, RootfsPlan
from aos_operator.runtime.runc import Runc
from aos_operator.runtime.spec import InstanceSetup, NodeFacts, applied_limits, build_runtime_spec
from aos_operator.runtime.status import InstanceStatus, Phase, Reason, read_status, write_status
from aos_operator.runtime.teardown import teardown_instance
from aos_operator.runtime.volumes import STATE, STORAGE, Volume, prepare_image

SUPERVISOR_FILE = "supervisor.json"
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class RuntimeConfig:
    state_root: Path = Path("/var/lib/aos-operator/runtime")
    run_root: Path = Path("/run/aos-operator/runtime")
    runc_binary: str = "runc"
    cgroup_parent: str = "/aos"  # instances get <cgroup_parent>/<instance ID>
    base_path: str = "/"  # the node file system under the service layer
    base_visible: tuple[str, ...] = DEFAULT_BASE_VISIBLE  # what of it the service sees
    host_binds: tuple[str, ...] = ("/etc/nsswitch.conf", "/etc/ssl")  # bound read-only when present
    dns_servers: tuple[str, ...] = ()  # written to the instance's /etc/resolv.conf
    seccomp: bool = True
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    id_range: tuple[int, int] = ID_RANGE
    passwd_file: Path = Path("/etc/passwd")
    group_file: Path = Path("/etc/group")
    stop_timeout: float = 10.0
    network: NetworkConfig = NetworkConfig()  # network.enabled=False: loopback only

    def __post_init__(self) -> None:
        parts = self.cgroup_parent.split("/")
        if not self.cgroup_parent.startswith("/") or ".." in parts or "" in parts[1:]:
            raise ValueError(f"runtime config: cgroup_parent must be an absolute cgroup path such as /aos, "
                             f"got {self.cgroup_parent!r}")
        if self.log_max_bytes < 1:
            raise ValueError(f"runtime config: log_max_bytes must be >= 1, got {self.log_max_bytes}")


def _process_start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks, state letter) of a process, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[19]), fields[0]


class Runtime:
    def __init__(self, config: RuntimeConfig | None = None, node: NodeFacts | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.node = node or detect_node_facts()
        self.packages = PackageStore(self.config.state_root)
        self.ids = IdPool(self.config.state_root / "ids.json", self.config.passwd_file, self.config.group_file,
                          self.config.id_range)
        self.runc = Runc(self.config.run_root / "runc", self.config.runc_binary)
        self._cgroups = detect_cgroups()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._cpu_samples: dict[str, tuple[float, int, float]] = {}
        # [network hook] one scope per state root keeps two runtimes of a node apart.
        self.network = NetworkManager(self.config.network, self.config.state_root / "network",
                                      short_hash(str(self.config.state_root.resolve()), length=8))

    # --- paths -------------------------------------------------------------------------------

    def data_dir(self, instance_id: str) -> Path:
        return self.config.state_root / "instances" / instance_id

    def run_dir(self, instance_id: str) -> Path:
        return self.config.run_root / "instances" / instance_id

    def log_path(self, instance_id: str) -> Path:
        return self.data_dir(instance_id) / "service.log"

    def cgroups_path(self, instance_id: str) -> str:
        return f"{self.config.cgroup_parent.rstrip('/')}/{instance_id}"

    @contextmanager
    def _locked(self, instance_id: str) -> Iterator[None]:
        with file_lock(self.config.run_root / "locks" / f"{instance_id}.lock"):
            yield

    # --- packages ------------------------------------------------------------------------------

    def install(self, package_dir: Path | str) -> InstalledPackage:
        """Verify and install a package directory; returns the handle `start` takes."""
        return self.packages.install(Path(package_dir))

    def uninstall(self, digest: str) -> None:
        users = [s.instance_id for s in self.list() if s.package == digest and not s.phase.terminal]
        if users:
            raise RuntimeFailure(f"package {digest} is used by running instances: {', '.join(users)}",
                                 hint="stop them first")
        self.packages.uninstall(digest)

    # --- the spec ------------------------------------------------------------------------------

    def _volumes(self, package: InstalledPackage, instance_id: str, uid: int, gid: int) -> list[Volume]:
        quotas = package.service_config.quotas
        found = []
        for kind, quota in ((STORAGE, quotas.storage_limit), (STATE, quotas.state_limit)):
            if quota:
                found.append(Volume(kind, str(self.data_dir(instance_id) / f"{kind}.img"), quota,
                                    str(self.run_dir(instance_id) / "volumes" / kind), uid, gid))
        return found

    def spec_for(self, identity: InstanceIdentity, package: InstalledPackage, uid: int, gid: int, *,
                 volumes: Sequence[Volume] = (), env_overrides: Sequence[str] = (),
                 network_namespace: str | None = None) -> dict[str, Any]:
        """The OCI runtime spec an instance gets (the pure builder, fed with this node's choices)."""
        by_kind = {volume.kind: volume.bind_source for volume in volumes}
        setup = InstanceSetup(
            identity=identity, uid=uid, gid=gid,
            rootfs=str(self.run_dir(identity.instance_id) / "rootfs"),
            cgroups_path=self.cgroups_path(identity.instance_id),
            storage_source=by_kind.get(STORAGE), state_source=by_kind.get(STATE),
            host_binds=tuple(path for path in self.config.host_binds if os.path.exists(path)),
            env_overrides=tuple(env_overrides), seccomp=self.config.seccomp,
            network_namespace=network_namespace,
        )
        return build_runtime_spec(package.image_config, package.service_config, setup, self.node)

    def limits(self, package: InstalledPackage) -> list[tuple[str, str]]:
        """What limits an instance of `package` gets on this node, for people."""
        identity = InstanceIdentity("limits", "limits", 0)
        spec = self.spec_for(identity, package, 0, 0)
        return applied_limits(spec, package.service_config, self.node)

    # --- start ---------------------------------------------------------------------------------

    def _package(self, package: InstalledPackage | str) -> InstalledPackage:
        return package if isinstance(package, InstalledPackage) else self.packages.get(package)

    def start(self, identity: InstanceIdentity, package: InstalledPackage | str, *,
              env_overrides: Sequence[str] = (), restart: bool = True, wait: bool = True,
              timeout: float = 60.0, provider: str = DEFAULT_PROVIDER) -> InstanceStatus:
        """Start an instance (idempotent: an instance already running this package is left alone).

        `provider` names the instance's network (AosEdge: one per service provider).

        With `wait`, returns once the first start attempt is decided (Running, or its failure),
        and raises RuntimeFailure when the rootfs or volumes cannot be set up.
        """
        installed = self._package(package)
        instance_id = identity.instance_id
        with self._locked(instance_id):
            if self._supervisor_pid(instance_id) is not None:
                current = self._read(instance_id)
                if current is not None and current.package == installed.digest:
                    return self.status(instance_id)
                raise RuntimeFailure(f"instance {instance_id} ({identity}) already runs package "
                                     f"{current.package if current else 'unknown'}",
                                     hint="stop it before starting another package")
            self._tidy(instance_id)
            plan = self._prepare(identity, installed, env_overrides, restart, provider)
            # No record of a previous supervisor while the new one starts: a missing record means
            # "being started", a record of a dead process means "lost" (see status()).
            (Path(plan.data_dir) / SUPERVISOR_FILE).unlink(missing_ok=True)
            previous = read_status(plan.status_path)
            write_status(plan.status_path, InstanceStatus(
                instance_id, identity, installed.digest, generation=(previous.generation + 1) if previous else 0))
            self._spawn(plan)
        if wait:
            return self._wait_first_start(instance_id, timeout)
        return self.status(instance_id)

    def _setup_network(self, identity: InstanceIdentity, package: InstalledPackage,
                       provider: str) -> InstanceNetwork | None:
        """[network hook] The instance's network, set up once; it outlives container restarts."""
        if not self.config.network.enabled:
            return None
        return self.network.setup(instance_id=identity.instance_id, service_id=identity.service_id,
                                  subject_id=identity.subject_id, index=identity.index, provider=provider,
                                  service=package.service_config, image=package.image_config)

    def _prepare(self, identity: InstanceIdentity, package: InstalledPackage, env_overrides: Sequence[str],
                 restart: bool, provider: str = DEFAULT_PROVIDER) -> SupervisorPlan:
        instance_id = identity.instance_id
        data_dir = self.data_dir(instance_id)
        data_dir.mkdir(parents=True, exist_ok=True)
        uid = self.ids.instance_uid(instance_id)
        gid = self.ids.service_gid(identity.service_id)
        volumes = self._volumes(package, instance_id, uid, gid)
        for volume in volumes:
            prepare_image(Path(volume.image), volume.kind, volume.quota)
        network = self._setup_network(identity, package, provider)  # [network hook]
        spec = self.spec_for(identity, package, uid, gid, volumes=volumes, env_overrides=env_overrides,
                             network_namespace=network.netns if network else None)
        write_atomically(data_dir / SPEC_FILE, json.dumps(spec, indent=1))
        # [conformance] the service layer as the instance sees it: owned 0:<service GID>, as AosEdge 1.x
        service_layer = self.packages.layers.owned(package.layer_digest, gid)
        plan = SupervisorPlan(
            identity=identity, package=package.digest, run_dir=str(self.run_dir(instance_id)),
            data_dir=str(data_dir), runc_binary=self.config.runc_binary, runc_root=str(self.runc.root),
            cgroups_path=self.cgroups_path(instance_id), cgroup_lock=str(self.config.run_root / "cgroups.lock"),
            rootfs=RootfsPlan(str(self.run_dir(instance_id)), str(service_layer), self.config.base_path,
                              tuple(self.config.base_visible), tuple(self.config.dns_servers),
                              hosts=self.network.hosts_text(network) if network else None,
                              resolv=self.network.resolv_text(network) if network else None),
            volumes=tuple(volumes), run_parameters=package.service_config.run_parameters, restart=restart,
            log_max_bytes=self.config.log_max_bytes,
        )
        plan.save()
        return plan

    def _spawn(self, plan: SupervisorPlan) -> None:
        self.config.run_root.mkdir(parents=True, exist_ok=True)
        # runc, losetup, mkfs.ext4 and e2fsck live in sbin, which a caller's PATH may lack.
        path = os.environ.get("PATH", "")
        environment = dict(os.environ, PATH=":".join(filter(None, [path, "/usr/local/sbin:/usr/sbin:/sbin"])))
        with open(plan.supervisor_log_path, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "aos_operator.runtime.supervisor", str(Path(plan.data_dir) / PLAN_FILE)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/", env=environment,
            )
        started = _process_start_ticks(child.pid)
        self._children[plan.instance_id] = child
        write_atomically(Path(plan.data_dir) / SUPERVISOR_FILE,
                         json.dumps({"pid": child.pid, "start_ticks": started[0] if started else None}))

    def _wait_first_start(self, instance_id: str, timeout: float) -> InstanceStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self._read(instance_id)
            if status is not None:
                if status.phase == Phase.FAILED and status.reason == Reason.SETUP_ERROR:
                    raise RuntimeFailure(f"instance {instance_id}: setup failed: {status.message}")
                if status.phase in (Phase.RUNNING, Phase.FAILED, Phase.STOPPED) or status.last_exit is not None:
                    return self.status(instance_id)
            if self._supervisor_pid(instance_id) is None and (status is None or not status.phase.terminal):
                log = Path(self.data_dir(instance_id) / "supervisor.log")
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeFailure(f"instance {instance_id}: its supervisor exited early\n{tail}")
            if time.monotonic() > deadline:
                return self.status(instance_id)
            time.sleep(_POLL_SECONDS)

    # --- supervisors -----------------------------------------------------------------------------

    def _reap_children(self) -> None:
        """Collect supervisors of this process that have exited, so none stays a zombie."""
        for instance_id, child in list(self._children.items()):
            if child.poll() is not None:
                self._children.pop(instance_id, None)

    def _supervisor_pid(self, instance_id: str) -> int | None:
        """The PID of the instance's live supervisor (checked against its start time), else None."""
        self._reap_children()
        try:
            record = json.loads((self.data_dir(instance_id) / SUPERVISOR_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        found = _process_start_ticks(record["pid"])
        if found is None or found[1] == "Z":
            return None
        if record["start_ticks"] is not None and found[0] != record["start_ticks"]:
            return None  # the PID now belongs to another process
        return int(record["pid"])

    def _wait_supervisor_exit(self, pid: int, timeout: float) -> bool:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            return bool(select.select([pidfd], [], [], timeout)[0])
        finally:
            os.close(pidfd)

    def _tidy(self, instance_id: str) -> None:
        """Tear down what a dead supervisor left (the caller holds the instance lock)."""
        plan_path = self.data_dir(instance_id) / PLAN_FILE
        if plan_path.exists() and (self.run_dir(instance_id).exists()
                                   or self.runc.state(instance_id) is not None):
            teardown_instance(SupervisorPlan.load(plan_path))

    # --- stop, remove ------------------------------------------------------------------------------

    def stop(self, instance_id: str, timeout: float | None = None) -> InstanceStatus:
        """Stop an instance (SIGKILL to its processes, as AosEdge) and remove all it put on the node."""
        timeout = self.config.stop_timeout if timeout is None else timeout
        with self._locked(instance_id):
            pid = self._supervisor_pid(instance_id)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                if not self._wait_supervisor_exit(pid, timeout):
                    os.kill(pid, signal.SIGKILL)
                    self._wait_supervisor_exit(pid, timeout)
            self._supervisor_pid(instance_id)  # reaps our child
            self._tidy(instance_id)
            status = self._read(instance_id)
            if status is None:
                raise RuntimeFailure(f"no instance {instance_id} on this node")
            if not status.phase.terminal:
                status = status.evolve(phase=Phase.STOPPED, reason=Reason.STOPPED, pid=None,
                                       message="stopped after its supervisor did not end in time")
                write_status(self.data_dir(instance_id) / "status.json", status)
            self.network.teardown(instance_id)  # [network hook] nothing of a stopped instance stays
        return self.status(instance_id)

    def remove(self, instance_id: str) -> None:
        """Stop an instance and delete its data (storage, state, logs) and its UID."""
        status = self.stop(instance_id)
        with self._locked(instance_id):
            shutil.rmtree(self.data_dir(instance_id))
            self.ids.release_instance(instance_id)
            if not any(s.identity.service_id == status.identity.service_id for s in self.list()):
                self.ids.release_service(status.identity.service_id)
        self._cpu_samples.pop(instance_id, None)

    def cleanup(self) -> list[InstanceStatus]:
        """Stop every instance of this runtime (data is kept)."""
        stopped = [self.stop(status.instance_id) for status in self.list() if not status.phase.terminal]
        for instance_id in self.instance_ids():  # [network hook] ended instances keep no network
            self.network.teardown(instance_id)
        return stopped

    # --- status --------------------------------------------------------------------------------------

    def _read(self, instance_id: str) -> InstanceStatus | None:
        return read_status(self.data_dir(instance_id) / "status.json")

    def instance_ids(self) -> list[str]:
        root = self.config.state_root / "instances"
        return sorted(p.name for p in root.iterdir() if (p / "status.json").exists()) if root.is_dir() else []

    def status(self, instance_id: str) -> InstanceStatus:
        """The instance's status, with CPU and RAM use sampled now when it runs."""
        status = self._read(instance_id)
        if status is None:
            raise RuntimeFailure(f"no instance {instance_id} on this node")
        if status.phase.terminal and self.network.record(instance_id) is not None:
            self._release_network(instance_id)
        being_started = not (self.data_dir(instance_id) / SUPERVISOR_FILE).exists()
        if not status.phase.terminal and self._supervisor_pid(instance_id) is None and not being_started:
            return replace(status, phase=Phase.FAILED, reason=Reason.SUPERVISOR_LOST,
                           message="its supervisor is gone; recover() restarts it")
        if status.phase == Phase.RUNNING:
            return self._with_network(self._with_usage(status))
        return status if status.phase.terminal else self._with_network(status)

    def _release_network(self, instance_id: str) -> None:
        """[network hook] An instance that ended for good (CrashLoop, setup error) gives its network
        back, like everything else its supervisor tore down; checked again under the lock, so a
        start that is setting a new one up is left alone."""
        with self._locked(instance_id):
            status = self._read(instance_id)
            if status is not None and status.phase.terminal:
                self.network.teardown(instance_id)

    def _with_network(self, status: InstanceStatus) -> InstanceStatus:
        """[network hook] The instance's address, and which traffic limit it used up."""
        record = self.network.record(status.instance_id)
        if record is None:
            return status
        try:
            blocked = [t for t in self.network.traffic(record) if t.blocked]
        except RuntimeFailure:
            blocked = []
        if not blocked:
            return replace(status, ip=record.ip)
        message = "; ".join(f"{t.direction}Limit of {t.limit} bytes per {self.config.network.traffic_period} "
                            f"used up ({t.used} bytes): {t.direction} traffic is dropped until the period ends"
                            for t in blocked)
        return replace(status, ip=record.ip, traffic_blocked=tuple(t.direction for t in blocked),
                       traffic_message=message)

    def _with_usage(self, status: InstanceStatus) -> InstanceStatus:
        cgroup = InstanceCgroup(self._cgroups, self.cgroups_path(status.instance_id))
        usage_ns, ram = cgroup.cpu_usage_ns(), cgroup.memory_bytes()
        if usage_ns is None:
            return replace(status, ram_bytes=ram)
        now = time.monotonic()
        previous = self._cpu_samples.get(status.instance_id)
        self._cpu_samples[status.instance_id] = (now, usage_ns, status.start_time or 0.0)
        if previous and previous[2] == status.start_time and now > previous[0] and usage_ns >= previous[1]:
            millicores = (usage_ns - previous[1]) / (now - previous[0]) / 1e6
        else:  # first sample of this run: the average since it started
            elapsed = time.time() - (status.start_time or time.time())
            millicores = usage_ns / elapsed / 1e6 if elapsed > 0 else 0.0
        return replace(status, cpu_millicores=round(millicores, 1), ram_bytes=ram)

    def list(self) -> list[InstanceStatus]:
        return [self.status(instance_id) for instance_id in self.instance_ids()]

    # --- recovery ----------------------------------------------------------------------------------------

    def recover(self) -> list[InstanceStatus]:
        """After this process (or the node agent) restarted: adopt instances whose supervisor
        lives, restart those whose supervisor died while they should run, tidy stopped ones, and
        delete containers of this runtime that belong to no instance."""
        self.packages.layers.remove_unfinished()
        known = set(self.instance_ids())
        for instance_id in known:
            with self._locked(instance_id):
                if self._supervisor_pid(instance_id) is not None:
                    continue
                self._tidy(instance_id)
                status = self._read(instance_id)
                if status is None or status.phase.terminal:
                    continue
                plan = SupervisorPlan.load(self.data_dir(instance_id) / PLAN_FILE)
                write_status(plan.status_path, status.evolve(
                    phase=Phase.PENDING, reason=Reason.SUPERVISOR_LOST, pid=None,
                    message="the supervisor died; started a new one"))
                self._spawn(plan)
        for container in self.runc.list():
            if container["id"] not in known:
                self.runc.kill(container["id"], "KILL")
                self.runc.delete(container["id"], force=True)
        # [network hook] live instances keep their network; the rest is torn down or swept.
        live = {s.instance_id for s in self.list() if not s.phase.terminal}
        self.network.adopt(live)
        return self.list()

    # --- watching ------------------------------------------------------------------------------------------

    def watch(self, callback: Callable[[InstanceStatus], None], interval: float = 0.2) -> StatusWatcher:
        """Call `callback` from a background thread with each new status of any instance."""
        return StatusWatcher(self, callback, interval)


class StatusPoller:
    """Polling API: `poll()` returns the statuses that changed since the previous call."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._seen: dict[str, tuple[int, str, str | None, tuple[str, ...]]] = {}

    def poll(self) -> list[InstanceStatus]:
        changed = []
        for instance_id in self.runtime.instance_ids():
            try:
                status = self.runtime.status(instance_id)
            except RuntimeFailure:
                continue  # removed meanwhile
            key = (status.generation, status.phase.value, status.reason, status.traffic_blocked)
            if self._seen.get(instance_id) != key:
                self._seen[instance_id] = key
                changed.append(status)
        return changed


class StatusWatcher:
    def __init__(self, runtime: Runtime, callback: Callable[[InstanceStatus], None], interval: float) -> None:
        self._poller = StatusPoller(runtime)
        self._callback = callback
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aos-status-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for status in self._poller.poll():
                try:
                    self._callback(status)
                except Exception:  # a failing callback must not end the watching
                    logging.getLogger(__name__).exception("status callback failed for %s", status.instance_id)
            self._stop.wait(self._interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
