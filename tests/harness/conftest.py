"""Helpers for the harness's own tests: sync clients bound to the `kube` emulator, raw watch reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import kubernetes
import pytest

from tests.harness import KubeEmulator, sync_api_client

T = TypeVar("T")
GROUP, VERSION = "aosedge.io", "v1alpha1"
NAMESPACE = "test-ns"


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking (sync client) call in a worker thread: the emulator shares this loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def api_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> kubernetes.client.ApiException:
    """Call `fn` off the loop and return the ApiException it must raise."""
    with pytest.raises(kubernetes.client.ApiException) as caught:
        await off_loop(fn, *args, **kwargs)
    return caught.value


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosService",
            "metadata": {"name": name}, "spec": {"config": {"x": 1}, **spec}}


async def read_watch(url: str, path: str, params: dict[str, str], *, count: int | None = None,
                     timeout: float = 5.0, user_agent: str = "aos-test") -> list[dict[str, Any]]:
    """Watch with raw HTTP until `count` events arrive or the server ends the stream."""
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(headers={"User-Agent": user_agent}) as session:
        async with asyncio.timeout(timeout):
            async with session.get(url + path, params={"watch": "true", **params}) as response:
                assert response.status == 200, await response.text()
                async for line in response.content:
                    if line.strip():
                        events.append(json.loads(line))
                    if count is not None and len(events) >= count:
                        break
    return events


@pytest.fixture
def namespace(kube: KubeEmulator) -> str:
    kube.ensure_namespace(NAMESPACE)
    return NAMESPACE


@pytest.fixture
def api_client(kube: KubeEmulator) -> kubernetes.client.ApiClient:
    return sync_api_client(kube.url, "aos-test")


@pytest.fixture
def custom(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client)


@pytest.fixture
def core(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client)
