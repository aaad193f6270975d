"""The example AosServices: valid for the API server (CRD and Kubernetes schemas, CEL rules), valid
configs for the project's own validator, and in sync with the example service directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from aos_operator.service import parse_config_data
from tests.conftest import EXAMPLES, REPO
from tests.kubernetes_objects import CustomResourceSchemas, load_documents, validation_errors

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
CONFIGMAP_EXAMPLE = EXAMPLES / "hello-world-configmap.yaml"
IMAGE_EXAMPLE = EXAMPLES / "hello-world-image.yaml"


def crd_schemas() -> CustomResourceSchemas:
    return CustomResourceSchemas(load_documents(path)[0] for path in sorted((REPO / "crds").glob("*.yaml")))


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in load_documents(path)}


def test_both_example_kinds_exist() -> None:
    assert {CONFIGMAP_EXAMPLE, IMAGE_EXAMPLE} <= set(EXAMPLE_FILES)
    assert "configMaps" in by_kind(CONFIGMAP_EXAMPLE)["AosService"]["spec"]["source"]
    assert "reference" in by_kind(IMAGE_EXAMPLE)["AosService"]["spec"]["source"]["image"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_objects_validate_against_their_schemas(path: Path) -> None:
    custom = crd_schemas()
    documents = load_documents(path)
    assert documents
    assert [error for document in documents for error in validation_errors(document, custom)] == []


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_objects_pass_the_crd_cel_rules(path: Path) -> None:
    crd = load_documents(REPO / "crds" / "aosedge.io_aosservices.yaml")[0]
    source_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["source"]
    rules = source_schema["x-kubernetes-validations"]
    environment = celpy.Environment()
    for document in load_documents(path):
        if document["kind"] != "AosService":
            continue
        source = celpy.json_to_cel(document["spec"]["source"])
        for rule in rules:
            program = environment.program(environment.compile(rule["rule"]))
            assert program.evaluate({"self": source}), rule["message"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_configs_are_valid_services(path: Path) -> None:
    for document in load_documents(path):
        if document["kind"] == "AosService":
            result = parse_config_data(document["spec"]["config"], f"{path.name}: spec.config")
            assert result.errors == [], [issue.__dict__ for issue in result.errors]
            assert len(result.services) == 1


def test_configmap_example_is_the_hello_world_directory() -> None:
    objects = by_kind(CONFIGMAP_EXAMPLE)
    config_map, service = objects["ConfigMap"], objects["AosService"]
    config = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())
    assert service["spec"]["config"] == config, "spec.config differs from examples/hello-world/meta/config.yaml"
    (source,) = service["spec"]["source"]["configMaps"]
    assert source["name"] == config_map["metadata"]["name"]
    files = {item["path"]: config_map["data"][item["key"]] for item in source["items"]}
    source_tree = EXAMPLES / "hello-world" / "src"
    on_disk = {str(file.relative_to(source_tree)): file.read_text() for file in source_tree.rglob("*") if file.is_file()}
    assert files == on_disk, "the ConfigMap's files differ from examples/hello-world/src"
    modes = {item["path"]: item.get("mode") for item in source["items"]}
    assert modes == {"usr/bin/services/hello_world.py": 0o755, "etc/hello.cfg": None}


def test_examples_select_the_edge_nodes_the_chart_runs_agents_on() -> None:
    chart_values = yaml.safe_load((REPO / "charts" / "aos-operator" / "values.yaml").read_text())
    for path in EXAMPLE_FILES:
        if "AosService" not in by_kind(path):
            continue  # a layer
        service = by_kind(path)["AosService"]
        assert service["spec"]["selector"]["matchLabels"] == chart_values["agent"]["nodeSelector"], path.name


def test_the_image_example_is_a_different_service() -> None:
    """Two examples in one namespace must not share identities (instance IDs, cgroups)."""
    configmap_service = parse_config_data(by_kind(CONFIGMAP_EXAMPLE)["AosService"]["spec"]["config"], "a").services[0]
    image_service = parse_config_data(by_kind(IMAGE_EXAMPLE)["AosService"]["spec"]["config"], "b").services[0]
    assert (configmap_service.name, configmap_service.service_id) != (image_service.name, image_service.service_id)
    assert by_kind(CONFIGMAP_EXAMPLE)["AosService"]["metadata"]["name"] != by_kind(IMAGE_EXAMPLE)["AosService"]["metadata"]["name"]


def test_the_layer_example_is_the_pylibs_layer_directory() -> None:
    from aos_operator.service.layers import load_layer_dir

    objects = by_kind(EXAMPLES / "pylibs-layer.yaml")
    config_map, layer = objects["ConfigMap"], objects["AosLayer"]
    meta = load_layer_dir(EXAMPLES / "pylibs-layer")
    assert (layer["spec"]["uid"], layer["spec"]["version"]) == (meta.uid, meta.version)
    (source,) = layer["spec"]["source"]["configMaps"]
    assert source["name"] == config_map["metadata"]["name"]
    files = {item["path"]: config_map["data"][item["key"]] for item in source["items"]}
    on_disk = {str(file.relative_to(meta.source)): file.read_text() for file in meta.source.rglob("*") if file.is_file()}
    assert files == on_disk, "the ConfigMap's files differ from examples/pylibs-layer/src"
