"""Turns pydantic validation errors into issues that say what is wrong and what is allowed."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from aos_operator.errors import MAX_ECHO, shorten
from aos_operator.service.report import Reporter
from aos_operator.service.yamlfile import Timestamp

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "uuid_type": "a UUID",
    "uuid_parsing": "a UUID",
    "time_delta_type": "an ISO 8601 duration such as PT10S",
    "time_delta_parsing": "an ISO 8601 duration such as PT10S",
}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {shorten(value, 40)!r}"
    if isinstance(value, Timestamp):
        return f"the date {value.text} (quote it to make it a string)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _real_path(data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """Keep the loc segments that exist in the data; the others name union branches."""
    path: list[Any] = []
    through_union = False
    current = data
    for segment in loc:
        if isinstance(current, dict) and segment in current:
            path.append(segment)
            current = current[segment]
        elif isinstance(current, list) and isinstance(segment, int) and 0 <= segment < len(current):
            path.append(segment)
            current = current[segment]
        elif isinstance(current, dict) and isinstance(segment, str) and segment.isidentifier() and not path_is_branch(segment):
            # A missing or unknown key below an existing mapping.
            path.append(segment)
            current = None
        else:
            through_union = True
    return tuple(path), through_union


def path_is_branch(segment: str) -> bool:
    """Union branch labels pydantic puts in loc: `str`, `int`, `list[str]`, `function-after[...]`, model names."""
    return segment in {"str", "int", "float", "bool", "dict", "list", "none"} or segment[:1].isupper()


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that validates the mapping found at `path`."""
    current: Any = model
    for segment in path:
        current = _unwrap_to_model(current, segment)
        if current is None:
            return None
    for candidate in _candidates(current):  # `Quotas | None` is the model Quotas
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _candidates(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _candidates(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[Any] = []
        for arg in typing.get_args(annotation):
            found.extend(_candidates(arg))
        return found
    return [annotation]


def _unwrap_to_model(current: Any, segment: Any) -> Any:
    for candidate in _candidates(current):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and isinstance(segment, str):
            for name, info in candidate.model_fields.items():
                if (info.alias or name) == segment:
                    return info.annotation
        origin = typing.get_origin(candidate)
        if origin is list and isinstance(segment, int):
            return typing.get_args(candidate)[0]
        if origin is dict and isinstance(segment, str):
            return typing.get_args(candidate)[1]
    return None


# Words people write for a key of another name (version 1's short quota names).
_SYNONYMS = {"ram": "mem", "memory": "mem", "tmp": "temp", "disk": "storage"}


def allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _message(error: dict[str, Any], value: Any, root_model: type[BaseModel], path: tuple[Any, ...]) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parent = _model_at(root_model, path[:-1])
        allowed = allowed_keys(parent) if parent else []
        key = str(path[-1]) if path else ""
        # a near miss is a typo of a short key; comparing a huge key would only cost time
        close = difflib.get_close_matches(key, allowed, n=1) if len(key) <= MAX_ECHO else []
        if not close and _SYNONYMS.get(key.lower()) in allowed:
            close = [_SYNONYMS[key.lower()]]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
    if kind in _TYPE_NAMES:
        hint = ""
        if kind.startswith("int") and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            hint = " (write the number without quotes)"
        elif kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
            hint = " (put the value in quotes)"
        return f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}{hint}"
    if kind == "literal_error":
        return f"{_describe(value)} is not allowed; use one of {context.get('expected', '')}"
    if kind == "string_too_long":
        return f"longer than {context.get('max_length')} characters"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{_describe(value)} is too small; the minimum is {context.get('ge', context.get('gt'))}"
    if kind in ("less_than_equal", "less_than"):
        return f"{_describe(value)} is too large; the maximum is {context.get('le', context.get('lt'))}"
    if kind == "too_short":
        count = context.get("min_length")
        return f"needs at least {count} {'entry' if count == 1 else 'entries'}"
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return shorten(str(error["msg"]), 200)


def _value_at(data: Any, path: tuple[Any, ...]) -> Any:
    for segment in path:
        if isinstance(data, dict):
            data = data.get(segment)
        elif isinstance(data, list) and isinstance(segment, int) and segment < len(data):
            data = data[segment]
        else:
            return None
    return data


def report_validation_error(
    error: ValidationError, data: Any, root_model: type[BaseModel], reporter: Reporter, prefix: tuple[Any, ...] = ()
) -> None:
    """Add one issue per problem; errors of several union branches at one place become one."""
    located = [(item, *_real_path(data, tuple(item["loc"]))) for item in error.errors()]
    union_paths = [path for _, path, through_union in located if through_union]
    grouped: dict[tuple[Any, ...], list[tuple[dict[str, Any], bool]]] = {}
    for item, path, through_union in located:
        # A union branch that got further into the value explains the problem better than a
        # branch that rejected the value's type outright.
        deeper = any(len(other) > len(path) and other[: len(path)] == path for other in union_paths)
        if through_union and deeper and item["type"] in _TYPE_NAMES:
            continue
        grouped.setdefault(path, []).append((item, through_union))
    for path, items in grouped.items():
        value = _value_at(data, path)
        union_items = [item for item, through_union in items if through_union]
        plain_items = [item for item, through_union in items if not through_union]
        for item in plain_items:
            reporter.error(prefix + path, _message(item, value, root_model, path))
        if not union_items:
            continue
        specific = [item for item in union_items if item["type"] not in _TYPE_NAMES]
        if specific:
            reporter.error(prefix + path, _message(specific[0], value, root_model, path))
        else:
            expected = sorted({_TYPE_NAMES[item["type"]] for item in union_items})
            reporter.error(prefix + path, f"expected {' or '.join(expected)}, got {_describe(value)}")
