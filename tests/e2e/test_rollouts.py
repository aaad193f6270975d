"""Rollouts on a real control plane: rolling with maxUnavailable, a crashing canary rolled back
without a rebuild, pause/resume/undo through `aosctl rollout`. Ten simulated devices under the
agents' real Kubernetes loop (tests/e2e/rollout_fleet.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aos_operator.api.models import AOS_DEVICE, AOS_SERVICE, AOS_SERVICE_INSTANCE
from tests.e2e.fleet import eventually
from tests.e2e.rollout_fleet import LABEL, NAMESPACE, Fleet, rollout_fleet, unavailable_devices

pytestmark = pytest.mark.slow
DEVICES = 10


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with rollout_fleet(tmp_path_factory.mktemp("rollouts"), DEVICES) as running:
        yield running


def complete(fleet: Fleet, name: str, revision: int, timeout: float = 120.0) -> dict:
    def check() -> dict | None:
        rollout = fleet.rollout(name)
        instances = fleet.instances(name)
        digest = fleet.revision_digest(name, revision) if rollout.get("revision") == revision else None
        if (rollout.get("phase") == "Complete" and rollout.get("revision") == revision and len(instances) == DEVICES
                and all(i["spec"]["image"]["digest"] == digest and (i.get("status") or {}).get("phase") == "Running"
                        for i in instances)):
            return rollout
        return None

    return eventually(check, timeout, what=lambda: f"{name} revision {revision} complete: {fleet.rollout(name)}")


class Sampler:
    """Polls the instances of a service while a rollout runs: devices without an available
    instance, and every device that was ever assigned a given digest."""

    def __init__(self, fleet: Fleet, name: str) -> None:
        self.fleet, self.name = fleet, name
        self.max_unavailable = 0
        self.samples = 0
        self.assigned: dict[str, set[str]] = {}  # digest -> devices
        self.generations: dict[str, set[int]] = {}  # device -> generations of its instance seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            instances = self.fleet.instances(self.name)
            self.samples += 1
            self.max_unavailable = max(self.max_unavailable, len(unavailable_devices(instances)))
            for item in instances:
                device = item["spec"]["device"]
                self.assigned.setdefault(item["spec"]["image"]["digest"], set()).add(device)
                self.generations.setdefault(device, set()).add(item["metadata"]["generation"])
            self._stop.wait(0.1)


def test_rolling_update_keeps_at_most_max_unavailable_devices_down(fleet: Fleet) -> None:
    fleet.service("rolling", "1.0.0", {"rollingUpdate": {"maxUnavailable": 2}})
    complete(fleet, "rolling", 1)
    with Sampler(fleet, "rolling") as sampler:
        fleet.set_version("rolling", "1.1.0")
        rollout = complete(fleet, "rolling", 2)
    assert sampler.samples > 20
    assert 1 <= sampler.max_unavailable <= 2, sampler.max_unavailable
    assert rollout["stableRevision"] == 2 and rollout["updatedDevices"] == DEVICES
    new = fleet.revision_digest("rolling", 2)
    assert len(sampler.assigned[new]) == DEVICES
    history = fleet.aosctl("rollout", "history", "aosservice/rolling")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0].split()[:2] == ["REVISION", "DIGEST"]
    assert lines[1].split()[0] == "1" and "Superseded" not in lines[1] and "Complete" in lines[1]
    assert lines[2].split()[0] == "2" and lines[2].rstrip().endswith("current,stable")
    status = fleet.aosctl("rollout", "status", "aosservice/rolling", "--watch", "--timeout", "5")
    assert status.returncode == 0 and "revision 2: Complete" in status.stdout


def test_crashing_canary_rolls_back_its_devices_without_a_rebuild(fleet: Fleet) -> None:
    fleet.service("canary", "1.0.0")
    complete(fleet, "canary", 1)
    good = fleet.revision_digest("canary", 1)
    fleet.crashing_versions.add("2.0.0-crash")
    builds = fleet.builds()
    with Sampler(fleet, "canary") as sampler:
        fleet.set_version("canary", "2.0.0-crash", strategy={"rollingUpdate": {"maxUnavailable": 2},
                                                            "canary": {"steps": [{"devices": 2}]}})
        eventually(lambda: fleet.rollout("canary").get("phase") == "RolledBack", 120,
                   what=lambda: f"a rollback: {fleet.rollout('canary')}")
        complete_back = eventually(
            lambda: all(i["spec"]["image"]["digest"] == good and (i.get("status") or {}).get("phase") == "Running"
                        for i in fleet.instances("canary")), 60, what="every device back on revision 1")
    assert complete_back
    bad = fleet.revision_digest("canary", 2)
    canary = sampler.assigned.get(bad, set())
    assert len(canary) == 2, canary  # the canary step, and not one device more
    for device, generations in sampler.generations.items():
        if device not in canary:
            assert len(generations) == 1, f"{device} was touched: generations {generations}"
    assert fleet.builds() == builds + 1  # revision 2 was built; going back to 1 built nothing
    for device in canary:  # the devices were asked for the new digest, then the old one again
        assert fleet.devices[device].converged[-2:] == [bad, good]
    body = fleet.get("canary")
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "RolledBack"
    assert "revision 2" in ready["message"] and "CrashLoop" in ready["message"]
    rollout = body["status"]["rollout"]
    assert rollout["failedRevision"] == 2 and rollout["stableRevision"] == 1
    results = {r["revision"]: r.get("result") for r in body["status"]["revisions"]}
    assert results == {1: "Complete", 2: "RolledBack"}
    events = fleet.plane.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    rolled_back = [e for e in events if e.get("reason") == "RolledBack" and e["involvedObject"]["name"] == "canary"]
    assert rolled_back and rolled_back[0]["type"] == "Warning" and "revision 2" in rolled_back[0]["message"]
    # A later spec change starts a new rollout from the same stable revision.
    fleet.crashing_versions.discard("2.0.0-crash")
    fleet.set_version("canary", "2.0.1", strategy={"rollingUpdate": {"maxUnavailable": 5}, "canary": None})
    rollout = complete(fleet, "canary", 3)
    assert rollout["stableRevision"] == 3


def test_pause_resume_and_undo_through_aosctl(fleet: Fleet) -> None:
    fleet.service("ops", "1.0.0", {"rollingUpdate": {"maxUnavailable": "50%"}})
    complete(fleet, "ops", 1)
    first = fleet.revision_digest("ops", 1)
    paused = fleet.aosctl("rollout", "pause", "aosservice/ops")
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    fleet.set_version("ops", "2.0.0")
    eventually(lambda: fleet.rollout("ops").get("revision") == 2 and fleet.rollout("ops").get("phase") == "Paused",
               60, what=lambda: f"a paused rollout of revision 2: {fleet.rollout('ops')}")
    assert all(i["spec"]["image"]["digest"] == first for i in fleet.instances("ops"))  # held: nothing moved
    resumed = fleet.aosctl("rollout", "resume", "aosservice/ops")
    assert resumed.returncode == 0, resumed.stderr
    complete(fleet, "ops", 2)
    builds = fleet.builds()

    undo = fleet.aosctl("rollout", "undo", "aosservice/ops")
    assert undo.returncode == 0 and "revision 1" in undo.stdout, undo.stderr
    complete(fleet, "ops", 1)
    assert fleet.builds() == builds  # dispatched by digest

    # An indefinite canary pause, resumed by aosctl; then undo to a named revision.
    fleet.set_version("ops", "3.0.0", strategy={"rollingUpdate": {"maxUnavailable": 3}, "canary": {"steps": [{"devices": 3}]}})
    eventually(lambda: fleet.rollout("ops").get("phase") == "Paused" and fleet.rollout("ops").get("revision") == 3,
               90, what=lambda: f"the canary pause of revision 3: {fleet.rollout('ops')}")
    third = fleet.revision_digest("ops", 3)
    assert sum(1 for i in fleet.instances("ops") if i["spec"]["image"]["digest"] == third) == 3
    status = fleet.aosctl("rollout", "status", "aosservice/ops")
    assert status.returncode == 0 and "Paused" in status.stdout and "3/10 devices updated" in status.stdout
    assert fleet.aosctl("rollout", "resume", "aosservice/ops").returncode == 0
    complete(fleet, "ops", 3)
    builds = fleet.builds()
    to_two = fleet.aosctl("rollout", "undo", "aosservice/ops", "--to-revision", "2")
    assert to_two.returncode == 0, to_two.stderr
    complete(fleet, "ops", 2)
    assert fleet.builds() == builds
    missing = fleet.aosctl("rollout", "undo", "aosservice/ops", "--to-revision", "9")
    assert missing.returncode == 1 and "revision 9 is not in the history" in missing.stderr
    wrong = fleet.aosctl("rollout", "status", "deployment/ops")
    assert wrong.returncode == 2 and "expected aosservice/NAME" in wrong.stderr


def test_rollout_status_of_a_missing_service_is_one_clear_line(fleet: Fleet, tmp_path: Path) -> None:
    result = fleet.aosctl("rollout", "status", "aosservice/nope")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[0] == f"aosctl: aosservice/nope not found in namespace {NAMESPACE}"


def test_a_second_service_with_the_same_identity_waits_until_the_first_is_gone(fleet: Fleet) -> None:
    """Instance IDs derive from (service ID, subject, index): two AosServices with one service UID
    would drive the same containers on a device. The older one keeps the identity."""
    fleet.service("first", "1.0.0")
    complete(fleet, "first", 1)
    copy = {"apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
            "metadata": {"name": "copy", "namespace": NAMESPACE}, "spec": fleet.get("first")["spec"]}
    fleet.api.create(AOS_SERVICE, copy)

    def refused() -> dict | None:
        conditions = {c["type"]: c for c in (fleet.get("copy").get("status") or {}).get("conditions") or ()}
        ready = conditions.get("Ready", {})
        return ready if ready.get("reason") == "DuplicateServiceId" else None

    ready = eventually(refused, 60, what=lambda: f"copy refused: {fleet.get('copy').get('status')}")
    assert ready["status"] == "False" and f"AosService {NAMESPACE}/first" in ready["message"]
    assert fleet.instances("copy") == []
    assert len(fleet.instances("first")) == DEVICES  # the owner is untouched

    fleet.api.delete(AOS_SERVICE, "first", NAMESPACE)
    complete(fleet, "copy", 1)
    fleet.api.delete(AOS_SERVICE, "copy", NAMESPACE)


def test_an_agent_runs_one_of_two_instances_with_the_same_id_until_it_is_gone(fleet: Fleet) -> None:
    """Hostile or stale API objects: two AosServiceInstances of one device with one instance ID.
    The agent keeps the first, reports the second, and hands the ID over when the first goes."""
    device = sorted(fleet.devices)[0]

    def instance(name: str) -> dict:
        return {"apiVersion": "aosedge.io/v1alpha1", "kind": "AosServiceInstance",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"aosedge.io/device": device,
                                                                               "aosedge.io/service": "manual"}},
                "spec": {"service": "manual", "device": device, "index": 0, "serviceId": "manual-service",
                         "subject": "default", "instanceId": "3b0c6f7e-0d1c-4c4f-9a57-6c1f1f5b7a01",
                         "image": {"reference": "127.0.0.1:1/none", "digest": "sha256:" + "1" * 64}}}

    def phase(name: str) -> tuple[str | None, str | None]:
        status = fleet.api.get(AOS_SERVICE_INSTANCE, name, NAMESPACE).get("status") or {}
        return status.get("phase"), status.get("reason")

    fleet.api.create(AOS_SERVICE_INSTANCE, instance("manual-a"))
    eventually(lambda: phase("manual-a")[0] == "Running", 60, what=lambda: f"manual-a running: {phase('manual-a')}")
    fleet.api.create(AOS_SERVICE_INSTANCE, instance("manual-b"))
    eventually(lambda: phase("manual-b") == ("Failed", "DuplicateInstanceId"), 60,
               what=lambda: f"manual-b refused: {phase('manual-b')}")
    assert phase("manual-a")[0] == "Running"

    fleet.api.delete(AOS_SERVICE_INSTANCE, "manual-a", NAMESPACE)
    eventually(lambda: phase("manual-b")[0] == "Running", 60, what=lambda: f"manual-b took over: {phase('manual-b')}")
    fleet.api.delete(AOS_SERVICE_INSTANCE, "manual-b", NAMESPACE)


def test_a_deleted_aos_device_is_registered_again_with_the_nodes_labels(fleet: Fleet) -> None:
    """The heartbeat reads its AosDevice only after a failed beat: a deleted one (404 on the patch)
    is created again at once with its status and the Node's labels, not 30 s later. Last in this
    module: the operator removes the instances of a device that is gone."""
    name = sorted(fleet.devices)[-1]
    before = fleet.api.get(AOS_DEVICE, name)
    assert before is not None and fleet.api.delete(AOS_DEVICE, name)
    again = eventually(lambda: (device := fleet.api.get(AOS_DEVICE, name)) is not None
                       and device["metadata"]["uid"] != before["metadata"]["uid"]
                       and (device.get("status") or {}).get("architecture") and device, 60,
                       what=f"AosDevice {name} registered again with its status")
    labels = eventually(lambda: (device := fleet.api.get(AOS_DEVICE, name)) is not None
                        and device["metadata"].get("labels", {}).get(LABEL) == "yes" and device["metadata"]["labels"],
                        15, what=f"the Node's label {LABEL} on the new AosDevice {name}")
    assert labels["aosedge.io/device"] == name and again["status"]["architecture"] == "amd64"

    def settled() -> bool:  # the operator places the device's instances again: let their starts end
        items, _ = fleet.api.list(AOS_SERVICE_INSTANCE, NAMESPACE)
        return all((item.get("status") or {}).get("phase") == "Running" for item in items if item["spec"]["device"] == name)

    eventually(settled, 60, what=f"the instances on {name} Running again")
    time.sleep(2)  # a simulated start's timer may still be due (0.5 to 1.5 s); the fleet stops after this
