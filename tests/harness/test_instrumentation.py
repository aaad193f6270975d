"""Counters per client, injected failures, client proxies, and the standalone harness process."""

from __future__ import annotations

import asyncio

import kmock
import kubernetes
import pytest
import urllib3

from tests.harness import HarnessClient, KubeEmulator, eventually, sync_api_client
from tests.harness.conftest import GROUP, VERSION, api_error, off_loop, read_watch, service


async def test_requests_are_counted_per_client(kube: KubeEmulator, namespace) -> None:
    agent = kubernetes.client.CustomObjectsApi(sync_api_client(kube.url, "aos-agent/dev-1"))
    operator = kubernetes.client.CustomObjectsApi(sync_api_client(kube.url, "aos-operator"))
    await off_loop(operator.create_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices", service("s"))
    await off_loop(operator.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, "aosservices", "s",
                   {"status": {"phase": "Ready"}})
    for _ in range(3):
        await off_loop(agent.list_namespaced_custom_object, GROUP, VERSION, namespace, "aosserviceinstances")
    kube.create({**service("t"), "metadata": {"name": "t", "namespace": namespace}})
    await read_watch(kube.url, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/aosservices",
                     {"timeoutSeconds": "1"}, user_agent="aos-agent/dev-1")

    metrics = kube.metrics
    assert metrics.total(client="aos-operator", method="POST", resource="aosservices.aosedge.io") == 1
    assert metrics.total(client="aos-operator", method="PATCH", subresource="status") == 1
    assert metrics.total(client="aos-agent/dev-1", method="GET", resource="aosserviceinstances.aosedge.io",
                         watch=False) == 3
    assert metrics.total(client="aos-agent/dev-1", watch=True) == 1
    assert metrics.watch_events["aos-agent/dev-1"] == 2  # s and t replayed as ADDED
    assert metrics.watch_bytes["aos-agent/dev-1"] > 200
    assert metrics.total(client_prefix="aos-agent/") == 4
    snapshot = metrics.snapshot()
    assert {"client": "aos-operator", "method": "POST", "resource": "aosservices.aosedge.io",
            "subresource": None, "watch": False, "count": 1} in snapshot["requests"]
    metrics.reset()
    assert metrics.total() == 0 and not metrics.watch_events


async def test_injected_failures_change_nothing(kube: KubeEmulator, custom, namespace) -> None:
    rule = kube.fail_next(500, count=2, method="POST", resource="aosservices.aosedge.io")
    for _ in range(2):
        error = await api_error(custom.create_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices",
                                service("s"))
        assert error.status == 500
    assert kube.get("aosservices", namespace, "s") is None and rule.count == 0
    created = await off_loop(custom.create_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices",
                             service("s"))
    assert created["metadata"]["name"] == "s"


async def test_throttling_with_retry_after_for_one_client(kube: KubeEmulator, namespace) -> None:
    kube.fail_next(429, retry_after=2, client_prefix="aos-agent/dev-2")
    other = kubernetes.client.CoreV1Api(sync_api_client(kube.url, "aos-agent/dev-1"))
    throttled = kubernetes.client.CoreV1Api(sync_api_client(kube.url, "aos-agent/dev-2"))
    await off_loop(other.list_namespaced_config_map, namespace)  # not the targeted client
    error = await api_error(throttled.list_namespaced_config_map, namespace)
    assert error.status == 429 and error.headers["Retry-After"] == "2"
    await off_loop(throttled.list_namespaced_config_map, namespace)  # budget used up


async def test_urllib3_retries_sleep_out_retry_after(kube: KubeEmulator, namespace) -> None:
    # What an agent with urllib3's default retries sees: the 429 is absorbed after Retry-After.
    kube.fail_next(429, retry_after=1, client_prefix="aos-agent/dev-3")
    retrying = kubernetes.client.CoreV1Api(sync_api_client(kube.url, "aos-agent/dev-3", retries=3))
    await off_loop(retrying.list_namespaced_config_map, namespace)
    assert kube.metrics.total(client="aos-agent/dev-3") == 2


async def test_kmock_reactions_intercept_without_changing_state(kube: KubeEmulator, custom, namespace) -> None:
    kube["patch", kmock.resource(GROUP, VERSION, "aosservices")][:1] << 503
    kube.create({**service("s"), "metadata": {"name": "s", "namespace": namespace}})
    error = await api_error(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices", "s",
                            {"spec": {"suspend": True}})
    assert error.status == 503
    assert "suspend" not in kube.get("aosservices", namespace, "s")["spec"]


async def test_blocking_a_client_proxy(kube: KubeEmulator, namespace) -> None:
    proxy = await kube.client_proxy("agent-1")
    core = kubernetes.client.CoreV1Api(sync_api_client(proxy.url, "aos-agent/dev-1"))
    direct = kubernetes.client.CoreV1Api(sync_api_client(kube.url, "aos-agent/dev-2"))
    assert (await off_loop(core.read_namespace, namespace)).metadata.name == namespace

    # An open watch through the proxy is cut when the client is blocked.
    watch = asyncio.create_task(read_watch(proxy.url, "/api/v1/namespaces", {}, timeout=10))
    await eventually(lambda: kube.open_watches == 1, message="the watch to open")
    proxy.block()
    with pytest.raises(Exception):  # noqa: B017 - aiohttp reports the reset as one of several errors
        await watch
    with pytest.raises(urllib3.exceptions.HTTPError):
        await off_loop(core.read_namespace, namespace, _request_timeout=5)
    assert (await off_loop(direct.read_namespace, namespace)).metadata.name == namespace  # others unaffected

    proxy.unblock()
    assert (await off_loop(core.read_namespace, namespace)).metadata.name == namespace


async def test_blackhole_makes_requests_time_out(kube: KubeEmulator, namespace) -> None:
    proxy = await kube.client_proxy("agent-1")
    core = kubernetes.client.CoreV1Api(sync_api_client(proxy.url, "aos-agent/dev-1"))
    proxy.block("blackhole")
    with pytest.raises(urllib3.exceptions.HTTPError):
        await off_loop(core.read_namespace, namespace, _request_timeout=0.5)
    proxy.unblock()
    assert (await off_loop(core.read_namespace, namespace)).metadata.name == namespace


def test_standalone_process(kube_process: HarnessClient) -> None:
    kube_process.ensure_namespace("bench")
    kube_process.create_node("node-1", {"aosedge.io/runner": "runc"})
    core = kubernetes.client.CoreV1Api(sync_api_client(kube_process.url, "aos-agent/node-1"))
    nodes = core.list_node(label_selector="aosedge.io/runner=runc")
    assert [node.metadata.name for node in nodes.items] == ["node-1"]
    assert kube_process.metrics().total(client="aos-agent/node-1", method="GET", resource="nodes") == 1

    kube_process.fail_next(500, method="GET", resource="nodes")
    with pytest.raises(kubernetes.client.ApiException):
        core.list_node()

    proxy = kube_process.proxy("node-1")
    proxied = kubernetes.client.CoreV1Api(sync_api_client(proxy.url, "aos-agent/node-1"))
    assert proxied.read_node("node-1").metadata.name == "node-1"
    proxy.block()
    with pytest.raises(urllib3.exceptions.HTTPError):
        proxied.read_node("node-1", _request_timeout=5)
    proxy.unblock()
    assert proxied.read_node("node-1").metadata.name == "node-1"
    kube_process.reset_metrics()
    assert kube_process.metrics().total() == 0
