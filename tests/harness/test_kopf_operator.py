"""A small real kopf operator against the emulator, with no test-side workarounds.

The operator runs in its own thread and event loop (the emulator serves on the test's loop).
It is started, and the AosService is created right after kopf says it is ready: no seeded
resourceVersions, no waiting for watch requests, kopf's default consistency timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import kopf
import kubernetes
import pytest

from tests.harness import KubeEmulator, eventually, sync_api_client
from tests.harness.conftest import GROUP, VERSION, off_loop, service

FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def build_registry(url: str, calls: Counter[str]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    api = kubernetes.client.CustomObjectsApi(sync_api_client(url, "aos-operator"))

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url)

    @kopf.on.create(GROUP, VERSION, "aosservices", id="make-instance", registry=registry)
    def make_instance(body: kopf.Body, name: str, namespace: str, patch: kopf.Patch, **_: Any) -> dict[str, str]:
        calls["create"] += 1
        child = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "AosServiceInstance",
            "metadata": {"name": f"{name}-0", "labels": {"aosedge.io/service": name, "aosedge.io/device": "dev-1"}},
            "spec": {"service": name, "device": "dev-1", "index": 0},
        }
        kopf.adopt(child, owner=body)
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, "aosserviceinstances", child)
        except kubernetes.client.ApiException as error:
            if error.status != 409:
                raise
        patch.status["phase"] = "Ready"
        return {"instance": child["metadata"]["name"]}

    @kopf.on.delete(GROUP, VERSION, "aosservices", id="cleanup", registry=registry)
    def cleanup(name: str, **_: Any) -> None:
        calls["delete"] += 1

    return registry


class OperatorThread:
    """kopf.operator() in a thread with its own event loop; never blocks the emulator's loop."""

    def __init__(self, registry: kopf.OperatorRegistry, namespace: str) -> None:
        self.registry = registry
        self.namespace = namespace
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(kopf.operator(
                registry=self.registry, settings=kopf.OperatorSettings(), standalone=True,
                namespaces=[self.namespace], stop_flag=self.stop_flag, ready_flag=self.ready_flag,
            ))
        except BaseException as error:  # reported by the test
            self.error = error

    async def __aenter__(self) -> OperatorThread:
        self.thread.start()
        assert await off_loop(self.ready_flag.wait, 30), "kopf did not become ready"
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.stop_flag.set()
        await off_loop(self.thread.join, 30)
        assert not self.thread.is_alive(), "kopf did not stop"


def reconciled(kube: KubeEmulator, namespace: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        svc = kube.get("aosservices", namespace, name)
        return svc if svc and svc.get("status", {}).get("phase") == "Ready" else None
    return check


@pytest.mark.parametrize("created", ["before-start", "after-ready"])
async def test_kopf_operator_creates_owned_child_and_finalizes(kube: KubeEmulator, namespace: str,
                                                                created: str) -> None:
    calls: Counter[str] = Counter()
    user = kubernetes.client.CustomObjectsApi(sync_api_client(kube.url, "kubectl"))
    if created == "before-start":  # kopf finds it by listing
        await off_loop(user.create_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices", service("svc"))
    async with OperatorThread(build_registry(kube.url, calls), namespace) as operator:
        if created == "after-ready":  # kopf finds it by listing or by watching, never both
            await off_loop(user.create_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices",
                           service("svc"))
        svc = await eventually(reconciled(kube, namespace, "svc"), timeout=30, message="the create handler's status")
        assert svc["status"]["make-instance"] == {"instance": "svc-0"}
        assert FINALIZER in svc["metadata"]["finalizers"]
        child = kube.get("aosserviceinstances", namespace, "svc-0")
        assert child is not None
        [owner] = child["metadata"]["ownerReferences"]
        assert owner["uid"] == svc["metadata"]["uid"] and owner["controller"] is True

        await off_loop(user.delete_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices", "svc")
        await eventually(lambda: kube.get("aosservices", namespace, "svc") is None, timeout=30,
                         message="the finalizer's removal")
        await eventually(lambda: kube.get("aosserviceinstances", namespace, "svc-0") is None,
                         message="the child's garbage collection")
        assert calls == {"create": 1, "delete": 1}
        assert kube.metrics.total(client_prefix="kopf/", watch=True) >= 1
    assert operator.error is None, operator.error


async def test_kopf_operator_recovers_after_losing_the_api(kube: KubeEmulator, namespace: str) -> None:
    calls: Counter[str] = Counter()
    proxy = await kube.client_proxy("operator")
    async with OperatorThread(build_registry(proxy.url, calls), namespace) as operator:
        kube.create({**service("first"), "metadata": {"name": "first", "namespace": namespace}})
        await eventually(reconciled(kube, namespace, "first"), timeout=30, message="the first service")

        proxy.block()
        kube.create({**service("second"), "metadata": {"name": "second", "namespace": namespace}})
        await asyncio.sleep(1.0)
        assert kube.get("aosservices", namespace, "second").get("status") is None  # cut off: nothing done
        proxy.unblock()

        await eventually(reconciled(kube, namespace, "second"), timeout=60, message="the service made while cut off")
        assert calls == {"create": 2}
    assert operator.error is None, operator.error
