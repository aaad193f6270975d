"""Field types shared by the config.yaml models.

Schema version 1 is checked by aos-signer with JSON Schema, whose types are strict: a quoted
"5" is not an integer, 5.0 is. The `J*` types reproduce that in pydantic. Schema version 2 is
checked by aos-signer with pydantic's own lax types, which the v2 models use directly.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, Strict, WithJsonSchema

from aos_operator.service import units


def _json_integer(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer; bool is never one.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _value_error(parser: Any, *, empty_is_absent: bool = False, **kwargs: Any) -> Any:
    def check(value: Any) -> Any:
        if not (empty_is_absent and value == ""):
            parser(value, **kwargs)
        return value

    return check


JStr = Annotated[str, Strict()]
JInt = Annotated[int, Strict(), BeforeValidator(_json_integer)]
JBool = Annotated[bool, Strict()]


def bounded_str(max_length: int) -> Any:
    return Annotated[str, Strict(), Field(max_length=max_length)]


def bounded_int(minimum: int | None = None, maximum: int | None = None) -> Any:
    return Annotated[int, Strict(), BeforeValidator(_json_integer), Field(ge=minimum, le=maximum)]


Str255 = bounded_str(255)
Str10000 = bounded_str(10000)

# Sizes and speeds keep their text in the model; the description converts them.
V1Size = Annotated[
    str,
    Strict(),
    AfterValidator(_value_error(units.parse_size, dialect=1, empty_is_absent=True)),
    WithJsonSchema({"type": "string", "pattern": units.V1_SIZE_PATTERN, "examples": ["100M", "64KB", "1GB"]}),
]
V1Speed = Annotated[
    str,
    Strict(),
    AfterValidator(_value_error(units.parse_speed, dialect=1, empty_is_absent=True)),
    WithJsonSchema({"type": "string", "pattern": units.V1_SPEED_PATTERN, "examples": ["32Kb", "128KB", "1M"]}),
]
V2Size = Annotated[
    int | str,
    AfterValidator(_value_error(units.parse_size, dialect=2, empty_is_absent=True)),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}], "examples": [1024, "512MiB", "100M"]}
    ),
]
V2Speed = Annotated[
    int | str,
    AfterValidator(_value_error(units.parse_speed, dialect=2, empty_is_absent=True)),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}], "examples": ["10K", "1Mb"]}),
]


def _iso_duration(value: str) -> str:
    if value:  # aos-signer skips the check for an empty string
        units.parse_iso_duration(value)
    return value


IsoDuration = Annotated[
    str,
    Strict(),
    AfterValidator(_iso_duration),
    WithJsonSchema({"type": "string", "format": "duration", "examples": ["PT10S", "PT1M", "P1DT3H"]}),
]

SemVerText = Annotated[
    str,
    AfterValidator(_value_error(units.parse_semver)),
    WithJsonSchema({"type": "string", "examples": ["1.0.0", "1.2.0-rc.1"]}),
]

DeviceMode = Annotated[
    str,
    Strict(),
    AfterValidator(units.parse_device_mode),
    WithJsonSchema({"type": "string", "pattern": "^[rwm]{1,3}$", "examples": ["r", "rw", "rwm"]}),
]

RUNNERS = ("runc", "crun", "runx", "xrun")
