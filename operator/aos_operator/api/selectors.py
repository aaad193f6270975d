"""Label selectors: matching labels against a LabelSelector, and the query-string form for the API."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from aos_operator.api.models import LabelSelector


def matches(selector: LabelSelector | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes semantics: every matchLabels pair and every expression must hold; empty selects all."""
    labels = labels or {}
    if selector is None:
        return True
    for key, value in (selector.matchLabels or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.matchExpressions or []:
        present = requirement.key in labels
        values = set(requirement.values or [])
        if requirement.operator == "In" and not (present and labels[requirement.key] in values):
            return False
        if requirement.operator == "NotIn" and present and labels[requirement.key] in values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


def selector_key(selector: LabelSelector | None) -> Hashable:
    """A hashable form of a selector: equal for selectors that select the same way."""
    if selector is None:
        return None
    return (tuple(sorted((selector.matchLabels or {}).items())),
            tuple(sorted((r.key, r.operator, tuple(sorted(r.values or ()))) for r in selector.matchExpressions or ())))


def equality_selector(labels: Mapping[str, str]) -> str:
    """`{"a": "b", "c": "d"}` -> `a=b,c=d`, for labelSelector query parameters."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
