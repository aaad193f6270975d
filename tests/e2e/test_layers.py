"""Aos layers on a real control plane: an AosService whose config lists a layer is LayerNotFound
(nothing dispatched) until an AosLayer in range exists, then Ready with the layer's blob in its
manifest's layers[1..]; a new layer version in range, or an edit of a layer's ConfigMap, rebuilds
the service and rolls it out; an out-of-range version changes nothing; with its layers gone the service is LayerNotFound again
and its instances stay. The operator (real kopf, builds, pushes to Debian's docker-registry) and
the agents' real Kubernetes loop, the devices' runtime simulated (tests/e2e/rollout_fleet.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aos_operator.api.models import AOS_LAYER, AOS_SERVICE, AOS_SERVICE_INSTANCE
from aos_operator.packaging import registry_client
from aos_operator.registry.reference import Reference
from tests.e2e.fleet import eventually
from tests.e2e.rollout_fleet import LABEL, NAMESPACE, Fleet, hello_config, rollout_fleet

pytestmark = pytest.mark.slow
DEVICES = 2
NAME = "layered"
RANGE = {"uid": "pylibs", "minVersion": "1.0.0", "maxVersion": "2.0.0"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with rollout_fleet(tmp_path_factory.mktemp("layers"), DEVICES) as running:
        yield running


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions") or () if c["type"] == kind), {})


def layer_files(fleet: Fleet, name: str, text: str) -> None:
    fleet.plane.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NAMESPACE},
                        "data": {"module.py": text}})


def aos_layer(fleet: Fleet, name: str, version: str, config_map: str) -> dict[str, Any]:
    fleet.api.create(AOS_LAYER, {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosLayer", "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"uid": "pylibs", "version": version, "source": {"configMaps": [
            {"name": config_map, "items": [{"key": "module.py", "path": "usr/lib/python3/dist-packages/pylibs.py"}]}]}},
    })

    def pushed() -> dict[str, Any] | None:
        body = fleet.api.get(AOS_LAYER, name, NAMESPACE) or {}
        return body if condition(body, "Ready").get("status") == "True" and body["status"].get("digest") else None

    return eventually(pushed, 90, lambda: f"AosLayer {name} pushed: {fleet.api.get(AOS_LAYER, name, NAMESPACE)}")


def manifest(fleet: Fleet, ref: str) -> dict[str, Any]:
    client = registry_client(insecure=True)
    try:
        return json.loads(client.pull_manifest(ref).data)
    finally:
        client.close()


def rolled_out(fleet: Fleet, not_digest: str | None = None) -> dict[str, Any]:
    """The service Ready on a digest (other than `not_digest`), every device's instance on it and Running."""

    def check() -> dict[str, Any] | None:
        body = fleet.get(NAME)
        digest = ((body.get("status") or {}).get("image") or {}).get("digest")
        instances = fleet.instances(NAME)
        if (condition(body, "Ready").get("status") == "True" and digest and digest != not_digest
                and len(instances) == DEVICES
                and all(i["spec"]["image"]["digest"] == digest and (i.get("status") or {}).get("phase") == "Running"
                        for i in instances)):
            return body
        return None

    return eventually(check, 180, lambda: f"{NAME} rolled out: {fleet.get(NAME).get('status')}")


def test_a_service_without_its_layer_is_layer_not_found_and_nothing_is_dispatched(fleet: Fleet) -> None:
    config = hello_config("1.0.0", NAME)
    config["configuration"]["layers"] = [RANGE]
    fleet.api.create(AOS_SERVICE, {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosService", "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"config": config, "selector": {"matchLabels": {LABEL: "yes"}},
                 "source": {"configMaps": [{"name": "files"}]}, "instancesPerDevice": 1},
    })

    def not_found() -> dict[str, Any] | None:
        body = fleet.get(NAME)
        ready = condition(body, "Ready")
        generation = body["metadata"]["generation"]
        if ready.get("reason") == "LayerNotFound" and ready.get("observedGeneration") == generation:
            return body
        return None

    body = eventually(not_found, 90, lambda: f"LayerNotFound: {fleet.get(NAME).get('status')}")
    ready = condition(body, "Ready")
    assert ready["status"] == "False"
    assert "'pylibs'" in ready["message"] and ">=1.0.0 <2.0.0" in ready["message"]
    assert condition(body, "Stalled")["status"] == "True"
    assert fleet.instances(NAME) == [] and not (body.get("status") or {}).get("image")


def test_once_the_layer_exists_the_service_is_ready_with_its_blob_in_layers_1(fleet: Fleet) -> None:
    layer_files(fleet, "pylibs-1-0", "VERSION = '1.0'\n")
    layer = aos_layer(fleet, "pylibs-1-0", "1.0.0", "pylibs-1-0")["status"]
    assert layer["ref"].startswith(f"{fleet.registry_host}/aos/{NAMESPACE}/layers/pylibs:1.0.0@sha256:")
    body = rolled_out(fleet)
    image = body["status"]["image"]
    document = manifest(fleet, image["ref"])
    assert document["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    (aos,) = document["layers"][1:]
    assert aos["mediaType"] == "application/vnd.aos.image.layer.v1.tar+gzip"
    assert (aos["digest"], aos["size"]) == (layer["digest"], layer["size"])
    assert aos["annotations"]["io.aosedge.layer.uid"] == "pylibs"
    assert aos["annotations"]["io.aosedge.layer.version"] == "1.0.0"
    # the blob is in the service's own repository, where devices pull from
    client = registry_client(insecure=True)
    try:
        assert client.blob_exists(Reference.parse(image["ref"]), layer["digest"])
    finally:
        client.close()
    for instance in fleet.instances(NAME):
        assert instance["spec"]["image"]["digest"] == image["digest"]


def test_a_new_layer_version_in_range_rebuilds_and_rolls_out(fleet: Fleet) -> None:
    before = fleet.get(NAME)["status"]["image"]["digest"]
    layer_files(fleet, "pylibs-1-1", "VERSION = '1.1'\n")
    layer = aos_layer(fleet, "pylibs-1-1", "1.1.0", "pylibs-1-1")["status"]
    body = rolled_out(fleet, not_digest=before)
    after = body["status"]["image"]
    (aos,) = manifest(fleet, after["ref"])["layers"][1:]
    assert aos["digest"] == layer["digest"] and aos["annotations"]["io.aosedge.layer.version"] == "1.1.0"
    assert {i["spec"]["image"]["digest"] for i in fleet.instances(NAME)} == {after["digest"]}
    assert len(body["status"]["revisions"]) >= 2


def test_an_edit_of_a_layers_config_map_pushes_it_again_and_rolls_out(fleet: Fleet) -> None:
    before = fleet.get(NAME)["status"]["image"]["digest"]
    old_layer = fleet.api.get(AOS_LAYER, "pylibs-1-1", NAMESPACE)["status"]["digest"]
    fleet.plane.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/configmaps/pylibs-1-1",
                        {"data": {"module.py": "VERSION = '1.1 fixed'\n"}}, content_type="application/merge-patch+json")
    layer = eventually(lambda: (d := fleet.api.get(AOS_LAYER, "pylibs-1-1", NAMESPACE)["status"].get("digest")) != old_layer
                       and d, 60, "the layer pushed again from its edited ConfigMap")
    body = rolled_out(fleet, not_digest=before)
    (aos,) = manifest(fleet, body["status"]["image"]["ref"])["layers"][1:]
    assert aos["digest"] == layer


def test_an_out_of_range_version_changes_nothing(fleet: Fleet) -> None:
    before = fleet.get(NAME)["status"]["image"]["digest"]
    layer_files(fleet, "pylibs-2-0", "VERSION = '2.0'\n")
    aos_layer(fleet, "pylibs-2-0", "2.0.0", "pylibs-2-0")
    builds = fleet.builds()
    # The layer's event wakes the service at once; after two resyncs (5 s) a pass that would rebuild
    # has surely run. A wait, not a timing assertion: nothing may have moved.
    time.sleep(12)
    assert fleet.get(NAME)["status"]["image"]["digest"] == before
    assert fleet.builds() == builds


def test_with_its_layers_gone_the_service_is_layer_not_found_and_its_instances_stay(fleet: Fleet) -> None:
    digest = fleet.get(NAME)["status"]["image"]["digest"]
    for name in ("pylibs-1-0", "pylibs-1-1"):
        fleet.api.delete(AOS_LAYER, name, NAMESPACE)

    def not_found() -> dict[str, Any] | None:
        body = fleet.get(NAME)
        return body if condition(body, "Ready").get("reason") == "LayerNotFound" else None

    body = eventually(not_found, 90, lambda: f"LayerNotFound again: {fleet.get(NAME).get('status')}")
    assert "found: 2.0.0 (pylibs-2-0)" in condition(body, "Ready")["message"]
    items, _ = fleet.api.list(AOS_SERVICE_INSTANCE, NAMESPACE)
    kept = [i for i in items if i["spec"]["service"] == NAME and not i["metadata"].get("deletionTimestamp")]
    assert len(kept) == DEVICES and {i["spec"]["image"]["digest"] for i in kept} == {digest}
    assert all((i.get("status") or {}).get("phase") == "Running" for i in kept)
