"""Placement in a burst, on the real kube-apiserver (rollout_pass.run): the passes of two services
that want the last room on one device run while each other's instance create is on its way. The
reservation book hears of an instance from its watch event, so before, both were placed on a
device with room for one; now the pass that creates an instance reserves it at once. Also: the
rollout a pass planned is kept only until the body the server sends back has it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kopf._core.engines import posting

from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import AOS_SERVICE, AOS_SERVICE_INSTANCE, AosServiceSpec, ImageStatus
from aos_operator.controller import rollout_pass
from aos_operator.controller.placement import DeviceView
from aos_operator.controller.reconciler import Operator, _service_view, parse_once
from aos_operator.controller.settings import OperatorSettings
from tests.cluster.install import apply_crds
from tests.conftest import EXAMPLES
from tools.cluster import ControlPlane

NAMESPACE = "burst"
DIGEST = "sha256:" + "a" * 64


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with ControlPlane(controller_manager=False) as started:
        apply_crds(started)
        started.ensure_namespace(NAMESPACE)
        yield started


def quiet_events() -> None:
    """kopf's events need its running operator; placement is the matter here."""
    quiet = kopf.OperatorSettings()
    quiet.posting.enabled = False
    posting.settings_var.set(quiet)


class SlowCreates(KubeClient):
    """An API server busy with a burst: a create takes a while to come back."""

    def create(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return super().create(*args, **kwargs)


def test_two_passes_at_once_place_one_instance_where_there_is_room_for_one(plane: ControlPlane) -> None:
    kube = SlowCreates(Connection(kubeconfig=str(plane.admin_kubeconfig)), user_agent="aos-burst-tests")
    op = Operator(OperatorSettings(registry="r.example:5000/aos", work_dir=Path("/nonexistent")), kube,
                  registry=None)  # type: ignore[arg-type]  # no build here
    config = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())  # reserves 2500 DMIPS
    # One device with room for one instance of it.
    devices = {"edge": DeviceView("edge", {"zone": "a"}, True, "amd64", dmips=4000, memory=1 << 30)}
    images = [ImageStatus(architecture="amd64", ref=f"r.example:5000/aos/{NAMESPACE}/x:1.0.0@{DIGEST}", digest=DIGEST)]

    async def one_pass(name: str, uid: str) -> rollout_pass.Outcome:
        document = {**config, "publish": {**config["publish"], "service_uid": uid}}
        body = kube.create(AOS_SERVICE, {"apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
                                          "metadata": {"name": name, "namespace": NAMESPACE},
                                          "spec": {"config": document, "selector": {"matchLabels": {"zone": "a"}}}})
        parsed = parse_once(op, (NAMESPACE, name), body)
        assert not isinstance(parsed, Exception) and parsed[2] is not None
        _, spec, service, _ = parsed
        assert isinstance(spec, AosServiceSpec)
        view = _service_view(body, spec, service, images)
        return await rollout_pass.run(op, body, spec, view, devices, [], images, "sha256:" + "b" * 64,
                                      op.reservations.elsewhere(NAMESPACE, name))

    async def burst() -> list[rollout_pass.Outcome]:
        quiet_events()
        return list(await asyncio.gather(one_pass("first", "3a1a0f55-0000-4000-8000-000000000001"),
                                         one_pass("second", "3a1a0f55-0000-4000-8000-000000000002")))

    outcomes = asyncio.run(burst())
    items, _ = kube.list(AOS_SERVICE_INSTANCE, NAMESPACE)
    assert len(items) == 1, f"one instance fits, {len(items)} were placed: {[i['metadata']['name'] for i in items]}"
    placed = items[0]["spec"]["service"]
    (left,) = [outcome for outcome, name in zip(outcomes, ("first", "second")) if name != placed]
    ready = next(c for c in left.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == (False, "NoDeviceFits")
    assert "edge: CPU (2500 of 4000 DMIPS reserved, an instance reserves 2500)" in ready.message
    kube.close()


def test_the_planned_rollout_is_kept_until_the_body_has_it(plane: ControlPlane) -> None:
    kube = KubeClient(Connection(kubeconfig=str(plane.admin_kubeconfig)), user_agent="aos-burst-tests")
    op = Operator(OperatorSettings(registry="r.example:5000/aos", work_dir=Path("/nonexistent")), kube,
                  registry=None)  # type: ignore[arg-type]  # no build here
    config = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())
    config["publish"]["service_uid"] = "3a1a0f55-0000-4000-8000-000000000003"
    devices = {"edge-b": DeviceView("edge-b", {"zone": "b"}, True, "amd64", dmips=40000, memory=1 << 30)}
    images = [ImageStatus(architecture="amd64", ref=f"r.example:5000/aos/{NAMESPACE}/x:1.0.0@{DIGEST}", digest=DIGEST)]
    name, key = "planned", (NAMESPACE, "planned")
    body = kube.create(AOS_SERVICE, {"apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
                                      "metadata": {"name": name, "namespace": NAMESPACE},
                                      "spec": {"config": config, "selector": {"matchLabels": {"zone": "b"}}}})
    parsed = parse_once(op, key, body)
    assert not isinstance(parsed, Exception)
    _, spec, service, _ = parsed
    view = _service_view(body, spec, service, images)

    async def one_pass() -> rollout_pass.Outcome:
        quiet_events()
        return await rollout_pass.run(op, body, spec, view, devices, [], images, "sha256:" + "c" * 64)

    outcome = asyncio.run(one_pass())
    uid = body["metadata"]["uid"]
    rollout_pass.status_seen(op, key, uid, body.get("status"))  # the body from before the write lags behind
    assert key in op.rollouts
    written = kube.patch(AOS_SERVICE, name, {"status": outcome.status}, NAMESPACE, status=True)
    assert written["status"]["revisions"], "the server kept the revision history"
    rollout_pass.status_seen(op, key, uid, written["status"])  # the watch event of that write
    assert key not in op.rollouts, "the body has the plan now: no second copy"
    kube.close()
