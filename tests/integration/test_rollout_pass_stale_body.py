"""The rollout step of a pass planned from a body the watch has not refreshed yet (the status
patch of the pass before is not in it) must not undo that pass: after a rollback, the rolled-back
revision is not dispatched again. On the real kube-apiserver, with the real client; the agents'
reports are status patches written by the test."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import kopf
from kopf._core.engines import posting
from kubernetes.client.exceptions import ApiException

from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import AOS_SERVICE_INSTANCE, AosServiceSpec, ImageStatus
from aos_operator.controller import rollout_pass
from aos_operator.controller.placement import DeviceView, InstanceView, PackageRef, ServiceView
from aos_operator.controller.reconciler import Operator
from aos_operator.controller.settings import OperatorSettings
from aos_operator.registry import RegistryClient
from tools.cluster import ControlPlane

GOOD, BAD = "sha256:" + "11" * 32, "sha256:" + "22" * 32
REPOSITORY = "registry.test/aos/svc"


def image(digest: str) -> ImageStatus:
    return ImageStatus(architecture="amd64", ref=f"{REPOSITORY}:1@{digest}", digest=digest)


async def test_a_pass_on_a_stale_body_keeps_the_rollback(control_plane: ControlPlane, tmp_path: Path) -> None:
    namespace = f"stale-{uuid.uuid4().hex[:6]}"
    control_plane.ensure_namespace(namespace)
    client = KubeClient(Connection(kubeconfig=str(control_plane.admin_kubeconfig)), user_agent="test")
    for _ in range(120):  # a CRD just established answers 429 until its storage is ready
        try:
            client.list(AOS_SERVICE_INSTANCE, namespace)
            break
        except ApiException as error:
            if error.status != 429:
                raise
            await asyncio.sleep(0.25)
    op = Operator(OperatorSettings(registry="registry.test/aos", work_dir=tmp_path), client, RegistryClient(),
                  build_slots=asyncio.Semaphore(1))
    # kopf.event posts to the operator's event queue; here the test reads it.
    events: asyncio.Queue[Any] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(events)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    devices = {name: DeviceView(name, {"fleet": "yes"}, True, "amd64") for name in ("d1", "d2")}
    spec = AosServiceSpec.model_validate({
        "config": {}, "selector": {"matchLabels": {"fleet": "yes"}},
        "strategy": {"canary": {"steps": [{"devices": 1, "pauseSeconds": 0}]}, "failureThreshold": 0},
    })
    uid = str(uuid.uuid4())

    def view(digest: str) -> ServiceView:
        return ServiceView(namespace, "svc", uid, "svc-id", "default", "1", 1, ("runc",), spec.selector,
                           {"amd64": PackageRef(REPOSITORY, digest, "amd64")})

    def body(status: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
                "metadata": {"name": "svc", "namespace": namespace, "uid": uid, "generation": 1},
                "spec": spec.model_dump(exclude_none=True), "status": status}

    def instances() -> list[dict[str, Any]]:
        return [item for item in client.list(AOS_SERVICE_INSTANCE, namespace)[0] if item["spec"]["service"] == "svc"]

    def report(device: str, digest: str, phase: str, reason: str | None = None) -> None:
        (item,) = [item for item in instances() if item["spec"]["device"] == device]
        client.patch(AOS_SERVICE_INSTANCE, item["metadata"]["name"], {"status": {
            "phase": phase, "imageDigest": digest, "reason": reason, "startTime": "2026-01-01T00:00:00Z"}},
            namespace, status=True)
        for _ in range(100):  # until a list shows it (the apiserver may serve lists from its watch cache)
            if any(i["spec"]["device"] == device and (i.get("status") or {}).get("phase") == phase
                   for i in instances()):
                return
            time.sleep(0.1)
        raise AssertionError(f"the {phase} report of {device} never showed in a list")

    async def run(status: dict[str, Any], digest: str, source: str,
                  seen: list[dict[str, Any]] | None = None) -> rollout_pass.Outcome:
        views = [InstanceView.from_body(item) for item in (instances() if seen is None else seen)]
        return await rollout_pass.run(op, body(status), spec, view(digest), devices, views, [image(digest)], source)

    first = await run({}, GOOD, "source-1")  # revision 1 everywhere: nothing ran before
    for device in devices:
        report(device, GOOD, "Running")
    status = (await run(first.status, GOOD, "source-1")).status
    assert status["rollout"]["phase"] == "Complete", (status["rollout"], [(i["spec"], i.get("status")) for i in instances()])
    canary = await run(status, BAD, "source-2")
    (moved,) = [item["spec"]["device"] for item in instances() if item["spec"]["image"]["digest"] == BAD]
    report(moved, BAD, "Failed", "CrashLoop")
    seen = instances()  # what the operator's index holds when it rolls back
    rolled_back = await run(canary.status, BAD, "source-2", seen)
    assert rolled_back.status["rollout"]["phase"] == "RolledBack"
    assert [item["spec"]["image"]["digest"] for item in instances()] == [GOOD, GOOD]

    # The next pass runs before the watch delivers either write: the body still says Progressing
    # and the index still shows the canary on revision 2.
    stale = await run(canary.status, BAD, "source-2", seen)
    assert stale.status["rollout"]["phase"] == "RolledBack"
    assert [item["spec"]["image"]["digest"] for item in instances()] == [GOOD, GOOD], "revision 2 dispatched again"
    reasons = []
    while not events.empty():
        reasons.append(events.get_nowait().reason)
    assert reasons.count("RolledBack") == 1, reasons
    client.close()
