"""The AosLayer resource on the real kube-apiserver: the CRD's schema refuses a bad uid and a source
with both kinds, kubectl shows its columns, the chart's operator identity may read AosLayers and
write their status, the agents' identity may not touch them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from aos_operator.api.models import GROUP, VERSION
from tests.cluster.install import Installation, install
from tools.cluster import ApiError, ControlPlane

NAMESPACE = "apps"


@pytest.fixture(scope="module")
def installation() -> Iterator[Installation]:
    with ControlPlane(controller_manager=False) as plane:
        installed = install(plane)
        plane.ensure_namespace(NAMESPACE)
        plane.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-a"}})
        yield installed


def layer(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosLayer", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"uid": "pylibs", "version": "1.0.0", "source": {"configMaps": [{"name": "files"}]}, **spec}}


def custom(kubeconfig: Path) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))


def test_the_schema_refuses_a_bad_uid_and_two_sources(installation: Installation) -> None:
    plane = installation.plane
    with pytest.raises(ApiError) as caught:
        plane.create(layer("bad-uid", uid="../etc"))
    assert caught.value.status == 422 and "uid" in str(caught.value)
    with pytest.raises(ApiError) as caught:
        plane.create(layer("two", source={"configMaps": [{"name": "x"}], "image": {"reference": "r.example/a:1"}}))
    assert caught.value.status == 422 and "set either configMaps or image, not both" in str(caught.value)


def test_kubectl_shows_the_columns_and_the_short_name(installation: Installation) -> None:
    installation.plane.create(layer("pylibs-1"))
    kubectl = Path(sys.executable).parent / "kubectl"
    result = subprocess.run([str(kubectl), f"--kubeconfig={installation.plane.admin_kubeconfig}", "get", "-n", NAMESPACE,
                             "aoslyr", "pylibs-1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "UID", "VERSION", "DIGEST", "SIZE", "STATUS", "AGE"]
    assert row.split()[:3] == ["pylibs-1", "pylibs", "1.0.0"]


def test_the_operator_reads_layers_and_writes_their_status_the_agent_cannot(installation: Installation) -> None:
    installation.plane.create(layer("pylibs-2", version="1.1.0"))
    operator = custom(installation.operator_kubeconfig())
    listed = operator.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "aoslayers")
    assert {item["metadata"]["name"] for item in listed["items"]} >= {"pylibs-2"}
    patched = operator.patch_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, "aoslayers", "pylibs-2",
                                                             {"status": {"digest": "sha256:" + "ab" * 32, "size": 3}})
    assert patched["status"]["size"] == 3
    agent = custom(installation.agent_kubeconfig("edge-a"))
    for call in (lambda: agent.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "aoslayers"),
                 lambda: agent.patch_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, "aoslayers", "pylibs-2",
                                                                     {"status": {"size": 4}})):
        with pytest.raises(client.ApiException) as caught:
            call()
        assert caught.value.status == 403
