"""A fleet on a real control plane (tools/cluster.py): the real registry, `aosctl operator` and several
`aosctl agent` processes (real runc, each with its own dirs and cgroup parent), each logged in as the
identity the chart gives it (tests/cluster/install.py), for e2e tests."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes.client.exceptions import ApiException

from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import AOS_DEVICE, AOS_SERVICE, AOS_SERVICE_INSTANCE
from aos_operator.cli.common import network_config
from aos_operator.runtime import Runtime, RuntimeConfig
from tests.cluster.install import Installation, install
from tests.cluster.proxy import ProxyThread
from tests.conftest import REPO
from tests.integration.registry_support import start_registry
from tools.cluster import ControlPlane, dying_with_parent

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 60.0, what: str | Callable[[], str] = "the condition") -> T:
    """Poll until `check` returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as error:
            last = error
        except ApiException as error:
            # a just-started server answers 429 "storage is (re)initializing" for a new CRD's
            # resources for a moment, and 5xx while it restarts: not an answer yet
            if error.status not in (429, 500, 503, 504):
                raise
            last = error
        if last and not isinstance(last, (AssertionError, ApiException)):
            return last
        time.sleep(0.25)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {described}; last: {last!r}")


@dataclass
class Process:
    name: str
    arguments: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        environment = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                dying_with_parent([sys.executable, "-m", "aos_operator.cli", *self.arguments], "TERM"),
                stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Agent:
    device: str
    root: Path
    cgroup_parent: str
    proxy: ProxyThread
    process: Process
    kubeconfig: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def memory_limit(self, instance_id: str) -> int | None:
        path = Path("/sys/fs/cgroup/memory") / self.cgroup_parent.strip("/") / instance_id / "memory.limit_in_bytes"
        try:
            return int(path.read_text())
        except OSError:
            return None

    def cgroups(self) -> list[str]:
        parent = Path("/sys/fs/cgroup/memory") / self.cgroup_parent.strip("/")
        return sorted(path.name for path in parent.iterdir() if path.is_dir()) if parent.is_dir() else []

    def log_of(self, instance_id: str) -> str:
        found = list(self.data_dir.rglob(f"*{instance_id}*/service.log")) or [
            path for path in self.data_dir.rglob("service.log") if instance_id in str(path)
        ]
        return found[0].read_text(errors="replace") if found else ""

    def containers(self) -> list[str]:
        # The runtime's runc root (RuntimeConfig.run_root / "runc"); never walk the instances' rootfs,
        # which a replacement may be unmounting meanwhile.
        roots = [path for path in [self.run_dir / "runc"] if path.is_dir()]
        ids: list[str] = []
        for root in roots:
            listing = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True)
            ids.extend(line for line in listing.stdout.split() if line)
        return ids


@dataclass
class Fleet:
    root: Path
    installation: Installation
    registry_host: str
    operator: Process | None = None
    agents: dict[str, Agent] = field(default_factory=dict)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        # The test itself acts as a cluster admin (a user applying manifests).
        self.api = KubeClient(Connection(kubeconfig=str(self.plane.admin_kubeconfig)), user_agent="e2e-test")

    @property
    def plane(self) -> ControlPlane:
        return self.installation.plane

    def start_operator(self, *extra: str) -> Process:
        kubeconfig = self.installation.operator_kubeconfig()
        self.operator = Process("operator", [
            "operator", "--kubeconfig", str(kubeconfig), "--registry", f"{self.registry_host}/aos",
            "--registry-insecure", "--work-dir", str(self.root / "operator"), "--liveness", "",
            "--resync", "2", "--stop-timeout", "30", "--device-grace", "10", "--log-level", "info", *extra,
        ], self.root / "operator.log")
        self.operator.start()
        return self.operator

    def create_node(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        return dict(self.plane.create({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        }))

    def start_agent(self, device: str, labels: Mapping[str, str], *extra: str) -> Agent:
        self.create_node(device, labels)
        root = self.root / device
        proxy = ProxyThread(device, "127.0.0.1", self.plane.port).start()
        kubeconfig = self.installation.agent_kubeconfig(device, server=proxy.url)
        agent = Agent(device, root, f"/aos-e2e-{self.tag}-{device}", proxy, Process(device, [], root / "agent.log"),
                      kubeconfig)
        root.mkdir(parents=True, exist_ok=True)
        agent.process.arguments = [
            "agent", "--device", device, "--kubeconfig", str(kubeconfig), "--data-dir", str(agent.data_dir),
            "--run-dir", str(agent.run_dir), "--cgroup-parent", agent.cgroup_parent, "--heartbeat", "1",
            "--labels-interval", "3", "--lease-namespace", self.installation.namespace,
            "--registry-insecure", "--log-level", "info", *extra,
        ]
        agent.process.start()
        self.agents[device] = agent
        return agent

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.process.stop()
            agent.proxy.close()
        if self.operator:
            self.operator.stop()
        self.api.close()

    def clean_node(self) -> None:
        """Remove what the agents' instances left on the machine (services outlive their agent),
        with each agent's own network config, so that its networks' DNS servers go too."""
        for agent in self.agents.values():
            network = network_config(argparse.Namespace(run_dir=agent.run_dir))
            Runtime(RuntimeConfig(state_root=agent.data_dir, run_root=agent.run_dir,
                                  cgroup_parent=agent.cgroup_parent, network=network)).cleanup()  # type: ignore[arg-type]

    # --- reading the API ----------------------------------------------------------------------

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.api.get(AOS_SERVICE, name, namespace)

    def instances(self, namespace: str, service: str) -> list[dict[str, Any]]:
        items, _ = self.api.list(AOS_SERVICE_INSTANCE, namespace)
        return sorted((i for i in items if i["spec"]["service"] == service), key=lambda i: i["metadata"]["name"])

    def device(self, name: str) -> dict[str, Any] | None:
        return self.api.get(AOS_DEVICE, name)

    def condition(self, obj: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
        for condition in ((obj or {}).get("status") or {}).get("conditions") or ():
            if condition["type"] == kind:
                return condition
        return {}

    def diagnostics(self) -> str:
        parts = []
        if self.operator:
            parts.append(f"--- operator ---\n{self.operator.tail()}")
        for agent in self.agents.values():
            parts.append(f"--- agent {agent.device} ---\n{agent.process.tail()}")
        return "\n".join(parts)


def storage_ready(fleet: Fleet, namespace: str) -> None:
    """A CRD just established answers 429 "storage is (re)initializing" for a moment on a busy machine."""
    for kind in (AOS_SERVICE, AOS_SERVICE_INSTANCE):
        for _ in range(240):
            try:
                fleet.api.list(kind, namespace)
                break
            except ApiException as error:
                if error.status != 429:
                    raise
                time.sleep(0.25)


@contextmanager
def fleet_on_control_plane(root: Path, chart_values: Mapping[str, Any], namespace: str, *,
                           audit: bool = False) -> Iterator[Fleet]:
    """A real control plane with the chart's identities, a real registry and the namespace; the
    caller starts the operator and agents. Afterwards nothing of it stays on the machine, also
    when a test failed. `audit`: the apiserver logs every request (ControlPlane.audit_events)."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests run services under runc: they need root (CI runs as root)")
    registry = start_registry(root / "registry")
    with ControlPlane(audit=audit) as plane:
        print(f"control plane ready in {plane.startup_seconds:.1f} s")
        fleet = Fleet(root, install(plane, chart_values), registry.host)
        fleet.registry = registry  # type: ignore[attr-defined]
        plane.ensure_namespace(namespace)
        storage_ready(fleet, namespace)
        try:
            yield fleet
        finally:
            fleet.stop()
            registry.stop()
            fleet.clean_node()
