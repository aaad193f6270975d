"""Which Aos layer versions a service's `layers` entry accepts, and the layer.yaml of a local layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from aos_operator.errors import InputError
from aos_operator.service.description import LayerRequirement
from aos_operator.service.layers import describe_range, in_range, load_layer_dir, newest_in_range


def test_the_range_includes_min_and_excludes_max() -> None:
    requirement = LayerRequirement(uid="lib", min_version="1.0.0", max_version="2.0.0")
    assert in_range(requirement, "1.0.0")
    assert in_range(requirement, "1.9.9")
    assert not in_range(requirement, "2.0.0")
    assert not in_range(requirement, "0.9.0")
    assert in_range(requirement, "2.0.0-rc.1")  # a pre-release of 2.0.0 sorts below it
    assert describe_range(requirement) == ">=1.0.0 <2.0.0"


def test_equal_bounds_pin_one_version() -> None:
    requirement = LayerRequirement(uid="lib", min_version="1.2.0", max_version="1.2.0")
    assert in_range(requirement, "1.2.0")
    assert not in_range(requirement, "1.2.1")
    assert describe_range(requirement) == "=1.2.0"


def test_a_legacy_string_entry_accepts_any_version() -> None:
    requirement = LayerRequirement(uid="aos-pylibs-layer")
    assert in_range(requirement, "0.0.1") and in_range(requirement, "99.0.0")
    assert describe_range(requirement) == "any version"


def test_the_newest_version_in_range_wins_by_semver_precedence() -> None:
    requirement = LayerRequirement(uid="lib", min_version="1.0.0", max_version="2.0.0")
    candidates = [("1.2.0", "a"), ("1.10.0", "b"), ("2.0.0", "c"), ("1.10.0-rc.1", "d"), ("bad", "e")]
    assert newest_in_range(requirement, candidates) == ("1.10.0", "b")
    assert newest_in_range(requirement, [("2.1.0", "x"), ("0.1.0", "y")]) is None
    only_min = LayerRequirement(uid="lib", min_version="1.5.0")
    assert newest_in_range(only_min, candidates) == ("2.0.0", "c")


def _layer_dir(root: Path, text: str) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "layer.yaml").write_text(text)
    return root


def test_layer_yaml_names_uid_and_version(tmp_path: Path) -> None:
    meta = load_layer_dir(_layer_dir(tmp_path / "ok", "uid: pylibs\nversion: 1.2.0\n"))
    assert (meta.uid, meta.version, meta.source) == ("pylibs", "1.2.0", tmp_path / "ok" / "src")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uid: pylibs\n", "version is missing"),
        ("uid: pylibs\nversion: '1.2'\n", "layer.yaml:2: version"),
        ("uid: ../x\nversion: 1.0.0\n", "layer.yaml:1: uid"),
        ("uid: pylibs\nversion: 1.0.0\nextra: 1\n", "layer.yaml:3: unknown key 'extra'"),
        ("- a\n", "expected a mapping"),
    ],
)
def test_a_bad_layer_yaml_is_refused_with_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_layer_dir(_layer_dir(tmp_path / "bad", text))


def test_a_directory_without_layer_yaml_is_not_a_layer(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no layer.yaml"):
        load_layer_dir(tmp_path)
