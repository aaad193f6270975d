"""The runtime API of a node: install packages, start, stop, watch and recover instances.

A plain class (no Kubernetes) that the device agent's loop and `aosctl run` drive. One resident
node supervisor per runtime (see supervisor.py) owns every running container; the runtime writes
an instance's plan and spec, asks the supervisor over its unix socket to start or stop it
(starting the supervisor on demand when none runs), and reads the status file the supervisor
keeps. The supervisor runs in its own session and all state is on disk, so the runtime's
process (the agent, `aosctl`) can exit and a new Runtime object finds everything again;
`recover()` also brings back a supervisor that died, which adopts the running containers.

On disk:
    <state_root>/packages, blobs, layers   installed packages (package.py)
    <state_root>/ids.json                   UID/GID pool (ids.py)
    <state_root>/supervisor.log             the node supervisor's own errors
    <state_root>/permissions.json           AOS_SECRET of each instance with permissions (0600)
    <state_root>/network/                   instance networks (network/manager.py; the netns in
                                            /run/netns outlives container restarts)
    <state_root>/instances/<id>/            plan.json, config.json, status.json, starts.json,
                                            service.log, storage.img, state.img (kept)
    <run_root>/supervisor.sock, .lock, .json the node supervisor's socket, lock and PID record
    <run_root>/permissions.sock             the permission socket (permission_server.py)
    <run_root>/instances/<id>/              the runc bundle while it runs (removed at stop)
    <run_root>/runc/                        runc's state (--root): only this runtime's containers
    <run_root>/rootfs-templates/            generated top and whiteouts layers, shared (rootfs.py)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from aos_operator.bounded import parse_json
from aos_operator.errors import AosError, RuntimeFailure
from aos_operator.runtime import supervisor as node_supervisor
from aos_operator.runtime.cgroups import InstanceCgroup, detect_cgroups
from aos_operator.runtime.devices import HostGrants, check_shares, hosts_lines, resolve_grants, share_usage
from aos_operator.runtime.files import file_lock, write_if_changed
from aos_operator.runtime.identity import InstanceIdentity, is_instance_id
from aos_operator.runtime.ids import ID_RANGE, IdPool
from aos_operator.runtime.layers import DEFAULT_MAX_LAYER_BYTES
from aos_operator.runtime.logs import DEFAULT_LOG_MAX_BYTES
from aos_operator.runtime.network.hook import PACKAGE_ANNOTATION, PROVIDER_ANNOTATION, NetworkHook
from aos_operator.runtime.network.manager import NetworkManager
from aos_operator.runtime.network.model import DEFAULT_PROVIDER, NetworkConfig, short_hash
from aos_operator.runtime.node import detect_node_facts
from aos_operator.runtime.node_config import DEV_ROOT, EMPTY as EMPTY_NODE_CONFIG, NodeConfig
from aos_operator.runtime.offline import online_record_path
from aos_operator.runtime.package import InstalledPackage, PackageStore, check_package_working_dir
from aos_operator.runtime.permission_server import PermissionRegistry
from aos_operator.runtime.plan import PLAN_FILE, SPEC_FILE, SupervisorPlan
from aos_operator.runtime.rootfs import DEFAULT_BASE_VISIBLE, TEMPLATES_DIR, RootfsPlan, hosts_file
from aos_operator.runtime.runc import Runc
from aos_operator.runtime.spec import InstanceSetup, NodeFacts, applied_limits, build_runtime_spec, check_fits_node
from aos_operator.runtime.status import InstanceStatus, Phase, Reason, read_status, write_status
from aos_operator.runtime.teardown import teardown_instance
from aos_operator.runtime.volumes import STATE, STORAGE, Volume, check_backing, prepare_image

SUPERVISOR_FILE = node_supervisor.RECORD_FILE  # in the run root
_POLL_SECONDS = 0.01
_STOP_MARGIN = 60.0  # beyond the grace period: teardown (unmounts, e2fsck-free detach) and a busy supervisor


def _checked(instance_id: str) -> str:
    if not is_instance_id(instance_id):
        raise RuntimeFailure(f"no instance {str(instance_id)[:80]!r} on this node: not an instance ID (a UUID)")
    return instance_id


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
    # A stop sends SIGTERM, and SIGKILL this many seconds later (the default is Docker's and
    # podman's; systemd's DefaultTimeoutStopSec is 90 s, AosEdge itself sends SIGKILL at once).
    stop_timeout: float = 10.0
    max_layer_bytes: int = DEFAULT_MAX_LAYER_BYTES  # a layer unpacking to more is refused
    supervisor_linger: float = 2.0  # the node supervisor exits after this long without instances
    network: NetworkConfig = NetworkConfig()  # network.enabled=False: loopback only
    node_config: NodeConfig = EMPTY_NODE_CONFIG  # host devices and resources offered (runtime/node_config.py)
    dev_root: str = DEV_ROOT  # where host devices must be

    def __post_init__(self) -> None:
        parts = self.cgroup_parent.split("/")
        if not self.cgroup_parent.startswith("/") or ".." in parts or "" in parts[1:]:
            raise ValueError(f"runtime config: cgroup_parent must be an absolute cgroup path such as /aos, "
                             f"got {self.cgroup_parent!r}")
        if self.log_max_bytes < 1:
            raise ValueError(f"runtime config: log_max_bytes must be >= 1, got {self.log_max_bytes}")
        if self.max_layer_bytes < 1:
            raise ValueError(f"runtime config: max_layer_bytes must be >= 1, got {self.max_layer_bytes}")
        if self.stop_timeout < 0 or self.supervisor_linger < 0:
            raise ValueError("runtime config: stop_timeout and supervisor_linger must be >= 0")


class InstanceHook(Protocol):
    """Node setup an instance needs beside its container, once per instance and not per restart
    (e.g. a network namespace): `setup` runs in every `Runtime.start` before the spec is written
    (it may change the spec and must be idempotent), `teardown` in `Runtime.remove`."""

    def setup(self, identity: InstanceIdentity, spec: dict[str, Any]) -> None: ...

    def teardown(self, instance_id: str) -> None: ...


class Runtime:
    def __init__(self, config: RuntimeConfig | None = None, node: NodeFacts | None = None,
                 hooks: Sequence[InstanceHook] = ()) -> None:
        self.config = config or RuntimeConfig()
        self.hooks = list(hooks)
        self.node = node or detect_node_facts()
        self.packages = PackageStore(self.config.state_root, self.config.max_layer_bytes)
        self.ids = IdPool(self.config.state_root / "ids.json", self.config.passwd_file, self.config.group_file,
                          self.config.id_range)
        self.runc = Runc(self.config.run_root / "runc", self.config.runc_binary)
        self.permissions = PermissionRegistry(self.config.state_root, self.config.run_root)  # AOS_SECRET
        self._cgroups = detect_cgroups()
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._cpu_samples: dict[str, tuple[float, int, float]] = {}
        # [network hook] one scope per state root keeps two runtimes of a node apart; the network
        # is the first hook, so the others see the spec with its netns.
        self.network = NetworkManager(self.config.network, self.config.state_root / "network",
                                      short_hash(str(self.config.state_root.resolve()), length=8))
        if self.config.network.enabled:
            self.hooks.insert(0, NetworkHook(self.network, self.packages))

    # --- paths -------------------------------------------------------------------------------

    def data_dir(self, instance_id: str) -> Path:
        return self.config.state_root / "instances" / _checked(instance_id)

    def run_dir(self, instance_id: str) -> Path:
        return self.config.run_root / "instances" / _checked(instance_id)

    def log_path(self, instance_id: str) -> Path:
        return self.data_dir(instance_id) / "service.log"

    def cgroups_path(self, instance_id: str) -> str:
        return f"{self.config.cgroup_parent.rstrip('/')}/{_checked(instance_id)}"

    @contextmanager
    def _locked(self, instance_id: str) -> Iterator[None]:
        with file_lock(self.config.run_root / "locks" / f"{_checked(instance_id)}.lock"):
            yield

    # --- packages ------------------------------------------------------------------------------

    def install(self, package_dir: Path | str) -> InstalledPackage:
        """Verify and install a package directory; returns the handle `start` takes. Starts the
        node supervisor in the background if none runs, so its start overlaps the unpacking."""
        self._spawn_supervisor_if_absent()
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
                 network_namespace: str | None = None, grants: HostGrants | None = None,
                 secret: str | None = None) -> dict[str, Any]:
        """The OCI runtime spec an instance gets (the pure builder, fed with this node's choices)."""
        if grants is None:
            grants = self.grants(package)
        by_kind = {volume.kind: volume.bind_source for volume in volumes}
        setup = InstanceSetup(
            identity=identity, uid=uid, gid=gid,
            rootfs=str(self.run_dir(identity.instance_id) / "rootfs"),
            cgroups_path=self.cgroups_path(identity.instance_id),
            storage_source=by_kind.get(STORAGE), state_source=by_kind.get(STATE),
            host_binds=tuple(path for path in self.config.host_binds if os.path.exists(path)),
            env_overrides=tuple(env_overrides), seccomp=self.config.seccomp,
            network_namespace=network_namespace, grants=grants, secret=secret,
        )
        return build_runtime_spec(package.image_config, package.service_config, setup, self.node)

    def grants(self, package: InstalledPackage) -> HostGrants:
        """The host devices and resources the package's service gets here (refused when missing)."""
        service = package.service_config
        return resolve_grants(service.devices, service.resources, self.config.node_config,
                              group_file=self.config.group_file, dev_root=self.config.dev_root)

    def _devices_in_use(self, instance_id: str) -> list[tuple[Any, ...]]:
        """The device lists of the other live instances of this runtime (they hold shares)."""
        in_use = []
        for other in self.instance_ids():
            status = self._read(other)
            if other == instance_id or status is None or status.phase.terminal or not status.package:
                continue
            try:
                in_use.append(self.packages.get(status.package).service_config.devices)
            except AosError:
                continue  # its package is gone: it cannot hold anything
        return in_use

    def device_usage(self) -> dict[str, int]:
        """Per device of the node config, how many live instances hold a share of it."""
        return share_usage(self.config.node_config, self._devices_in_use(""))

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
        self._spawn_supervisor_if_absent()  # its interpreter starts while the spec is prepared
        with self._locked(instance_id):
            current = self._read(instance_id)
            if current is not None and not current.phase.terminal:
                if current.package != installed.digest:
                    raise RuntimeFailure(f"instance {instance_id} ({identity}) already runs package "
                                         f"{current.package}", hint="stop it before starting another package")
                self._request({"op": "start", "id": instance_id})  # a no-op when it is supervised
                return self.status(instance_id)
            self._tidy(instance_id)
            # [devices] the share check and the status that takes the share, under one node lock
            # (the supervisor has the first status on disk when it answers the start request)
            shares = file_lock(self.config.run_root / "devices.lock") if installed.service_config.devices \
                else contextlib.nullcontext()
            with shares:
                if installed.service_config.devices:
                    check_shares(installed.service_config.devices, self.config.node_config,
                                 self._devices_in_use(instance_id), instance_id)
                plan = self._prepare(identity, installed, env_overrides, restart, provider)
                self._request_start(plan, InstanceStatus(
                    instance_id, identity, installed.digest, generation=(current.generation + 1) if current else 0))
        if wait:
            return self._wait_first_start(instance_id, timeout)
        return self.status(instance_id)

    def _request_start(self, plan: SupervisorPlan, pending: InstanceStatus) -> None:
        """[warm start] Hand a prepared instance to the node supervisor. A running supervisor gets
        the Pending status with the request and writes the instance's first status itself, while
        runc runs, before it answers (one status replace less before the container starts); when
        none answers, Pending is written here for the supervisor started now to pick up."""
        try:
            reply = node_supervisor.request(self.config.run_root, {"op": "start", "id": pending.instance_id,
                                                                   "status": pending.to_json()})
        except OSError:  # none listens, or it exited before answering
            write_status(plan.status_path, pending)
            self._request({"op": "start", "id": pending.instance_id})
            return
        if not reply.get("ok"):
            raise RuntimeFailure(f"node supervisor: {reply.get('error', 'request refused')}")

    def _prepare(self, identity: InstanceIdentity, package: InstalledPackage, env_overrides: Sequence[str],
                 restart: bool, provider: str = DEFAULT_PROVIDER) -> SupervisorPlan:
        instance_id = identity.instance_id
        # Hostile-input checks before anything is written: the layer must contain the cwd, the node's
        # disk must be able to hold the storage and state quotas, runc must be able to set the rlimits.
        check_package_working_dir(package)
        check_fits_node(package.service_config, instance_id, self.node)
        check_backing(self._volumes(package, instance_id, 0, 0), self.config.state_root)
        grants = self.grants(package)  # [devices] refused before anything of the instance is written
        data_dir = self.data_dir(instance_id)
        data_dir.mkdir(parents=True, exist_ok=True)
        uid, gid = self.ids.instance_ids(instance_id, identity.service_id)
        volumes = self._volumes(package, instance_id, uid, gid)
        for volume in volumes:
            prepare_image(Path(volume.image), volume.kind, volume.quota)
        # [permissions] the same secret while the instance is registered; none without permissions
        secret = self.permissions.register(identity, package.service_config.permissions)
        spec = self.spec_for(identity, package, uid, gid, volumes=volumes, env_overrides=env_overrides, grants=grants,
                             secret=secret)
        # [network hook] what the network hook needs beside the identity
        spec.setdefault("annotations", {}).update({PACKAGE_ANNOTATION: package.digest, PROVIDER_ANNOTATION: provider})
        for hook in self.hooks:  # once per start request, never per restart of the container
            hook.setup(identity, spec)
        # [warm start] unchanged on a restart of a package; 0600: it may hold AOS_SECRET
        write_if_changed(data_dir / SPEC_FILE, json.dumps(spec), mode=0o600)
        network = self.network.record(instance_id) if self.config.network.enabled else None  # [network hook]
        # [conformance] the service layer as the instance sees it: owned 0:<service GID>, as AosEdge 1.x
        service_layer = self.packages.layers.owned(package.layer_digest, gid)
        plan = SupervisorPlan(
            identity=identity, package=package.digest, run_dir=str(self.run_dir(instance_id)),
            data_dir=str(data_dir), runc_binary=self.config.runc_binary, runc_root=str(self.runc.root),
            cgroups_path=self.cgroups_path(instance_id), cgroup_lock=str(self.config.run_root / "cgroups.lock"),
            rootfs=RootfsPlan(str(self.run_dir(instance_id)), str(service_layer), self.config.base_path,
                              tuple(self.config.base_visible), tuple(self.config.dns_servers),
                              hosts=self._hosts(spec, network, grants),
                              resolv=self.network.resolv_text(network) if network else None,
                              aos_layers=tuple(str(path) for path in package.aos_layer_paths),  # [aos layers]
                              templates=str(self.config.run_root / TEMPLATES_DIR)),
            volumes=tuple(volumes), run_parameters=package.service_config.run_parameters, restart=restart,
            log_max_bytes=self.config.log_max_bytes,
            offline_ttl=package.service_config.offline_ttl, stop_grace=self.config.stop_timeout,
            online_record=str(online_record_path(self.config.state_root)),
        )
        plan.save()
        return plan

    def _hosts(self, spec: dict[str, Any], network: Any, grants: HostGrants) -> str | None:
        """The instance's /etc/hosts: the network's (or loopback's), then the resources' lines."""
        base = self.network.hosts_text(network) if network else None
        if not grants.hosts:
            return base
        return (base if base is not None else hosts_file(spec.get("hostname"))) + hosts_lines(grants)

    def _wait_first_start(self, instance_id: str, timeout: float) -> InstanceStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self._read(instance_id)
            if status is not None:
                if status.phase == Phase.FAILED and status.reason == Reason.SETUP_ERROR:
                    raise RuntimeFailure(f"instance {instance_id}: setup failed: {status.message}")
                if status.phase in (Phase.RUNNING, Phase.FAILED, Phase.STOPPED) or status.last_exit is not None:
                    return self.status(instance_id)
            if not self._supervisor_alive() and (status is None or not status.phase.terminal):
                raise RuntimeFailure(f"instance {instance_id}: the node supervisor exited\n{self._supervisor_log_tail()}")
            if time.monotonic() > deadline:
                return self.status(instance_id)
            time.sleep(_POLL_SECONDS)

    # --- the node supervisor -----------------------------------------------------------------------

    def _supervisor_log_tail(self) -> str:
        log = self.config.state_root / node_supervisor.LOG_FILE
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def _reap_children(self) -> None:
        """Collect supervisors this process started that have exited, so none stays a zombie."""
        self._spawned = [child for child in self._spawned if child.poll() is None]

    def _supervisor_alive(self) -> bool:
        """Whether the node supervisor's PID record names a live process (checked by start time)."""
        self._reap_children()
        try:
            record = parse_json((self.config.run_root / SUPERVISOR_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return False
        found = node_supervisor.process_start_ticks(int(record["pid"]))
        if found is None or found[1] == "Z":
            return False
        return record["start_ticks"] is None or found[0] == record["start_ticks"]

    def _spawn_supervisor(self) -> subprocess.Popen[bytes]:
        self.config.run_root.mkdir(parents=True, exist_ok=True)
        self.config.state_root.mkdir(parents=True, exist_ok=True)
        # runc, losetup, mkfs.ext4 and e2fsck live in sbin, which a caller's PATH may lack.
        path = os.environ.get("PATH", "")
        environment = dict(os.environ, PATH=":".join(filter(None, [path, "/usr/local/sbin:/usr/sbin:/sbin"])))
        with open(self.config.state_root / node_supervisor.LOG_FILE, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "aos_operator.runtime.supervisor", "--state-root", str(self.config.state_root),
                 "--run-root", str(self.config.run_root), "--linger", str(self.config.supervisor_linger)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/", env=environment,
            )
        self._spawned.append(child)
        return child

    def _spawn_supervisor_if_absent(self) -> None:
        self._reap_children()
        if self._spawned or self._supervisor_alive():
            return
        with file_lock(self.config.run_root / "supervisor.spawn.lock"):
            if not self._supervisor_alive():
                self._spawn_supervisor()

    def _ensure_supervisor(self, timeout: float = 30.0) -> None:
        """A node supervisor that answers: the running one, or one started now (which adopts
        the instances that should run)."""
        if node_supervisor.ping(self.config.run_root) is not None:
            return
        with file_lock(self.config.run_root / "supervisor.spawn.lock"):
            self._reap_children()
            child = self._spawned[-1] if self._spawned else None
            if child is None and node_supervisor.ping(self.config.run_root) is None:
                child = self._spawn_supervisor()
            deadline = time.monotonic() + timeout
            while node_supervisor.ping(self.config.run_root) is None:
                if child is not None and child.poll() is not None and not self._supervisor_alive():
                    child = self._spawn_supervisor() if child.returncode == 0 else None  # 0: a racing one won
                    if child is None:
                        raise RuntimeFailure(f"the node supervisor did not start\n{self._supervisor_log_tail()}",
                                             hint=f"see {self.config.state_root / node_supervisor.LOG_FILE}")
                if time.monotonic() > deadline:
                    raise RuntimeFailure(f"the node supervisor did not answer within {timeout:g} s",
                                         hint=f"see {self.config.state_root / node_supervisor.LOG_FILE}")
                time.sleep(_POLL_SECONDS)

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request to the node supervisor, starting it when none answers."""
        for attempt in range(3):
            try:
                reply = node_supervisor.request(self.config.run_root, message)
            except OSError:  # none listens, or it exited between accepting and answering
                if attempt == 2:
                    raise RuntimeFailure("the node supervisor does not answer",
                                         hint=f"see {self.config.state_root / node_supervisor.LOG_FILE}") from None
                self._ensure_supervisor()
                continue
            if not reply.get("ok"):
                raise RuntimeFailure(f"node supervisor: {reply.get('error', 'request refused')}")
            return reply
        raise AssertionError("unreachable")

    def _tidy(self, instance_id: str) -> None:
        """Tear down what an ended instance left (the caller holds the instance lock)."""
        plan_path = self.data_dir(instance_id) / PLAN_FILE
        # runc keeps a container's state in <root>/<id>: a look at it, not a `runc state` process.
        if plan_path.exists() and (self.run_dir(instance_id).exists() or (self.runc.root / instance_id).exists()):
            plan = SupervisorPlan.load(plan_path, self.config.run_root)
            # what only the config knows comes from the config, not from the file
            teardown_instance(replace(plan, runc_binary=self.config.runc_binary,
                                      cgroups_path=self.cgroups_path(instance_id)))

    # --- stop, remove ------------------------------------------------------------------------------

    def stop(self, instance_id: str, timeout: float | None = None) -> InstanceStatus:
        """Stop an instance and remove all it put on the node: SIGTERM to its init, SIGKILL after
        `timeout` seconds (config.stop_timeout; at once when the init has no SIGTERM handler)."""
        grace = self.config.stop_timeout if timeout is None else timeout
        with self._locked(instance_id):
            status = self._read(instance_id)
            if status is None:
                raise RuntimeFailure(f"no instance {instance_id} on this node")
            if not status.phase.terminal:
                reply = self._request({"op": "stop", "id": instance_id, "grace": grace})
                deadline = time.monotonic() + grace + _STOP_MARGIN
                while reply.get("managed") and not status.phase.terminal and time.monotonic() < deadline:
                    time.sleep(_POLL_SECONDS)
                    status = self._read(instance_id) or status
                if reply.get("managed") and not status.phase.terminal:
                    raise RuntimeFailure(f"instance {instance_id} did not stop within {grace + _STOP_MARGIN:g} s",
                                         hint=f"see {self.config.state_root / node_supervisor.LOG_FILE}")
                if not status.phase.terminal:  # a start that never reached the supervisor
                    self._tidy(instance_id)
                    status = status.evolve(phase=Phase.STOPPED, reason=Reason.STOPPED, pid=None,
                                           message="stopped; no supervisor had it")
                    write_status(self.data_dir(instance_id) / "status.json", status)
            self._tidy(instance_id)
            self.network.teardown(instance_id)  # [network hook] nothing of a stopped instance stays
        return self.status(instance_id)

    def remove(self, instance_id: str) -> None:
        """Stop an instance and delete its data (storage, state, logs) and its UID."""
        status = self.stop(instance_id)
        with self._locked(instance_id):
            for hook in self.hooks:
                hook.teardown(instance_id)
            shutil.rmtree(self.data_dir(instance_id))
            self.permissions.unregister(instance_id)  # [permissions] its secret vouches for nobody now
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
        return sorted(p.name for p in root.iterdir()
                      if is_instance_id(p.name) and (p / "status.json").exists()) if root.is_dir() else []

    def status(self, instance_id: str) -> InstanceStatus:
        """The instance's status, with CPU and RAM use sampled now when it runs."""
        status = self._read(instance_id)
        if status is None:
            raise RuntimeFailure(f"no instance {instance_id} on this node")
        if status.phase.terminal and self.network.record(instance_id) is not None:
            self._release_network(instance_id)
        # Pending without a supervisor: accepted, and the supervisor is being started.
        if status.phase not in (Phase.PENDING, Phase.FAILED, Phase.STOPPED) and not self._supervisor_alive():
            return replace(status, phase=Phase.FAILED, reason=Reason.SUPERVISOR_LOST,
                           message="the node supervisor is not running; recover() starts one, which adopts it")
        if status.phase == Phase.RUNNING:
            return self._with_network(self._with_usage(status))
        return status if status.phase.terminal else self._with_network(status)

    def _release_network(self, instance_id: str) -> None:
        """[network hook] An instance that ended for good (CrashLoop, setup error) gives its network
        back, like everything else the supervisor tore down; checked again under the lock, so a
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
        """Every instance's status; one removed while the list is read is left out."""
        found = []
        for instance_id in self.instance_ids():
            try:
                found.append(self.status(instance_id))
            except RuntimeFailure:
                if self._read(instance_id) is not None:
                    raise
        return found

    # --- recovery ----------------------------------------------------------------------------------------

    def recover(self) -> list[InstanceStatus]:
        """After this process (or the node agent) restarted: make sure the node supervisor runs
        when an instance should (a new one adopts running containers without restarting them and
        restarts, by the policy, those that ended meanwhile), tidy ended instances, and delete
        containers of this runtime that belong to no instance."""
        self.packages.layers.remove_unfinished()
        known = set(self.instance_ids())
        statuses = {instance_id: self._read(instance_id) for instance_id in known}
        if any(status is not None and not status.phase.terminal for status in statuses.values()):
            self._ensure_supervisor()
        for instance_id, status in statuses.items():
            if status is not None and status.phase.terminal:
                with self._locked(instance_id):
                    current = self._read(instance_id)
                    if current is not None and current.phase.terminal:
                        self._tidy(instance_id)
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
