"""Kubernetes label and field selectors: parse the query-string forms and match objects."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A label key: an optional DNS-subdomain prefix and a name; values are the same alphabet.
_KEY = r"(?:[A-Za-z0-9.\-]+/)?[A-Za-z0-9]?[A-Za-z0-9_.\-]*"
_VALUE = r"[A-Za-z0-9_.\-]*"
_SET_TERM = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQUALITY_TERM = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*({_VALUE})\s*$")
_EXISTS_TERM = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


class SelectorError(ValueError):
    """A selector string that the API server would reject with 400 Bad Request."""


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: `key op values`."""

    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" also match objects that lack the key, as on a real server.
        return not present or value not in self.values


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside an `in (...)` value list."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in selector {text!r}")
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise SelectorError(f"unbalanced '(' in selector {text!r}")
    terms.append("".join(current))
    return [term for term in terms if term.strip()]


def _require_key(key: str, term: str) -> None:
    if not key or key.endswith("/"):
        raise SelectorError(f"invalid selector term {term.strip()!r}: a label key is required")


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h`; an empty selector matches everything."""
    if not text or not text.strip():
        return ()
    requirements: list[Requirement] = []
    for term in _split_terms(text):
        if match := _SET_TERM.match(term):
            key, operator, raw_values = match.groups()
            _require_key(key, term)
            values = frozenset(value.strip() for value in raw_values.split(",") if value.strip())
            if not values:
                raise SelectorError(f"empty value list in selector term {term.strip()!r}")
            requirements.append(Requirement(key, operator, values))
        elif match := _EQUALITY_TERM.match(term):
            key, operator, value = match.groups()
            _require_key(key, term)
            operator = "=" if operator == "==" else operator
            requirements.append(Requirement(key, operator, frozenset([value])))
        elif match := _EXISTS_TERM.match(term):
            negation, key = match.groups()
            _require_key(key, term)
            requirements.append(Requirement(key, "!exists" if negation else "exists"))
        else:
            raise SelectorError(f"invalid selector term {term.strip()!r}")
    return tuple(requirements)


def parse_field_selector(text: str | None, supported_fields: Iterable[str]) -> tuple[Requirement, ...]:
    """Parse `metadata.name=x,metadata.namespace!=y`; only `supported_fields` are accepted."""
    if not text or not text.strip():
        return ()
    supported = set(supported_fields)
    requirements: list[Requirement] = []
    for term in text.split(","):
        match = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not match:
            raise SelectorError(f"invalid field selector term {term.strip()!r}")
        field_path, operator, value = match.groups()
        if field_path not in supported:
            raise SelectorError(
                f'field label not supported: {field_path} (supported: {", ".join(sorted(supported))})'
            )
        operator = "=" if operator == "==" else operator
        requirements.append(Requirement(field_path, operator, frozenset([value])))
    return tuple(requirements)


def field_value(obj: Mapping[str, Any], dotted_path: str) -> str | None:
    """Read a dotted path such as `spec.device` from an object, as a string (or None)."""
    value: Any = obj
    for part in dotted_path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if value is None or isinstance(value, (Mapping, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def object_matcher(
    labels: tuple[Requirement, ...], fields: tuple[Requirement, ...]
) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over whole objects for a parsed label and field selector."""

    def matches(obj: Mapping[str, Any]) -> bool:
        object_labels = (obj.get("metadata") or {}).get("labels") or {}
        if not all(requirement.matches(object_labels) for requirement in labels):
            return False
        for requirement in fields:
            value = field_value(obj, requirement.key)
            # A missing field compares as the empty string, as the API server's field sets do.
            present = {requirement.key: value if value is not None else ""}
            if not requirement.matches(present):
                return False
        return True

    return matches
