"""Rollouts with real devices: the real control plane (tools/cluster.py), `aosctl operator` and two
`aosctl agent` processes running the service under runc, each logged in as the chart's identity,
and the real registry (tests/e2e/fleet.py). tests/e2e/test_rollouts.py covers the same rules on ten
simulated devices; here the instances' phases, restarts and crashes are the runtime's own.

The steps share one fleet and run in order: a rolling update with maxUnavailable 1, a crashing
canary rolled back, then the agents' package stores after both.
"""

from __future__ import annotations


import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import AOS_SERVICE, AOS_SERVICE_INSTANCE
from tests.e2e.fleet import Fleet, eventually, fleet_on_control_plane
from tests.e2e.test_operator_agents import CHART_VALUES, NAME, NAMESPACE, aos_service, config, config_map

pytestmark = [pytest.mark.root, pytest.mark.slow]
DEVICES = ("edge-a", "edge-b")
GREETING = "Hello from an AosEdge service"
CRASH_OUTPUT = "crashing on purpose"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_on_control_plane(tmp_path_factory.mktemp("rollouts-real"), CHART_VALUES, NAMESPACE) as fleet:
        fleet.start_operator()
        for device in DEVICES:  # the agents' package GC keeps its default: --keep-previous 1
            fleet.start_agent(device, {"rollout": "real", "kubernetes.io/arch": "amd64"})
        yield fleet


def version_config(version: str, *, crash: bool = False) -> dict[str, Any]:
    """The hello-world config at `version`; an env entry makes each version a new package. A
    crashing one exits 1 at once, so the start limit (2 starts in 60 s) makes it Failed, CrashLoop."""
    document = config()
    document["publish"]["version"] = version
    document["configuration"]["env"] = [*document["configuration"]["env"], f"SERVICE_VERSION={version}"]
    if crash:
        document["configuration"]["cmd"] = f"python3 -u -c \"print('{CRASH_OUTPUT}'); raise SystemExit(1)\""
        document["configuration"]["runParameters"] = {"startInterval": "PT60S", "startBurst": 2, "restartInterval": "PT1S"}
    return document


def service(fleet: Fleet) -> dict[str, Any]:
    body = fleet.service(NAMESPACE, NAME)
    assert body is not None
    return body


def rollout(fleet: Fleet) -> dict[str, Any]:
    return (service(fleet).get("status") or {}).get("rollout") or {}


def revision(fleet: Fleet, number: int) -> dict[str, Any]:
    for item in (service(fleet).get("status") or {}).get("revisions") or ():
        if item["revision"] == number:
            return dict(item)
    raise AssertionError(f"no revision {number} in status.revisions: {service(fleet).get('status')}")


def by_device(fleet: Fleet) -> dict[str, dict[str, Any]]:
    instances = fleet.instances(NAMESPACE, NAME)
    assert len(instances) == len({i["spec"]["device"] for i in instances}), "one instance per device"
    return {instance["spec"]["device"]: instance for instance in instances}


def running(instance: dict[str, Any], digest: str) -> bool:
    status = instance.get("status") or {}
    return status.get("phase") == "Running" and status.get("imageDigest") == digest


def all_running(fleet: Fleet, digest: str) -> dict[str, dict[str, Any]] | None:
    instances = by_device(fleet)
    if sorted(instances) == list(DEVICES) and all(
            running(i, digest) and i["spec"]["image"]["digest"] == digest for i in instances.values()):
        return instances
    return None


def builds(fleet: Fleet) -> int:
    assert fleet.operator is not None
    return fleet.operator.log.read_text(errors="replace").count("building and pushing")


class Sampler:
    """Every state the API held for the service's instances while a rollout runs: a list, then a
    watch from its resourceVersion, each event applied in order (`states`, one per write); and
    independent lists in a loop (`snapshots`). Clients of its own."""

    def __init__(self, fleet: Fleet) -> None:
        self.api = KubeClient(Connection(kubeconfig=str(fleet.plane.admin_kubeconfig)), user_agent="e2e-sampler")
        self.watch_api = KubeClient(Connection(kubeconfig=str(fleet.plane.admin_kubeconfig)), user_agent="e2e-watch")
        self.snapshots: list[list[dict[str, Any]]] = []
        self.states: list[list[dict[str, Any]]] = []
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, daemon=True, name="rollout-sampler"),
                         threading.Thread(target=self._watch, daemon=True, name="rollout-watch")]
        items, self._version = self.watch_api.list(AOS_SERVICE_INSTANCE, NAMESPACE)
        self._current = {i["metadata"]["name"]: i for i in items if i["spec"]["service"] == NAME}
        self.states.append(list(self._current.values()))

    def __enter__(self) -> Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self.api.close()
        self.watch_api.close()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                items, _ = self.api.list(AOS_SERVICE_INSTANCE, NAMESPACE)
            except Exception as error:  # noqa: BLE001 - reported by the test, not swallowed
                self.errors.append(error)
            else:
                self.snapshots.append([i for i in items if i["spec"]["service"] == NAME])
            self._stop.wait(0.1)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.watch_api.watch(AOS_SERVICE_INSTANCE, NAMESPACE, resource_version=self._version,
                                                  timeout_seconds=1):
                    item = event["object"]
                    if event["type"] == "ERROR":  # e.g. 410 Gone: states would be missing, so say so
                        self.errors.append(RuntimeError(f"watch: {item}"))
                        return
                    self._version = item["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK" or item["spec"]["service"] != NAME:
                        continue
                    if event["type"] == "DELETED":
                        self._current.pop(item["metadata"]["name"], None)
                    else:
                        self._current[item["metadata"]["name"]] = item
                    self.states.append(list(self._current.values()))
            except Exception as error:  # noqa: BLE001 - reported by the test, not swallowed
                self.errors.append(error)
                return

    def every(self) -> list[list[dict[str, Any]]]:
        return self.states + self.snapshots

    def assigned(self, digest: str) -> set[str]:
        """Every device whose instance was ever assigned `digest`."""
        return {i["spec"]["device"] for state in self.every() for i in state if i["spec"]["image"]["digest"] == digest}


def test_rolling_update_with_max_unavailable_1_keeps_one_device_serving(fleet: Fleet) -> None:
    fleet.plane.create(config_map())
    body = aos_service({"rollout": "real"}, version_config("1.0.0"))
    # minReadySeconds: a device counts as available after 2 s Running, so the sampler sees the
    # moment when one device runs the new version and the other still the old one.
    body["spec"]["strategy"] = {"rollingUpdate": {"maxUnavailable": 1, "minReadySeconds": 2}}
    fleet.api.create(AOS_SERVICE, body)
    eventually(lambda: rollout(fleet).get("phase") == "Complete" and rollout(fleet).get("revision") == 1, 240,
               lambda: f"revision 1 complete: {rollout(fleet)}\n{fleet.diagnostics()}")
    old = revision(fleet, 1)["digest"]
    first = eventually(lambda: all_running(fleet, old), 60, lambda: f"both devices Running {old}")
    for device, instance in first.items():
        eventually(lambda device=device, instance=instance: "run 1)" in fleet.agents[device].log_of(
            instance["spec"]["instanceId"]), 30, f"{device}'s first run")
    before = builds(fleet)

    with Sampler(fleet) as sampler:
        fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"config": version_config("1.1.0")}}, NAMESPACE)
        eventually(lambda: rollout(fleet).get("phase") == "Complete" and rollout(fleet).get("revision") == 2, 240,
                   lambda: f"revision 2 complete: {rollout(fleet)}\n{fleet.diagnostics()}")
        new = revision(fleet, 2)["digest"]
        final = eventually(lambda: all_running(fleet, new), 60, lambda: f"both devices Running {new}")
    assert not sampler.errors, sampler.errors
    assert new != old and len(sampler.snapshots) > 5, len(sampler.snapshots)
    mixed = False
    for snapshot in sampler.every():
        # Available as a user sees it: the instance is Running one of the two versions.
        serving = {i["spec"]["device"] for i in snapshot
                   if (i.get("status") or {}).get("phase") == "Running" and i["status"].get("imageDigest") in (old, new)}
        assert serving, f"no device served at one moment: {json.dumps(snapshot)[:2000]}"
        # The planner's rule: at most one device assigned the new digest and not yet Running it.
        moving = [i["spec"]["device"] for i in snapshot if i["spec"]["image"]["digest"] == new and not running(i, new)]
        assert len(moving) <= 1, f"two devices updating at once: {moving}"
        mixed = mixed or {i["status"].get("imageDigest") for i in snapshot
                          if (i.get("status") or {}).get("phase") == "Running"} == {old, new}
    assert mixed, "one device ran the new version while the other still ran the old one"
    assert sampler.assigned(new) == set(DEVICES)
    assert builds(fleet) == before + 1
    state = rollout(fleet)
    assert state["stableRevision"] == 2 and state["updatedDevices"] == 2 and state["totalDevices"] == 2
    for device, instance in final.items():
        assert instance["metadata"]["uid"] == first[device]["metadata"]["uid"], "the instance was updated in place"
        # The replaced container found the storage of the old one: its run counter went on.
        eventually(lambda device=device, instance=instance: "run 2)" in fleet.agents[device].log_of(
            instance["spec"]["instanceId"]), 30, f"{device}'s second run with the kept storage")


def test_a_crashing_canary_rolls_back_to_the_old_digest_without_a_rebuild(fleet: Fleet) -> None:
    stable = revision(fleet, 2)
    good = stable["digest"]
    before = eventually(lambda: all_running(fleet, good), 60, "both devices Running revision 2")
    offsets = {device: len(fleet.agents[device].log_of(before[device]["spec"]["instanceId"])) for device in DEVICES}
    containers = {device: fleet.agents[device].containers() for device in DEVICES}
    built = builds(fleet)

    with Sampler(fleet) as sampler:
        fleet.api.patch(AOS_SERVICE, NAME, {"spec": {
            "config": version_config("2.0.0", crash=True),
            "strategy": {"rollingUpdate": {"maxUnavailable": 1}, "canary": {"steps": [{"devices": 1}]},
                         "failureThreshold": 0},
        }}, NAMESPACE)
        eventually(lambda: rollout(fleet).get("phase") == "RolledBack", 180,
                   lambda: f"the rollout of revision 3 rolled back: {rollout(fleet)}\n{fleet.diagnostics()}")
        after = eventually(lambda: all_running(fleet, good), 90,
                           lambda: f"both devices Running revision 2 again: {by_device(fleet)}\n{fleet.diagnostics()}")
        time.sleep(6)  # three resync periods of the operator: the rollback must hold
    assert not sampler.errors, sampler.errors
    bad = revision(fleet, 3)["digest"]
    assert bad != good
    canary = sampler.assigned(bad)
    assert len(canary) == 1, f"the canary step is one device: {canary}"
    (canary_device,) = canary
    (other,) = set(DEVICES) - canary

    # The canary device ran the crashing package under runc, then the old one again.
    agent = fleet.agents[canary_device]
    instance = after[canary_device]
    assert instance["metadata"]["uid"] == before[canary_device]["metadata"]["uid"]
    failed = [i for state in sampler.states for i in state if i["spec"]["device"] == canary_device
              and (i.get("status") or {}).get("phase") == "Failed"]
    assert failed and failed[0]["status"]["reason"] == "CrashLoop", "the agent reported the crash loop"
    assert failed[0]["status"]["imageDigest"] == bad
    assigned = [i["spec"]["image"]["digest"] for state in sampler.states for i in state
                if i["spec"]["device"] == canary_device]
    assert [d for n, d in enumerate(assigned) if n == 0 or assigned[n - 1] != d] == [good, bad, good], \
        "the canary device went to the new digest once and back, and stayed back"
    log = eventually(lambda: (text := agent.log_of(instance["spec"]["instanceId"])[offsets[canary_device]:])
                     and CRASH_OUTPUT in text and GREETING in text.rsplit(CRASH_OUTPUT, 1)[1] and text, 30,
                     "the old service's output after the crashes")
    assert log.count(CRASH_OUTPUT) == 2, "two starts, then the start limit (startBurst 2)"
    assert "run 3)" in log.rsplit(CRASH_OUTPUT, 1)[1], "back on the old package with its storage kept"

    # The other device was never touched: same instance, generation, start time and container.
    assert sampler.assigned(good) >= {other} and other not in sampler.assigned(bad)
    untouched = after[other]
    assert untouched["metadata"]["uid"] == before[other]["metadata"]["uid"]
    assert untouched["metadata"]["generation"] == before[other]["metadata"]["generation"]
    assert untouched["status"]["startTime"] == before[other]["status"]["startTime"]
    assert untouched["status"].get("restarts", 0) == before[other]["status"].get("restarts", 0)
    assert fleet.agents[other].containers() == containers[other]
    assert CRASH_OUTPUT not in fleet.agents[other].log_of(untouched["spec"]["instanceId"])[offsets[other]:]

    # No rebuild for the way back: revision 3 was built, revision 2 was dispatched by its digest.
    assert builds(fleet) == built + 1
    assert revision(fleet, 2)["digest"] == good and revision(fleet, 2)["images"] == stable["images"]

    body = service(fleet)
    ready = fleet.condition(body, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "RolledBack"
    assert "revision 3" in ready["message"] and "CrashLoop" in ready["message"], ready["message"]
    state = body["status"]["rollout"]
    assert state["failedRevision"] == 3 and state["stableRevision"] == 2
    results = {r["revision"]: r.get("result") for r in body["status"]["revisions"]}
    assert results[2] == "Complete" and results[3] == "RolledBack", results
    events = fleet.plane.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    warnings = [e for e in events if e.get("reason") == "RolledBack" and e["involvedObject"]["name"] == NAME]
    assert warnings and warnings[0]["type"] == "Warning" and "revision 3" in warnings[0]["message"]


def test_the_agents_keep_the_running_package_and_at_most_the_previous_one(fleet: Fleet) -> None:
    digests = {number: revision(fleet, number)["digest"] for number in (1, 2, 3)}
    instances = eventually(lambda: all_running(fleet, digests[2]), 60, "both devices Running revision 2")
    assert sorted(instances) == list(DEVICES)
    canary = {device for device in DEVICES
              if (fleet.agents[device].data_dir / "uses" / digests[3].split(":", 1)[1]).exists()}
    assert len(canary) == 1, canary
    for device in DEVICES:
        store = fleet.agents[device].data_dir
        installed = {"sha256:" + path.stem for path in (store / "packages").glob("*.json")}
        # Revision 1 then 2 everywhere; the canary also had 3, then 2 again: each keeps the
        # running package and the one used before it, and the oldest is gone.
        expected = {digests[2], digests[3]} if device in canary else {digests[1], digests[2]}
        assert installed == expected, f"{device}: {sorted(installed)}"
        referenced: set[str] = set()
        for digest in installed:
            manifest = json.loads((store / "packages" / f"{digest.split(':', 1)[1]}.json").read_text())
            for descriptor in (manifest["config"], manifest.get("aosService"), *manifest["layers"]):
                if descriptor:
                    referenced.add(descriptor["digest"].split(":", 1)[1])
        blobs = {path.name for path in (store / "blobs" / "sha256").iterdir()}
        layers = {path.name for path in (store / "layers").iterdir() if len(path.name) == 64}
        assert blobs and blobs <= referenced, f"{device}: a blob no installed package uses: {blobs - referenced}"
        assert layers and layers <= referenced, f"{device}: a layer no installed package uses: {layers - referenced}"
