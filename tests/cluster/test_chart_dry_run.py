"""Every object the chart renders passes a server-side dry-run create (`dryRun=All`) on the real
kube-apiserver: its OpenAPI schemas, CRD structural schemas and admission check them, with the
default values and with tests/data/chart-all-values.yaml. Pods never run here (no kubelet).

CRDs are created for real after their dry run (the objects of their kinds need them), and so are
the namespaces the objects live in, as `helm install --create-namespace` and the user would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tools.chart_manifests import RELEASE_NAMESPACE, render
from tools.cluster import ApiError, ControlPlane

ALL_VALUES = yaml.safe_load((REPO / "tests" / "data" / "chart-all-values.yaml").read_text())


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with ControlPlane(controller_manager=False) as plane:
        yield plane


def dry_run_all(plane: ControlPlane, values: dict[str, Any]) -> list[str]:
    """Dry-run create every rendered object in install order; the names of those checked."""
    documents = render(values)
    checked = []
    for document in documents:
        obj = document.obj
        namespace = obj.get("metadata", {}).get("namespace")
        if namespace:
            plane.ensure_namespace(namespace)
        where = f"{document.source}: {obj['kind']} {obj['metadata']['name']}"
        try:
            if obj["kind"] == "CustomResourceDefinition":
                exists = _exists(plane, obj)
                (plane.apply if exists else plane.create)(obj, dry_run=True)
                if not exists:
                    plane.create(obj)
                    plane.wait_established([obj["metadata"]["name"]])
            else:
                if obj.get("metadata", {}).get("namespace") is None and _namespaced(plane, obj):
                    obj = {**obj, "metadata": {**obj["metadata"], "namespace": RELEASE_NAMESPACE}}
                    plane.ensure_namespace(RELEASE_NAMESPACE)
                answer = plane.create(obj, dry_run=True)
                assert answer["metadata"]["name"] == obj["metadata"]["name"]
                assert "uid" in answer["metadata"], "the server ran the whole create path"
        except ApiError as error:
            raise AssertionError(f"{where}: the server refused it: {error}") from None
        checked.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return checked


def _exists(plane: ControlPlane, obj: dict[str, Any]) -> bool:
    try:
        plane.request("GET", plane.object_path(obj))
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def _namespaced(plane: ControlPlane, obj: dict[str, Any]) -> bool:
    return "/namespaces/" in plane.object_path({**obj, "metadata": {**obj["metadata"], "namespace": "x"}})


def test_default_values_pass_a_server_dry_run(plane: ControlPlane) -> None:
    checked = dry_run_all(plane, {})
    kinds = {name.split("/")[0] for name in checked}
    assert {"CustomResourceDefinition", "Deployment", "DaemonSet", "ClusterRole", "ServiceAccount"} <= kinds


def test_all_values_pass_a_server_dry_run(plane: ControlPlane) -> None:
    # operator.peering.installCRDs is false there: kopf's peering CRDs are the user's, installed
    # beforehand; take them from the chart's own option.
    kopf_crds = [d.obj for d in render({"operator": {"peering": {"enabled": True, "installCRDs": True}}})
                 if d.obj["kind"] == "CustomResourceDefinition" and d.obj["spec"]["group"] == "kopf.dev"]
    assert len(kopf_crds) == 2
    for crd in kopf_crds:
        if not _exists(plane, crd):
            plane.create(crd)
    plane.wait_established([crd["metadata"]["name"] for crd in kopf_crds])
    checked = dry_run_all(plane, ALL_VALUES)
    kinds = {name.split("/")[0] for name in checked}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Role", "RoleBinding", "KopfPeering"} <= kinds


def test_a_broken_object_is_refused_by_the_dry_run(plane: ControlPlane) -> None:
    """The check can fail: a field the real schema refuses is reported with the object's source."""
    documents = render({})
    deployment = next(d.obj for d in documents if d.obj["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    plane.ensure_namespace(broken["metadata"]["namespace"])
    with pytest.raises(ApiError) as refused:
        plane.create(broken, dry_run=True)
    assert refused.value.status in (400, 422)
