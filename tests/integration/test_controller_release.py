"""Removed instances keep the operator's finalizer until their agent reports them stopped, their
device is gone, or the stop timeout passes (against the API emulator, with the real client)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import FINALIZER_OPERATOR
from aos_operator.controller.placement import DeviceView
from aos_operator.controller.reconciler import Operator, release_stopped
from aos_operator.controller.settings import OperatorSettings
from aos_operator.registry import RegistryClient
from tests.harness.emulator import KubeEmulator

RESOURCE = "aosserviceinstances.aosedge.io"


def instance(name: str, device: str) -> dict:
    return {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosServiceInstance",
        "metadata": {"name": name, "namespace": "default", "finalizers": [FINALIZER_OPERATOR]},
        "spec": {"service": "svc", "device": device, "index": 0},
    }


async def test_release_of_removed_instances(kube: KubeEmulator, tmp_path: Path) -> None:
    for name, device in (("stopped", "d1"), ("orphan", "gone"), ("running", "d1")):
        kube.create(instance(name, device))
        kube.delete(RESOURCE, "default", name)
    kube.patch(RESOURCE, "default", "stopped", {"status": {"phase": "Stopped"}}, subresource="status")
    kube.patch(RESOURCE, "default", "running", {"status": {"phase": "Running"}}, subresource="status")
    devices = {"d1": DeviceView("d1", {}, True, "amd64")}
    client = KubeClient(Connection(server=str(kube.url)), user_agent="test")

    def operator(timeout: float) -> Operator:
        settings = OperatorSettings(registry="r/aos", work_dir=tmp_path, instance_stop_timeout=timeout)
        return Operator(settings, client, RegistryClient(), build_slots=asyncio.Semaphore(1))

    def bodies() -> list[dict]:
        return [dict(item) for item in kube.list(RESOURCE, "default")]

    await release_stopped(operator(3600), bodies(), devices)
    assert sorted(item["metadata"]["name"] for item in bodies()) == ["running"], "stopped and orphaned are released"
    await release_stopped(operator(3600), bodies(), devices)
    assert [item["metadata"]["name"] for item in bodies()] == ["running"], "a running instance waits for its agent"
    await release_stopped(operator(0), bodies(), devices)
    assert bodies() == [], "after the stop timeout it is released anyway"
