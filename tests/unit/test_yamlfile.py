"""YAML loading: YAML 1.2 core types (as aos-signer's ruamel.yaml reads them), lines, hostile input."""

from __future__ import annotations

import math

import pytest

from aos_operator.errors import InputError
from aos_operator.service.yamlfile import MAX_BYTES, Timestamp, decode, load_yaml_text


def load(text: str) -> object:
    document, issues = load_yaml_text(text, "config.yaml")
    assert not issues, issues
    return document.data


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("yes", "yes"),  # YAML 1.1 would say True
        ("no", "no"),
        ("on", "on"),
        ("off", "off"),
        ("~", None),
        ("null", None),
        ("", None),
        ("0o17", 15),
        ("0x1F", 31),
        ("1:30", "1:30"),  # YAML 1.1 would say 90
        ("1e3", 1000.0),
        (".5", 0.5),
        ("1.0", 1.0),
        ("'5'", "5"),
        ("!!str 5", "5"),
        ("1_000", 1000),  # ruamel.yaml reads these as aos-signer sees them
        ("0b101", 5),
        ("0755", 755),
    ],
)
def test_core_schema_scalars(text: str, value: object) -> None:
    assert load(f"key: {text}") == {"key": value}


def test_dates_are_not_strings() -> None:
    # ruamel.yaml makes them date objects, which fail where aos-signer expects a string
    assert load("a: 2024-01-01\nb: '2024-01-01'") == {"a": Timestamp("2024-01-01"), "b": "2024-01-01"}


def test_special_floats() -> None:
    data = load("a: .inf\nb: -.Inf\nc: .nan")
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])


def test_lines_are_recorded_for_keys_and_items() -> None:
    document, _ = load_yaml_text("a:\n  b: 1\n  c:\n    - x\n    - y\n", "f")
    assert document.line_of(("a", "b")) == 2
    assert document.line_of(("a", "c", 1)) == 5
    assert document.line_of(("a", "c", 7)) == 3  # falls back to the nearest ancestor


def test_anchors_aliases_and_merge_keys() -> None:
    data = load("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\nref: *b\n")
    assert data["other"] == {"x": 1, "y": 3}
    assert data["ref"] == {"x": 1, "y": 2}


def test_duplicate_keys_are_issues_with_both_lines() -> None:
    document, issues = load_yaml_text("a: 1\nb: 2\na: 3\n", "f")
    assert len(issues) == 1
    assert issues[0].line == 3 and issues[0].field == "a" and "line 1" in issues[0].message


def test_unknown_tags_are_issues() -> None:
    _, issues = load_yaml_text("a: !python/object:os.system ls\n", "f")
    assert issues and "unsupported tag" in issues[0].message


def test_alias_bomb_is_refused() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 9):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    with pytest.raises(InputError, match="expands to more than"):
        load_yaml_text("\n".join(lines), "bomb.yaml")


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    for text in ("a: &a {x: *a}\n", "a: &a [1, *a]\n", "a: &a {<<: *a}\n"):
        with pytest.raises(InputError, match=r"loop\.yaml:1: an alias refers to a list or mapping that contains it"):
            load_yaml_text(text, "loop.yaml")


def test_merge_key_bomb_is_refused() -> None:
    """Empty mappings merged ten at a time: no value to count, but every merge builds its source again."""
    lines = ["m0: &m0 {}"]
    for level in range(1, 9):
        lines.append(f"m{level}: &m{level} {{<<: [{', '.join([f'*m{level - 1}'] * 10)}]}}")
    with pytest.raises(InputError, match="expands to more than"):
        load_yaml_text("\n".join(lines), "merge-bomb.yaml")


def test_deep_nesting_is_refused_before_recursion() -> None:
    with pytest.raises(InputError, match="nest deeper"):
        load_yaml_text("[" * 5000 + "]" * 5000, "deep.yaml")
    with pytest.raises(InputError, match="nest deeper"):
        load_yaml_text("".join(f"{'  ' * level}k:\n" for level in range(100)), "deep.yaml")


@pytest.mark.parametrize(
    ("text", "line"),
    [("a: [1, 2\nb: 3\n", 2), ("a: b: c\n", 1), ("key: 'unterminated\n", 2), ("---\na: 1\n---\nb: 2\n", 3)],
)
def test_syntax_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(InputError, match=rf"^f:{line}: not valid YAML"):
        load_yaml_text(text, "f")


def test_decode_refuses_binary_and_bad_encodings() -> None:
    with pytest.raises(InputError, match="NUL"):
        decode(b"a: 1\n\x00\x01\x02", "f")
    with pytest.raises(InputError, match=r"f:2: the file is not valid UTF-8"):
        decode(b"a: 1\nb: \xff\xfe\n", "f")
    with pytest.raises(InputError, match="at most"):
        decode(b"#" * (MAX_BYTES + 1), "f")
    assert decode("\ufeffa: 1".encode(), "f") == "a: 1"


def test_control_characters_are_a_yaml_error() -> None:
    with pytest.raises(InputError, match="not valid YAML"):
        load_yaml_text("a: \x07bell\n", "f")
