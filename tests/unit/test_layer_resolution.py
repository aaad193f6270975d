"""How the operator resolves a service's `layers` to pushed AosLayers (controller/layers.LayerBook)."""

from __future__ import annotations

from typing import Any

import pytest

from aos_operator.controller.layers import LayerBook, LayerNotFound, LayerView
from aos_operator.service import parse_config_data
from aos_operator.service.description import ServiceDescription
from aos_operator.service.loader import select_service


def service(layers: list[Any]) -> ServiceDescription:
    config = {"schemaVersion": 2, "items": [{
        "identity": {"codename": "app", "type": "service"}, "version": "1.0.0",
        "images": [{"archInfo": {"architecture": "amd64"}, "cmd": "true"}], "configuration": {"layers": layers}}]}
    return select_service(parse_config_data(config, "test"))


def body(name: str, uid: str, version: str, namespace: str = "ns", **status: Any) -> dict[str, Any]:
    digest = "sha256:" + format(abs(hash((namespace, name, version))), "x").rjust(64, "0")[:64]
    return {"metadata": {"namespace": namespace, "name": name},
            "status": {"uid": uid, "version": version, "digest": digest, "diffId": digest, "size": 10,
                       "ref": f"127.0.0.1:5000/aos/{namespace}/layers/{uid}:{version}@{digest}", **status}}


def book(*bodies: dict[str, Any]) -> LayerBook:
    result = LayerBook()
    views = {}
    for item in bodies:
        found = LayerView.from_body(item)
        if found is not None:
            views[(found.namespace, found.name)] = found
    result.remember(views)
    return result


def test_the_newest_version_in_range_of_the_same_namespace_is_chosen_in_the_configs_order() -> None:
    layers = book(body("py-1", "pylibs", "1.0.0"), body("py-1-9", "pylibs", "1.9.0"), body("py-2", "pylibs", "2.0.0"),
                  body("py-other", "pylibs", "1.9.5", namespace="other"), body("fonts", "fonts", "0.1.0"))
    wanted = service([{"uid": "pylibs", "minVersion": "1.0.0", "maxVersion": "2.0.0"}, "fonts"])
    resolved = layers.resolve("ns", wanted)
    assert [(view.name, view.version) for view in resolved] == [("py-1-9", "1.9.0"), ("fonts", "0.1.0")]


def test_a_missing_uid_or_range_is_layer_not_found_naming_uid_range_and_what_exists() -> None:
    layers = book(body("py-2", "pylibs", "2.0.0"))
    with pytest.raises(LayerNotFound) as caught:
        layers.resolve("ns", service([{"uid": "pylibs", "minVersion": "1.0.0", "maxVersion": "2.0.0"}]))
    assert "layer 'pylibs' >=1.0.0 <2.0.0" in caught.value.message and "found: 2.0.0 (py-2)" in caught.value.message
    with pytest.raises(LayerNotFound, match="'fonts' any version.*none has this uid"):
        layers.resolve("ns", service(["fonts"]))


def test_a_layer_not_pushed_yet_or_being_deleted_is_not_a_candidate() -> None:
    unpushed = {"metadata": {"namespace": "ns", "name": "new"}, "status": {"conditions": []}}
    deleting = body("gone", "pylibs", "1.5.0")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    layers = book(unpushed, deleting)
    with pytest.raises(LayerNotFound):
        layers.resolve("ns", service(["pylibs"]))


def test_events_report_the_uids_whose_pushed_versions_changed_and_users_are_tracked() -> None:
    layers = LayerBook()
    layers.use("ns", "app", ["pylibs"])
    layers.use("ns", "web", ["pylibs", "fonts"])
    assert layers.update("ns", "py-1", body("py-1", "pylibs", "1.0.0")) == {"pylibs"}
    assert layers.update("ns", "py-1", body("py-1", "pylibs", "1.0.0")) == set(), "the same push again: no wake-up"
    assert layers.users_of("ns", "pylibs") == {"app", "web"}
    layers.use("ns", "web", ["fonts"])
    assert layers.users_of("ns", "pylibs") == {"app"}
    assert layers.update("ns", "py-1", None) == {"pylibs"}
