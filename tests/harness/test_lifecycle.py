"""Deletion with finalizers, and garbage collection of dependents through ownerReferences."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import ApiError, KubeEmulator, eventually
from tests.harness.conftest import GROUP, VERSION, off_loop, read_watch, service

SERVICES = f"/apis/{GROUP}/{VERSION}/namespaces/test-ns/aosservices"


def owned_instance(name: str, *owners: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosServiceInstance",
            "metadata": {"name": name, "namespace": "test-ns", "ownerReferences": [
                {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
                 "uid": owner["metadata"]["uid"], "controller": index == 0, "blockOwnerDeletion": True}
                for index, owner in enumerate(owners)]},
            "spec": {}}


async def test_deletion_waits_for_finalizers(kube: KubeEmulator, custom, namespace) -> None:
    body = service("svc")
    body["metadata"]["finalizers"] = ["aosedge.io/cleanup"]
    created = kube.create({**body, "metadata": {**body["metadata"], "namespace": namespace}})
    watch = asyncio.create_task(read_watch(kube.url, SERVICES, {"resourceVersion": str(kube.revision)}, count=3))
    await eventually(lambda: kube.open_watches == 1, message="the watch to open")

    marked = await off_loop(custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices", "svc")
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["finalizers"] == ["aosedge.io/cleanup"]
    assert kube.get("aosservices.aosedge.io", namespace, "svc") is not None
    # Finalizers cannot be added while deleting; a second delete changes nothing.
    again = await off_loop(custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices", "svc")
    assert again["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]
    # A status write still works while the finalizer holds the object.
    kube.patch("aosservices", namespace, "svc", {"status": {"phase": "Deleting"}}, subresource="status")

    released = await off_loop(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices", "svc",
                              {"metadata": {"finalizers": None}})
    assert "finalizers" not in released["metadata"]
    assert kube.get("aosservices.aosedge.io", namespace, "svc") is None

    events = await watch
    assert [event["type"] for event in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]
    assert versions == sorted(versions) and versions[0] > int(created["metadata"]["resourceVersion"])
    assert events[0]["object"]["metadata"]["generation"] == 2  # marking for deletion bumps it, as the API server


async def test_new_finalizers_are_refused_while_deleting(kube: KubeEmulator, namespace) -> None:
    body = service("svc")
    body["metadata"].update(namespace=namespace, finalizers=["a"])
    kube.create(body)
    kube.delete("aosservices", namespace, "svc")
    with pytest.raises(ApiError) as refused:
        kube.patch("aosservices", namespace, "svc", {"metadata": {"finalizers": ["a", "b"]}})
    assert refused.value.status == 422


async def test_background_gc_deletes_dependents(kube: KubeEmulator, custom, namespace) -> None:
    owner = kube.create({**service("svc"), "metadata": {"name": "svc", "namespace": namespace}})
    kube.create(owned_instance("child-1", owner))
    held = owned_instance("child-2", owner)
    held["metadata"]["finalizers"] = ["aosedge.io/agent"]
    kube.create(held)

    await off_loop(custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, "aosservices", "svc")
    await eventually(lambda: kube.get("aosserviceinstances", namespace, "child-1") is None,
                     message="child-1 to be collected")
    # A dependent with a finalizer is marked for deletion and waits for it.
    child_2 = await eventually(lambda: (kube.get("aosserviceinstances", namespace, "child-2") or {})
                               .get("metadata", {}).get("deletionTimestamp") and
                               kube.get("aosserviceinstances", namespace, "child-2"))
    assert child_2["metadata"]["finalizers"] == ["aosedge.io/agent"]
    kube.patch("aosserviceinstances", namespace, "child-2", {"metadata": {"finalizers": []}})
    assert kube.get("aosserviceinstances", namespace, "child-2") is None


async def test_gc_waits_for_the_owner_to_be_gone_and_spares_co_owned(kube: KubeEmulator, namespace) -> None:
    body = service("svc")
    body["metadata"].update(namespace=namespace, finalizers=["aosedge.io/cleanup"])
    owner = kube.create(body)
    other = kube.create({**service("other"), "metadata": {"name": "other", "namespace": namespace}})
    kube.create(owned_instance("child", owner))
    kube.create(owned_instance("shared", owner, other))

    kube.delete("aosservices", namespace, "svc")
    await asyncio.sleep(0.1)
    assert kube.get("aosserviceinstances", namespace, "child") is not None  # owner still there (finalizer)

    kube.patch("aosservices", namespace, "svc", {"metadata": {"finalizers": None}})
    await eventually(lambda: kube.get("aosserviceinstances", namespace, "child") is None, message="GC of child")
    shared = kube.get("aosserviceinstances", namespace, "shared")
    assert shared is not None
    assert [ref["name"] for ref in shared["metadata"]["ownerReferences"]] == ["other"]


async def test_orphan_propagation_keeps_dependents(kube: KubeEmulator, namespace) -> None:
    owner = kube.create({**service("svc"), "metadata": {"name": "svc", "namespace": namespace}})
    kube.create(owned_instance("child", owner))
    kube.delete("aosservices", namespace, "svc", propagation_policy="Orphan")
    await eventually(lambda: "ownerReferences" not in kube.get("aosserviceinstances", namespace, "child")["metadata"],
                     message="the child to be orphaned")


async def test_gc_is_transitive_and_cluster_scoped_owners_work(kube: KubeEmulator, namespace) -> None:
    device = kube.create({"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosDevice", "metadata": {"name": "dev-1"}})
    middle = kube.create(owned_instance("middle", device))
    kube.create({**owned_instance("leaf", middle), "kind": "AosServiceInstance"})
    kube.delete("aosdevices", None, "dev-1")
    await eventually(lambda: kube.get("aosserviceinstances", namespace, "leaf") is None, message="transitive GC")


async def test_a_child_created_for_a_gone_owner_is_collected(kube: KubeEmulator, namespace) -> None:
    owner = kube.create({**service("svc"), "metadata": {"name": "svc", "namespace": namespace}})
    kube.delete("aosservices", namespace, "svc")
    kube.create(owned_instance("late-child", owner))
    await eventually(lambda: kube.get("aosserviceinstances", namespace, "late-child") is None,
                     message="the orphan-at-birth to be collected")
