"""CustomResourceDefinitions generated from the pydantic models in `api.models`.

Kubernetes wants structural OpenAPI v3 schemas: no `$ref`, no `anyOf` over types, `nullable`
instead of `null` types. The converter below turns pydantic's JSON Schema into that form.
`crds/` holds the generated YAML; a test fails when it drifts from the models.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from aos_operator.api.models import GROUP, KINDS, VERSION, Kind

_DROP = {"title", "examples", "default_factory"}


def _resolve(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        merged = {**copy.deepcopy(definitions[name]), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _resolve(merged, definitions)
    return schema


def structural(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Inline references and rewrite optional unions so the result is a structural schema."""
    schema = _resolve(schema, definitions)
    options = schema.get("anyOf")
    if options is not None:
        non_null = [option for option in options if option.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if {option.get("type") for option in non_null} == {"integer", "string"} and rest.get(
            "x-kubernetes-int-or-string"
        ):
            return {k: v for k, v in rest.items() if k not in _DROP}  # IntOrString, as in Deployments
        if len(non_null) == 1:
            # Optional[X]: an absent field is how Kubernetes says "unset", so no nullable needed.
            return structural({**_resolve(non_null[0], definitions), **rest}, definitions)
        raise ValueError(f"a union of several types is not structural: {options}")
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "properties":
            result[key] = {name: structural(child, definitions) for name, child in value.items()}
        elif key == "items":
            result[key] = structural(value, definitions)
        elif key == "additionalProperties" and isinstance(value, dict):
            result[key] = structural(value, definitions)
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields anyway
        elif key == "format" and value == "date-time":
            result[key] = value
        elif key == "default" and value is None:
            continue
        else:
            result[key] = value
    if result.get("x-kubernetes-preserve-unknown-fields"):
        result.setdefault("type", "object")
        result.pop("additionalProperties", None)
    if "properties" in result:
        result.setdefault("type", "object")
    return result


def _object_schema(model: Any) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return structural(schema, schema.get("$defs", {}))


def crd(kind: Kind) -> dict[str, Any]:
    spec_schema = _object_schema(kind.spec)
    status_schema = _object_schema(kind.status)
    required = ["spec"] if spec_schema.get("required") else []
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "aos-operator"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(column) for column in kind.printer_columns],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": kind.description,
                            "type": "object",
                            "required": required,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_file_name(kind: Kind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"


def render(kind: Kind) -> str:
    header = "# Generated by `aosctl crds` from operator/aos_operator/api/models.py; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = directory / crd_file_name(kind)
        path.write_text(render(kind))
        written.append(path)
    return written
