"""The operator at fleet scale: 500 AosServices over 20 simulated devices (or 2000 over 200), on a
real control plane.

Real parts: etcd, kube-apiserver and kube-controller-manager (tools/cluster.py) with the chart's
CRDs, RBAC and identities (the operator and every agent log in as the chart's service accounts),
CNCF Distribution, `aosctl operator` (a subprocess, the real kopf operator with real builds and
pushes), and the agents' real Kubernetes loop (`AgentLoop`: heartbeat, label-selected watch,
status reports), many agents in this process. Simulated: the devices' runtime; a started
instance is Running at once, so the figures are the control plane's, not runc's. The first half
of the devices get 80% of the services, so an agent's API traffic can be compared with its own
share of the fleet.

Printed, from one run: seconds until every AosService is Ready, the operator's peak resident
memory (and at the end), the operator's API requests per service to get there, the refused ones
by code, and per reconcile pass in steady state (from the apiserver's audit log, by user agent),
each agent group's bytes received from the API (counted by a loopback proxy per agent) against its
instance count, and the CPU seconds until Ready of kube-apiserver, etcd, kube-controller-manager
(its garbage collector follows every object), the operator, the registry and this process (the
agents, their proxies, the client). Then, with the operator and the agents stopped, the floor: the
same services written again with only the five writes each one needs (`replay_floor`), its wall
time and the control plane's CPU for it.

Run: .venv/bin/python -m benchmarks.operator_scale [--services 500] [--devices 20] [--no-floor]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aos_operator.agent.core import Desired, Outcome
from aos_operator.agent.loop import AgentLoop, AgentSettings
from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import AOS_SERVICE, AOS_SERVICE_INSTANCE, LABEL_SERVICE
from aos_operator.runtime import InstanceIdentity, InstanceStatus, NodeFacts, Phase
from tests.cluster.install import install
from tests.cluster.proxy import ProxyThread
from tests.conftest import EXAMPLES, REPO
from tests.integration.registry_support import start_registry
from tools.cluster import ControlPlane, dying_with_parent

NAMESPACE = "fleet"
# Room for 64 instances of the example (half its 5000 DMIPS quota reserved each); the busiest
# device gets 40 at 500/20. With 40000, the 500-service case overcommitted its devices, which
# only a placement race let happen (see tests/cluster/test_placement_burst.py).
DEVICE_DMIPS = 160_000
SELF = "this process (agents, proxies, client)"


@dataclass
class _Watch:
    callbacks: list[Callable[[InstanceStatus], None]]

    def close(self) -> None:
        self.callbacks.clear()


@dataclass
class SimulatedRuntime:
    """Only what AgentLoop uses of a Runtime: statuses and their change callbacks."""

    statuses: dict[str, InstanceStatus] = field(default_factory=dict)
    callbacks: list[Callable[[InstanceStatus], None]] = field(default_factory=list)

    def watch(self, callback: Callable[[InstanceStatus], None], interval: float = 0.5) -> _Watch:
        self.callbacks.append(callback)
        return _Watch(self.callbacks)

    def changed(self, status: InstanceStatus) -> None:
        self.statuses[status.instance_id] = status
        for callback in list(self.callbacks):
            callback(status)


class SimulatedDevice:
    """The DeviceAgent interface AgentLoop drives, with instances that start instantly."""

    def __init__(self) -> None:
        self.runtime = SimulatedRuntime()

    def adopt(self) -> list[InstanceStatus]:
        return []

    def converge(self, desired: Desired, report: Callable[[Outcome], None]) -> Outcome:
        identity = InstanceIdentity(desired.service_id, desired.subject, desired.index)
        status = InstanceStatus(desired.instance_id, identity, desired.digest, phase=Phase.RUNNING,
                                starts=1, start_time=time.time(), ram_bytes=10_000_000, cpu_millicores=5.0)
        self.runtime.changed(status)
        return Outcome("Running")

    def remove(self, instance_id: str) -> None:
        self.runtime.statuses.pop(instance_id, None)

    def status(self, instance_id: str) -> InstanceStatus | None:
        return self.runtime.statuses.get(instance_id)

    def instances(self) -> list[InstanceStatus]:
        return list(self.runtime.statuses.values())


def service_body(index: int, device: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
        "metadata": {"name": f"svc-{index:03d}", "namespace": NAMESPACE},
        "spec": {"config": {**config, "publish": {**config["publish"], "service_uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{index}"))}},
                 "selector": {"matchLabels": {"bench/device": device}},
                 "source": {"configMaps": [{"name": "files"}]}},
    }


def peak_rss(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def current_rss(pid: int) -> int:
    return peak_rss(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def operator_requests(plane: ControlPlane, since: int, *, watches: bool = True) -> tuple[int, int, Counter[str]]:
    """(requests of the operator in the audit log after the first `since` events, events seen,
    the requests by verb and resource, and the refused ones by code as 'refused CODE')."""
    events = plane.audit_events()
    kinds: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for event in events[since:]:
        if (event.get("userAgent", "").startswith("kopf/") or event.get("userAgent") == "aos-operator") \
                and (watches or event.get("verb") != "watch"):
            ref = event.get("objectRef") or {}
            kinds[" ".join(filter(None, (event.get("verb"), ref.get("resource"), ref.get("subresource"))))] += 1
            code = (event.get("responseStatus") or {}).get("code") or 200
            if code >= 400:
                refused[f"refused {code}"] += 1
    return sum(kinds.values()), len(events), kinds + refused


FLOOR_WORKERS = 16  # as many as the operator's connections for kopf's writes


def floor_templates(api: KubeClient, services: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(service, its instance) as the run left them: what the floor writes again, in its end state."""
    bodies = {body["metadata"]["name"]: body for body in api.list(AOS_SERVICE, NAMESPACE)[0]}
    instances = {body["metadata"]["labels"][LABEL_SERVICE]: body for body in api.list(AOS_SERVICE_INSTANCE, NAMESPACE)[0]}
    names = sorted(bodies)[:services]
    return [(bodies[name], instances[name]) for name in names if name in instances]


def replay_floor(plane: ControlPlane, installation: Any, api_for: Callable[[str], KubeClient],
                 templates: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """The least the fleet's services need of the API, with nothing else running: per service its
    create, a finalizer patch, one status patch, its instance's create and one status patch of it
    by its device's agent (through the agent ValidatingAdmissionPolicy). No events, no Building, no
    heartbeats, no reads. A floor for the control plane's share of the run above."""
    local, kubeconfigs = threading.local(), {"user": str(plane.admin_kubeconfig),
                                             "operator": str(installation.operator_kubeconfig())}

    def client(who: str) -> KubeClient:
        if not hasattr(local, who):  # a client per thread, as each writer is its own process in the run
            setattr(local, who, KubeClient(Connection(kubeconfig=kubeconfigs[who]), user_agent="floor"))
        return getattr(local, who)  # type: ignore[no-any-return]

    def one(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
        service, instance = pair
        api, name = client("operator"), "floor-" + service["metadata"]["name"]
        created = client("user").create(AOS_SERVICE, {
            "apiVersion": service["apiVersion"], "kind": service["kind"],
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": service["spec"]})
        api.patch(AOS_SERVICE, name, {"metadata": {"finalizers": service["metadata"].get("finalizers") or []}}, NAMESPACE)
        meta = instance["metadata"]
        owner = {**meta["ownerReferences"][0], "name": name, "uid": created["metadata"]["uid"]}
        instance_name = "floor-" + meta["name"]
        api.create(AOS_SERVICE_INSTANCE, {
            "apiVersion": instance["apiVersion"], "kind": instance["kind"],
            "metadata": {"name": instance_name, "namespace": NAMESPACE, "labels": meta["labels"],
                         "finalizers": meta.get("finalizers") or [], "ownerReferences": [owner]},
            "spec": {**instance["spec"], "service": name}})
        api_for(instance["spec"]["device"]).patch(AOS_SERVICE_INSTANCE, instance_name, {"status": instance["status"]},
                                                  NAMESPACE, status=True)
        api.patch(AOS_SERVICE, name, {"status": service["status"]}, NAMESPACE, status=True)

    pids = plane.pids()
    pids[SELF] = os.getpid()
    names = ("kube-apiserver", "etcd", "kube-controller-manager", SELF)
    before = {name: cpu_seconds(pids[name]) for name in names}
    started = time.perf_counter()
    with ThreadPoolExecutor(FLOOR_WORKERS) as pool:
        list(pool.map(one, templates))
    wall = time.perf_counter() - started
    spent = {name: cpu_seconds(pids[name]) - before[name] for name in names}
    writes = 5 * len(templates)
    print(f"floor: the least writes of {len(templates)} services ({writes} writes, {FLOOR_WORKERS} writers, nothing else "
          f"running) took {wall:.1f} s; CPU seconds " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in spent.items())
          + f"; apiserver {spent['kube-apiserver'] * 1000 / writes:.1f} ms per write", flush=True)


class ReadyWatch:
    """The names of the AosServices whose Ready condition is True, kept by a watch in a thread."""

    def __init__(self, api: KubeClient) -> None:
        self.api, self.stop = api, False
        self.names: set[str] = set()
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        version = None
        while not self.stop:
            try:
                for event in self.api.watch(AOS_SERVICE, NAMESPACE, resource_version=version, timeout_seconds=60):
                    body = event["object"]
                    version = body["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    name = body["metadata"]["name"]
                    if event["type"] != "DELETED" and any(
                            c["type"] == "Ready" and c["status"] == "True"
                            for c in (body.get("status") or {}).get("conditions") or ()):
                        self.names.add(name)
                    else:
                        self.names.discard(name)
            except Exception:  # an expired version (410) or a cut stream: start again from now
                version = None
                time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    parser.add_argument("--settle-seconds", type=float, default=15.0, help="pause between all Ready and the steady-state window")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the floor: the least writes of the same services, with nothing else running")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (operator log, registry)")
    args = parser.parse_args()
    heavy = args.devices // 2

    def device_of(index: int) -> int:
        # the first 80% of the services go to the first half of the devices
        return index % heavy if index < args.services * 4 // 5 else heavy + index % (args.devices - heavy)

    root = Path(tempfile.mkdtemp(prefix="aos-bench-"))
    try:
        run(args, root, heavy, device_of)
    finally:
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path, heavy: int, device_of: Callable[[int], int]) -> None:
    config = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())
    busiest = max(Counter(device_of(index) for index in range(args.services)).values())
    if busiest * config["configuration"]["quotas"]["cpu"] // 2 > DEVICE_DMIPS:
        sys.exit(f"{busiest} services on one device do not fit its {DEVICE_DMIPS} DMIPS: use more devices")
    registry = start_registry(root / "registry")
    with ControlPlane(audit=True) as plane:
        print(f"control plane ready in {plane.startup_seconds:.1f} s", flush=True)
        installation = install(plane)
        plane.ensure_namespace(NAMESPACE)
        plane.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "files", "namespace": NAMESPACE},
                      "data": {"app.py": "print('hello')\n"}})
        operator_log = (root / "operator.log").open("wb")
        operator = subprocess.Popen(dying_with_parent(
            [sys.executable, "-m", "aos_operator.cli", "operator", "--kubeconfig", str(installation.operator_kubeconfig()),
             "--registry", f"{registry.host}/aos", "--registry-insecure", "--work-dir", str(root / "work"),
             "--liveness", "", "--resync", "10", "--log-level", "warning"], "TERM"),
            stdout=operator_log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
        )
        loops, proxies = [], []
        for number in range(args.devices):
            name = f"sim-{number:03d}"
            plane.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"bench/device": name}}})
            proxy = ProxyThread(name, "127.0.0.1", plane.port).start()
            kubeconfig = installation.agent_kubeconfig(name, server=proxy.url)
            settings = AgentSettings(device=name, node=name, run_dir=root / name, heartbeat_seconds=10.0,
                                     lease_namespace=installation.namespace,  # as the chart runs them
                                     connection=Connection(kubeconfig=str(kubeconfig)))
            node = NodeFacts(cores=16, dmips=DEVICE_DMIPS, architecture="amd64", cgroup_version=1, swap_accounting=True)
            loop = AgentLoop(settings, KubeClient(settings.connection, user_agent=f"aos-agent/{name}"),
                             SimulatedDevice(), node)  # type: ignore[arg-type]
            threading.Thread(target=loop.run, daemon=True).start()
            loops.append(loop)
            proxies.append(proxy)
        api = KubeClient(Connection(kubeconfig=str(plane.admin_kubeconfig)), user_agent="bench")
        time.sleep(5)  # devices registered and Ready
        pids = plane.pids()
        pids["operator"] = operator.pid
        pids["registry"] = registry.process.pid
        pids[SELF] = os.getpid()
        cpu_before = {name: cpu_seconds(pids[name])
                      for name in ("kube-apiserver", "etcd", "kube-controller-manager", "operator", "registry", SELF)}
        _, audit_mark, _ = operator_requests(plane, 0)
        bytes_before = [proxy.proxy.bytes_to_client for proxy in proxies]
        ready = ReadyWatch(api)  # a watch, not a list per second: the probe must not load the apiserver
        started = time.perf_counter()
        for index in range(args.services):
            api.create(AOS_SERVICE, service_body(index, f"sim-{device_of(index):03d}", config))
        created = time.perf_counter() - started
        ready_at = None
        while time.perf_counter() - started < 1800:
            if len(ready.names) == args.services:
                ready_at = time.perf_counter() - started
                break
            time.sleep(0.1)
        ready.stop = True
        until_ready, audit_mark, ready_kinds = operator_requests(plane, audit_mark)
        received = [proxy.proxy.bytes_to_client - before for proxy, before in zip(proxies, bytes_before)]
        cpu_ready = {name: cpu_seconds(pids[name]) - cpu_before[name] for name in cpu_before}
        time.sleep(args.settle_seconds)  # the operator may still be writing the last rollout statuses
        _, audit_mark, _ = operator_requests(plane, audit_mark)
        time.sleep(args.steady_seconds)
        steady_requests, _, steady_kinds = operator_requests(plane, audit_mark, watches=False)
        passes = args.services * args.steady_seconds / 10.0  # every service is re-checked every 10 s
        rss = peak_rss(operator.pid)
        # Printed before the teardown: a slow operator stop must not lose the figures.
        print(f"services {args.services}, devices {args.devices}; created in {created:.1f} s")
        print(f"all Ready after {ready_at:.1f} s" if ready_at else "NOT all Ready within 30 min")
        print(f"operator peak RSS {rss / 2**20:.0f} MiB; {current_rss(operator.pid) / 2**20:.0f} MiB at the end")
        print(f"operator API requests until all Ready: {until_ready} ({until_ready / args.services:.1f} per service: "
              + ", ".join(f"{kind} {count / args.services:.1f}" for kind, count in ready_kinds.most_common(6)
                          if not kind.startswith("refused")) + ")")
        print("  refused: " + (", ".join(f"{kind.split()[1]}: {count}" for kind, count in sorted(ready_kinds.items())
                                          if kind.startswith("refused")) or "none"))
        print(f"steady state: {steady_requests} operator requests (watches excluded) in {args.steady_seconds:.0f} s over "
              f"~{passes:.0f} reconcile passes = {steady_requests / passes:.3f} per pass"
              + (f" ({', '.join(f'{kind} {count}' for kind, count in steady_kinds.most_common(4))})" if steady_kinds else ""))
        print("CPU seconds until all Ready: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu_ready.items()))
        for label, devices in (("busy", range(heavy)), ("quiet", range(heavy, args.devices))):
            traffic = [received[n] for n in devices]
            own = [sum(1 for i in range(args.services) if device_of(i) == n) for n in devices]
            print(f"{label} agents: {sum(own) / len(own):.0f} own instances each; received {sum(traffic) / len(traffic) / 1024:.0f} "
                  f"KiB each from the API ({sum(traffic) / sum(own) / 1024:.1f} KiB per own instance, TLS included); "
                  f"the fleet has {args.services} instances")
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        for loop in loops:
            loop.stop.set()
        operator.terminate()
        try:
            operator.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print("the operator did not stop within 60 s of SIGTERM; killed", flush=True)
            operator.kill()
            operator.wait()
        for proxy in proxies:
            proxy.close()
        if args.floor:
            templates = floor_templates(api, args.services)
            agents = {name: KubeClient(Connection(kubeconfig=str(installation.agent_kubeconfig(name))), user_agent="floor")
                      for name in sorted({instance["spec"]["device"] for _, instance in templates})}
            replay_floor(plane, installation, agents.__getitem__, templates)
    registry.stop()


if __name__ == "__main__":
    main()
