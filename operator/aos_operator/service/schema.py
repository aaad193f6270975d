"""JSON Schema of config.yaml (both dialects) for editors: completion, hover text, checks."""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import models_json_schema

from aos_operator.bounded import parse_json
from aos_operator.service.config_v1 import ConfigV1
from aos_operator.service.config_v2 import ConfigV2

SCHEMA_ID = "https://aosedge.io/schemas/service-config.json"


def _short_names(value: Any) -> Any:
    """Models of the same name in both dialects get module-qualified names; shorten them."""
    text = json.dumps(value, default=str)
    for module, prefix in (("config_v1", "V1"), ("config_v2", "V2")):
        text = text.replace(f"aos_operator__service__{module}__", prefix)
    return parse_json(text)


def config_json_schema() -> dict[str, Any]:
    refs, schema = models_json_schema([(ConfigV1, "validation"), (ConfigV2, "validation")], by_alias=True)
    schema = _short_names(schema)
    v1_ref = _short_names(refs[(ConfigV1, "validation")]["$ref"])
    v2_ref = _short_names(refs[(ConfigV2, "validation")]["$ref"])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "AosEdge service config.yaml",
        "description": "Schema version 1 has no schemaVersion key (publisher, build, publish, configuration); "
        "schema version 2 has schemaVersion: 2 and a list of items.",
        # The same rule as loader.detect_dialect.
        "if": {
            "type": "object",
            "anyOf": [
                {"required": ["schemaVersion"]},
                {
                    "required": ["items"],
                    "not": {"anyOf": [{"required": [key]} for key in ("build", "publish", "configuration")]},
                },
            ],
        },
        "then": {"$ref": v2_ref},
        "else": {"$ref": v1_ref},
        "$defs": schema["$defs"],
    }
