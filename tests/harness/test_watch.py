"""List and watch: label/field selectors, resourceVersion semantics, timeouts, bookmarks."""

from __future__ import annotations

import asyncio
import threading

import kubernetes

from tests.harness import KubeEmulator, eventually
from tests.harness.conftest import GROUP, VERSION, api_error, off_loop, read_watch

INSTANCES = f"/apis/{GROUP}/{VERSION}/namespaces/test-ns/aosserviceinstances"


def instance(name: str, device: str, **labels: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosServiceInstance",
            "metadata": {"name": name, "namespace": "test-ns",
                         "labels": {"aosedge.io/device": device, **labels}},
            "spec": {"device": device}}


async def test_list_with_label_selectors(kube: KubeEmulator, custom, namespace) -> None:
    kube.create(instance("a", "dev-1", tier="front"))
    kube.create(instance("b", "dev-2", tier="back"))
    kube.create(instance("c", "dev-2"))

    async def names(selector: str) -> list[str]:
        listing = await off_loop(custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                 "aosserviceinstances", label_selector=selector)
        return [item["metadata"]["name"] for item in listing["items"]]

    assert await names("aosedge.io/device=dev-2") == ["b", "c"]
    assert await names("aosedge.io/device==dev-1") == ["a"]
    assert await names("aosedge.io/device!=dev-1") == ["b", "c"]
    assert await names("tier in (front,back)") == ["a", "b"]
    assert await names("tier notin (front)") == ["b", "c"]
    assert await names("tier") == ["a", "b"]
    assert await names("!tier") == ["c"]
    assert await names("aosedge.io/device=dev-2,!tier") == ["c"]


async def test_list_with_field_selectors_and_bad_selectors(kube: KubeEmulator, custom, namespace) -> None:
    kube.create(instance("a", "dev-1"))
    kube.create(instance("b", "dev-1"))
    listing = await off_loop(custom.list_cluster_custom_object, GROUP, VERSION, "aosserviceinstances",
                             field_selector="metadata.name=b,metadata.namespace=test-ns")
    assert [item["metadata"]["name"] for item in listing["items"]] == ["b"]
    error = await api_error(custom.list_cluster_custom_object, GROUP, VERSION, "aosserviceinstances",
                            field_selector="spec.device=dev-1")
    assert error.status == 400 and "field label not supported" in error.body
    error = await api_error(custom.list_cluster_custom_object, GROUP, VERSION, "aosserviceinstances",
                            label_selector="a in (b")
    assert error.status == 400


async def test_watch_without_version_replays_then_streams(kube: KubeEmulator, namespace) -> None:
    kube.create(instance("a", "dev-1"))
    watch = asyncio.create_task(read_watch(kube.url, INSTANCES, {}, count=3))
    await eventually(lambda: kube.open_watches == 1, message="the watch to open")
    kube.create(instance("b", "dev-1"))
    kube.create(instance("c", "dev-1"))
    events = await watch
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
        ("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]


async def test_watch_from_a_list_version_gets_only_newer_events(kube: KubeEmulator, namespace) -> None:
    kube.create(instance("a", "dev-1"))
    listed_at = str(kube.revision)
    # Changes between the list and the watch must reach the watch (kopf lists, then watches).
    kube.create(instance("b", "dev-1"))
    patched = kube.patch("aosserviceinstances", "test-ns", "a", {"metadata": {"labels": {"x": "y"}}})
    events = await read_watch(kube.url, INSTANCES, {"resourceVersion": listed_at, "timeoutSeconds": "1"})
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
        ("ADDED", "b"), ("MODIFIED", "a")]
    assert events[-1]["object"]["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    # From the latest version: nothing at all, no replays.
    assert await read_watch(kube.url, INSTANCES, {"resourceVersion": str(kube.revision), "timeoutSeconds": "1"}) == []


async def test_watch_with_a_label_selector_sees_objects_enter_and_leave(kube: KubeEmulator, namespace) -> None:
    kube.create(instance("mine", "dev-1"))
    kube.create(instance("other", "dev-2"))
    selector = {"labelSelector": "aosedge.io/device=dev-1", "timeoutSeconds": "2"}
    watch = asyncio.create_task(read_watch(kube.url, INSTANCES, selector))
    await eventually(lambda: kube.open_watches == 1, message="the watch to open")
    kube.patch("aosserviceinstances", "test-ns", "other", {"spec": {"note": "not for this watch"}})
    kube.patch("aosserviceinstances", "test-ns", "other", {"metadata": {"labels": {"aosedge.io/device": "dev-1"}}})
    kube.patch("aosserviceinstances", "test-ns", "mine", {"metadata": {"labels": {"aosedge.io/device": "dev-3"}}})
    kube.patch("aosserviceinstances", "test-ns", "mine", {"spec": {"note": "gone from this watch"}})
    events = await watch
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
        ("ADDED", "mine"), ("ADDED", "other"), ("DELETED", "mine")]


async def test_named_watch_and_timeout(kube: KubeEmulator, namespace) -> None:
    kube.create(instance("a", "dev-1"))
    kube.create(instance("b", "dev-1"))
    events = await read_watch(kube.url, INSTANCES + "/b", {"timeoutSeconds": "1"})
    assert [event["object"]["metadata"]["name"] for event in events] == ["b"]
    assert kube.open_watches == 0  # the server ended the stream at timeoutSeconds


async def test_bookmarks_carry_the_current_version(namespace) -> None:
    async with KubeEmulator(bookmark_interval=0.2) as kube:
        kube.ensure_namespace("test-ns")
        kube.create(instance("a", "dev-1"))
        events = await read_watch(kube.url, INSTANCES, {"allowWatchBookmarks": "true", "timeoutSeconds": "1",
                                                         "resourceVersion": str(kube.revision)}, count=1)
        assert events[0]["type"] == "BOOKMARK"
        assert events[0]["object"]["metadata"]["resourceVersion"] == str(kube.revision)
        assert events[0]["object"]["kind"] == "AosServiceInstance"


async def test_initial_events_end_with_a_bookmark(kube: KubeEmulator, namespace) -> None:
    kube.create(instance("a", "dev-1"))
    events = await read_watch(kube.url, INSTANCES, {"sendInitialEvents": "true", "allowWatchBookmarks": "true",
                                                     "resourceVersionMatch": "NotOlderThan"}, count=2)
    assert [event["type"] for event in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_too_old_version_is_410_gone(namespace) -> None:
    async with KubeEmulator(event_log_limit=2) as kube:
        kube.ensure_namespace("test-ns")
        start = str(kube.revision)
        for name in "abc":
            kube.create(instance(name, "dev-1"))
        events = await read_watch(kube.url, INSTANCES, {"resourceVersion": start})
        assert [event["type"] for event in events] == ["ERROR"]
        assert events[0]["object"]["code"] == 410


async def test_sync_client_list_then_watch_as_an_agent(kube: KubeEmulator, custom, namespace) -> None:
    """The agent's pattern: list with a selector, then watch from the list's version in a thread."""
    kube.create(instance("early", "dev-1"))
    seen: list[tuple[str, str]] = []
    started = threading.Event()

    def agent() -> None:
        listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "aosserviceinstances",
                                                       label_selector="aosedge.io/device=dev-1")
        seen.extend(("LISTED", item["metadata"]["name"]) for item in listing["items"])
        started.set()
        watch = kubernetes.watch.Watch()
        for event in watch.stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                  "aosserviceinstances", label_selector="aosedge.io/device=dev-1",
                                  resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=2):
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            if len(seen) == 3:
                watch.stop()

    thread = asyncio.create_task(off_loop(agent))
    await off_loop(started.wait, 5)
    kube.create(instance("other-device", "dev-2"))
    kube.create(instance("late", "dev-1"))
    kube.patch("aosserviceinstances", "test-ns", "early", {"spec": {"x": 1}})
    await thread
    assert seen == [("LISTED", "early"), ("ADDED", "late"), ("MODIFIED", "early")]
