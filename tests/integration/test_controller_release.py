"""Removed instances keep the operator's finalizer until their agent reports them stopped, their
device is gone, or the stop timeout passes (on the real kube-apiserver, with the real client)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import AOS_SERVICE_INSTANCE, FINALIZER_OPERATOR
from aos_operator.controller.placement import DeviceView
from aos_operator.controller.reconciler import Operator, release_stopped
from aos_operator.controller.settings import OperatorSettings
from aos_operator.registry import RegistryClient
from tools.cluster import ControlPlane

DIGEST = "sha256:" + "ab" * 32


def instance(name: str, namespace: str, device: str) -> dict[str, Any]:
    return {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosServiceInstance",
        "metadata": {"name": name, "namespace": namespace, "finalizers": [FINALIZER_OPERATOR]},
        "spec": {"service": "svc", "device": device, "index": 0, "serviceId": "svc", "subject": "local",
                 "instanceId": f"{name}-id", "image": {"reference": f"r.example/svc@{DIGEST}", "digest": DIGEST}},
    }


async def test_release_of_removed_instances(control_plane: ControlPlane, tmp_path: Path) -> None:
    namespace = f"release-{uuid.uuid4().hex[:6]}"
    control_plane.ensure_namespace(namespace)
    client = KubeClient(Connection(kubeconfig=str(control_plane.admin_kubeconfig)), user_agent="test")
    for name, device in (("stopped", "d1"), ("orphan", "gone"), ("running", "d1")):
        client.create(AOS_SERVICE_INSTANCE, instance(name, namespace, device))
    client.patch(AOS_SERVICE_INSTANCE, "stopped", {"status": {"phase": "Stopped"}}, namespace, status=True)
    client.patch(AOS_SERVICE_INSTANCE, "running", {"status": {"phase": "Running"}}, namespace, status=True)
    for name in ("stopped", "orphan", "running"):
        client.delete(AOS_SERVICE_INSTANCE, name, namespace)
    devices = {"d1": DeviceView("d1", {}, True, "amd64")}

    def operator(timeout: float) -> Operator:
        settings = OperatorSettings(registry="r/aos", work_dir=tmp_path, instance_stop_timeout=timeout)
        return Operator(settings, client, RegistryClient(), build_slots=asyncio.Semaphore(1))

    def bodies() -> list[dict[str, Any]]:
        return client.list(AOS_SERVICE_INSTANCE, namespace)[0]

    assert all(item["metadata"].get("deletionTimestamp") for item in bodies()), "the finalizer holds them"
    await release_stopped(operator(3600), bodies(), devices)
    assert sorted(item["metadata"]["name"] for item in bodies()) == ["running"], "stopped and orphaned are released"
    await release_stopped(operator(3600), bodies(), devices)
    assert [item["metadata"]["name"] for item in bodies()] == ["running"], "a running instance waits for its agent"
    await release_stopped(operator(0), bodies(), devices)
    assert bodies() == [], "after the stop timeout it is released anyway"
    client.close()
