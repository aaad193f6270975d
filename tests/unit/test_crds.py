"""The committed CRDs match the models, are structural, and their schemas and CEL rules judge objects right."""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from aos_operator.api import crds
from aos_operator.api.models import KINDS
from tests.conftest import REPO

CRD_DIR = REPO / "crds"


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.kind)
def test_committed_crd_matches_the_models(kind: Any) -> None:
    committed = (CRD_DIR / crds.crd_file_name(kind)).read_text()
    assert committed == crds.render(kind), "crds/ drifted from api/models.py: run `make crds`"


def walk(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        found.append((path, schema))
        for key, value in schema.items():
            found.extend(walk(value, f"{path}/{key}"))
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            found.extend(walk(value, f"{path}/{index}"))
    return found


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.kind)
def test_schemas_are_structural_and_documented(kind: Any) -> None:
    document = crds.crd(kind)
    version = document["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "$defs" not in node, path
        if "properties" in node:
            assert node.get("type") == "object", path
            for name, child in node["properties"].items():
                if path.count("/properties/") >= 1 or name in ("spec", "status"):
                    assert ("type" in child or child.get("x-kubernetes-preserve-unknown-fields")
                            or child.get("x-kubernetes-int-or-string")), f"{path}/{name}"
    spec = schema["properties"]["spec"]
    assert all("description" in child for child in spec["properties"].values()), "kubectl explain needs descriptions"
    assert version["subresources"] == {"status": {}}
    assert document["spec"]["names"]["shortNames"]


def openapi_validator(kind: Any) -> jsonschema.Draft7Validator:
    schema = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def test_aos_service_accepts_configs_of_both_dialects() -> None:
    validator = openapi_validator(KINDS[0])
    for config_path in [REPO / "examples/hello-world/meta/config.yaml", *sorted((REPO / "tests/data/configs").glob("v*/valid/*.yaml"))]:
        obj = {
            "apiVersion": "aosedge.io/v1alpha1",
            "kind": "AosService",
            "metadata": {"name": "x"},
            "spec": {"config": yaml.safe_load(config_path.read_text()), "selector": {"matchLabels": {"a": "b"}}},
        }
        assert not list(validator.iter_errors(obj)), config_path


def test_aos_service_schema_rejects_wrong_shapes() -> None:
    validator = openapi_validator(KINDS[0])
    assert list(validator.iter_errors({"spec": {}}))  # config is required
    assert list(validator.iter_errors({"spec": {"config": {}, "selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}}))
    assert list(validator.iter_errors({"spec": {"config": {}, "instancesPerDevice": -1}}))


def cel_rules(kind: Any, *path: str) -> list[dict[str, str]]:
    node = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path:
        node = node["properties"][part]
    return node["x-kubernetes-validations"]


def evaluate(rule: str, new: Any, old: Any = None) -> bool:
    environment = celpy.Environment()
    program = environment.program(environment.compile(rule))
    activation = {"self": celpy.json_to_cel(new)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return bool(program.evaluate(activation))


def test_cel_source_is_configmaps_or_image_not_both() -> None:
    (rule,) = cel_rules(KINDS[0], "spec", "source")
    assert evaluate(rule["rule"], {"configMaps": [{"name": "a"}]})
    assert evaluate(rule["rule"], {"image": {"reference": "r@sha256:" + "0" * 64}})
    assert not evaluate(rule["rule"], {"configMaps": [{"name": "a"}], "image": {"reference": "r"}})


def test_cel_instance_identity_is_immutable() -> None:
    rules = cel_rules(KINDS[2], "spec")
    spec = {"service": "s", "device": "d1", "index": 0}
    assert all(evaluate(rule["rule"], spec, spec) for rule in rules)
    moved = {**spec, "device": "d2"}
    assert [rule["message"] for rule in rules if not evaluate(rule["rule"], moved, spec)] == ["device is immutable"]
