"""A fleet for rollout tests and the rollout benchmark, on the real control plane (tools/cluster.py).

Real: etcd, kube-apiserver and kube-controller-manager; the CRDs from crds/; Debian's
docker-registry; `aosctl operator` (a subprocess: real kopf, real builds and pushes); each
device's real Kubernetes loop (`AgentLoop`: registration, heartbeat, label-selected watch, status
reports). Simulated: the devices' runtime (`RolloutDevice`), so that 200 devices fit on this
machine. An instance of a new package is Starting for `start_delay` seconds, then Running, or
Failed with CrashLoop when `healthy(digest)` says the package crashes.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aos_operator.agent.core import Desired, Outcome
from aos_operator.agent.loop import AgentLoop, AgentSettings
from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import AOS_SERVICE, AOS_SERVICE_INSTANCE
from aos_operator.runtime import InstanceIdentity, InstanceStatus, NodeFacts, Phase
from benchmarks.operator_scale import SimulatedRuntime
from tests.conftest import EXAMPLES, REPO
from tests.e2e.fleet import Process
from tests.integration.registry_support import start_registry
from tools.cluster import ControlPlane

NAMESPACE = "rollouts"
LABEL = "rollouts.test/fleet"


class RolloutDevice:
    """The DeviceAgent interface AgentLoop drives; instances start after a delay, or crash."""

    def __init__(self, healthy: Callable[[str], bool], start_delay: tuple[float, float] = (0.5, 1.5)) -> None:
        self.runtime = SimulatedRuntime()
        self.healthy = healthy
        self.start_delay = start_delay
        self.converged: list[str] = []  # digests asked for, in order
        self._lock = threading.Lock()

    def adopt(self) -> list[InstanceStatus]:
        return []

    def converge(self, desired: Desired, report: Callable[[Outcome], None]) -> Outcome:
        with self._lock:
            current = self.runtime.statuses.get(desired.instance_id)
            if current is not None and current.package == desired.digest and current.phase != Phase.STOPPED:
                return Outcome("Running")
            self.converged.append(desired.digest)
            identity = InstanceIdentity(desired.service_id, desired.subject, desired.index)
            starting = InstanceStatus(desired.instance_id, identity, desired.digest, phase=Phase.STARTING, starts=1)
            self.runtime.changed(starting)
        timer = threading.Timer(random.uniform(*self.start_delay), self._started, args=(starting,))
        timer.daemon = True
        timer.start()
        return Outcome("Starting")

    def _started(self, starting: InstanceStatus) -> None:
        # Asked before the lock: it reads the API, and a new package may be dispatched meanwhile.
        healthy = self.healthy(starting.package)
        with self._lock:
            if self.runtime.statuses.get(starting.instance_id) is not starting:
                return  # replaced or removed meanwhile: a late result of the old package must not win
            if healthy:
                status = starting.evolve(phase=Phase.RUNNING, start_time=time.time(), ram_bytes=10_000_000)
            else:
                status = starting.evolve(phase=Phase.FAILED, reason="CrashLoop", restarts=3,
                                         message="exited 1 four times within startInterval")
            self.runtime.changed(status)

    def remove(self, instance_id: str) -> None:
        with self._lock:
            self.runtime.statuses.pop(instance_id, None)

    def status(self, instance_id: str) -> InstanceStatus | None:
        return self.runtime.statuses.get(instance_id)

    def instances(self) -> list[InstanceStatus]:
        return list(self.runtime.statuses.values())


def hello_config(version: str, name: str) -> dict[str, Any]:
    """The hello-world config as service `name`: its own service UID, since the operator lets only
    one AosService hold an instance identity."""
    config = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())
    config["publish"]["version"] = version
    config["publish"]["service_uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"aos-tests/{name}"))
    # The version alone is not in the package (aos-signer's layout); an env entry makes a new digest.
    config["configuration"]["env"] = [*config["configuration"].get("env", []), f"SERVICE_VERSION={version}"]
    return config


@dataclass
class Fleet:
    plane: ControlPlane
    root: Path
    operator: Process
    api: KubeClient
    devices: dict[str, RolloutDevice] = field(default_factory=dict)
    loops: list[AgentLoop] = field(default_factory=list)
    crashing_versions: set[str] = field(default_factory=set)
    registry_host: str = ""

    @property
    def kubeconfig(self) -> str:
        return str(self.plane.admin_kubeconfig)

    def healthy(self, digest: str) -> bool:
        """Does this package crash? Its version, from the service's revision history (the
        operator writes the history right after it dispatches, so look a few times)."""
        for _ in range(40):
            items, _ = self.api.list(AOS_SERVICE, NAMESPACE)
            for item in items:
                for revision in (item.get("status") or {}).get("revisions") or ():
                    if revision.get("digest") == digest or digest in {i.get("digest") for i in revision.get("images", [])}:
                        return revision.get("version") not in self.crashing_versions
            time.sleep(0.25)
        return True

    def service(self, name: str, version: str, strategy: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {
            "apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"config": hello_config(version, name), "selector": {"matchLabels": {LABEL: "yes"}},
                     "source": {"configMaps": [{"name": "files"}]}, "instancesPerDevice": 1},
        }
        if strategy is not None:
            body["spec"]["strategy"] = strategy
        return self.api.create(AOS_SERVICE, body)

    def set_version(self, name: str, version: str, **spec: Any) -> None:
        self.api.patch(AOS_SERVICE, name, {"spec": {"config": hello_config(version, name), **spec}}, NAMESPACE)

    def get(self, name: str) -> dict[str, Any]:
        body = self.api.get(AOS_SERVICE, name, NAMESPACE)
        assert body is not None, name
        return body

    def rollout(self, name: str) -> dict[str, Any]:
        return (self.get(name).get("status") or {}).get("rollout") or {}

    def instances(self, name: str) -> list[dict[str, Any]]:
        items, _ = self.api.list(AOS_SERVICE_INSTANCE, NAMESPACE)
        return [item for item in items if item["spec"]["service"] == name and not item["metadata"].get("deletionTimestamp")]

    def revision_digest(self, name: str, number: int) -> str:
        for revision in (self.get(name).get("status") or {}).get("revisions") or ():
            if revision["revision"] == number:
                return str(revision["digest"])
        raise AssertionError(f"{name}: no revision {number} in status")

    def builds(self) -> int:
        """Packages the operator built and pushed so far, from its log."""
        return self.operator.log.read_text(errors="replace").count("building and pushing")

    def aosctl(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / ".venv" / "bin" / "aosctl"), *arguments, "--kubeconfig", self.kubeconfig,
                               "-n", NAMESPACE], capture_output=True, text=True, timeout=60)


def unavailable_devices(instances: list[dict[str, Any]]) -> set[str]:
    """Devices without an available instance: not Running, or running another digest than assigned."""
    bad = set()
    for item in instances:
        status = item.get("status") or {}
        if status.get("phase") != "Running" or status.get("imageDigest") != item["spec"]["image"]["digest"]:
            bad.add(item["spec"]["device"])
    return bad


@contextmanager
def rollout_fleet(root: Path, devices: int, *, resync: float = 5.0, start_delay: tuple[float, float] = (0.5, 1.5),
                  heartbeat: float = 10.0) -> Iterator[Fleet]:
    with ControlPlane(root=root / "control-plane") as plane:
        names = []
        for path in sorted((REPO / "crds").glob("*.yaml")):
            document = yaml.safe_load(path.read_text())
            plane.apply(document)
            names.append(document["metadata"]["name"])
        plane.wait_established(names)
        plane.ensure_namespace(NAMESPACE)
        plane.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "files", "namespace": NAMESPACE},
                      "data": {"app.py": "print('hello')\n"}})
        registry = start_registry(root / "registry")
        operator = Process("operator", [
            "operator", "--kubeconfig", str(plane.admin_kubeconfig), "--registry", f"{registry.host}/aos",
            "--registry-insecure", "--work-dir", str(root / "operator-work"), "--liveness", "",
            "--resync", str(resync), "--device-grace", str(4 * heartbeat),  # the agents beat by status, no Lease
            "--log-level", "info"], root / "operator.log")
        api = KubeClient(Connection(kubeconfig=str(plane.admin_kubeconfig)), user_agent="rollout-tests")
        fleet = Fleet(plane, root, operator, api, registry_host=registry.host)
        previous = os.environ.get("KUBECONFIG")
        try:
            # kopf logs in through the kubernetes client's default kubeconfig lookup: $KUBECONFIG.
            os.environ["KUBECONFIG"] = str(plane.admin_kubeconfig)
            try:
                operator.start()
            finally:
                if previous is None:
                    os.environ.pop("KUBECONFIG", None)
                else:
                    os.environ["KUBECONFIG"] = previous
            for number in range(devices):
                name = f"dev-{number:03d}"
                plane.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {LABEL: "yes"}}})
                settings = AgentSettings(device=name, node=name, run_dir=root / "devices" / name,
                                         heartbeat_seconds=heartbeat,
                                         connection=Connection(kubeconfig=str(plane.admin_kubeconfig)))
                node = NodeFacts(cores=4, dmips=40000, architecture="amd64", cgroup_version=2, swap_accounting=True)
                device = RolloutDevice(fleet.healthy, start_delay)
                loop = AgentLoop(settings, KubeClient(settings.connection, user_agent=f"aos-agent/{name}"),
                                 device, node)  # type: ignore[arg-type]
                threading.Thread(target=loop.run, daemon=True, name=f"agent-{name}").start()
                fleet.devices[name] = device
                fleet.loops.append(loop)
            yield fleet
        finally:
            for loop in fleet.loops:
                loop.stop.set()
            operator.stop()
            api.close()
            registry.stop()
