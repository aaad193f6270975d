"""Validation of Kubernetes objects in tests: built-in kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), custom resources against the openAPIV3Schema of their CRD."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

# The oldest Kubernetes minor the chart promises (Chart.yaml kubeVersion >= 1.27) that has every
# API the chart can render (admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy is GA in 1.30).
KUBERNETES_VERSION = "1.30"


def _duration() -> dict[str, Any]:
    return {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}


# The Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), written here for the fields
# the chart renders, after the prometheus-operator API reference (its own CRD is not vendored):
# unknown fields in these objects are refused, so a misspelt key fails.
_STRINGS = {"type": "array", "items": {"type": "string"}}
SERVICE_MONITOR_CRD: dict[str, Any] = {
    "spec": {"group": "monitoring.coreos.com", "names": {"kind": "ServiceMonitor"}, "versions": [{"name": "v1", "schema": {
        "openAPIV3Schema": {"type": "object", "required": ["spec"], "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
            "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": _STRINGS}},
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "matchExpressions": {"type": "array"}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                        "interval": _duration(), "scrapeTimeout": _duration(),
                        "relabelings": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False, "properties": {
                                "sourceLabels": _STRINGS, "targetLabel": {"type": "string"},
                                "regex": {"type": "string"}, "replacement": {"type": "string"},
                                "action": {"type": "string"}}}}}}},
            }},
        }}}}]},
}


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


class CustomResourceSchemas:
    """openAPIV3Schema validators of the CRDs seen so far, by (group, version, kind)."""

    def __init__(self, crds: Iterable[dict[str, Any]] = ()) -> None:
        self._validators: dict[tuple[str, str, str], jsonschema.Draft7Validator] = {}
        for crd in crds:
            self.add(crd)

    def add(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (spec["group"], version["name"], spec["names"]["kind"])
            self._validators[key] = jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])

    def validator(self, obj: dict[str, Any]) -> jsonschema.Draft7Validator | None:
        group, _, version = obj["apiVersion"].rpartition("/")
        return self._validators.get((group, version, obj["kind"]))


def validation_errors(obj: dict[str, Any], custom: CustomResourceSchemas) -> list[str]:
    """Why the API server would reject the object's shape; empty when it would accept it."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    validator = custom.validator(obj)
    if validator is not None:
        return [f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: no schema for {obj['apiVersion']} {obj['kind']} (not a Kubernetes {KUBERNETES_VERSION} kind, no CRD)"]
    return []
