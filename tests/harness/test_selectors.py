"""Label and field selector parsing and matching (pure)."""

from __future__ import annotations

import pytest

from tests.harness.selectors import SelectorError, object_matcher, parse_field_selector, parse_label_selector

OBJ = {"metadata": {"name": "n1", "namespace": "ns1", "labels": {"app": "web", "tier": "front", "aosedge.io/device": "dev-1"}},
       "spec": {"device": "dev-1"}}


def matches(labels: str = "", fields: str = "", supported: tuple[str, ...] = ("metadata.name", "metadata.namespace")) -> bool:
    return object_matcher(parse_label_selector(labels), parse_field_selector(fields, supported))(OBJ)


@pytest.mark.parametrize(("selector", "expected"), [
    ("", True),
    ("app=web", True), ("app==web", True), ("app=db", False),
    ("app!=db", True), ("app!=web", False), ("missing!=x", True),
    ("app in (web, db)", True), ("app in (db)", False),
    ("app notin (db)", True), ("app notin (web,db)", False), ("missing notin (x)", True),
    ("app", True), ("missing", False), ("!missing", True), ("!app", False),
    ("aosedge.io/device=dev-1", True), ("aosedge.io/device=dev-2", False),
    ("app=web,tier in (front,back),!missing", True), ("app=web,tier=back", False),
])
def test_label_selector_operators(selector: str, expected: bool) -> None:
    assert matches(labels=selector) is expected


@pytest.mark.parametrize(("selector", "expected"), [
    ("metadata.name=n1", True), ("metadata.name==n1", True), ("metadata.name=n2", False),
    ("metadata.name!=n2", True), ("metadata.namespace=ns1,metadata.name=n1", True),
    ("metadata.namespace=ns2", False),
])
def test_field_selector_on_metadata(selector: str, expected: bool) -> None:
    assert matches(fields=selector) is expected


def test_field_selector_on_declared_field() -> None:
    assert matches(fields="spec.device=dev-1", supported=("spec.device",))
    assert not matches(fields="spec.device=dev-2", supported=("spec.device",))


@pytest.mark.parametrize("selector", ["app in (web", "app in ()", "=web", "app=(x)", "a b c"])
def test_bad_label_selectors_are_rejected(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_unsupported_field_is_rejected_with_the_supported_list() -> None:
    with pytest.raises(SelectorError, match="spec.nodeName.*metadata.name"):
        parse_field_selector("spec.nodeName=x", ("metadata.name",))
