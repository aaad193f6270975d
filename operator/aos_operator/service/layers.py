"""Aos layers on the service side: which layer versions a service's `layers` entry accepts, the
newest one in range, and the `layer.yaml` that names a local layer directory's uid and version.

A range includes minVersion and excludes maxVersion, except that equal values pin that one
version (AosEdge's rule); a bound that is unset is open, so a legacy string entry accepts any
version. Versions are SemVer 2.0.0 and compare by SemVer precedence (build metadata ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aos_operator.bounded import read_limited
from aos_operator.errors import InputError
from aos_operator.service import units
from aos_operator.service.description import LayerRequirement
from aos_operator.service.yamlfile import decode, load_yaml_text

LAYER_FILE = "layer.yaml"
LAYER_SOURCE = "src"
MAX_LAYER_FILE_BYTES = 64 << 10
MAX_UID_LENGTH = 255  # as the service config's layers[].uid
# A uid becomes an annotation value and part of messages: printable, no path separators or spaces.
_UID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

T = TypeVar("T")


def check_uid(uid: object, where: str) -> str:
    if not isinstance(uid, str) or not uid:
        raise InputError(f"{where}: uid must be a non-empty string")
    if len(uid) > MAX_UID_LENGTH or not _UID_RE.fullmatch(uid):
        raise InputError(f"{where}: uid {uid[:80]!r} must be at most {MAX_UID_LENGTH} letters, digits, '.', '_', '-' "
                         "(not first)")
    return uid


def check_version(version: object, where: str) -> str:
    try:
        units.parse_semver(version)  # type: ignore[arg-type]
    except ValueError as error:
        raise InputError(f"{where}: version: {error}") from None
    return version  # type: ignore[return-value]


def _key(version: str) -> tuple:
    return units.parse_semver(version).sort_key()


def in_range(requirement: LayerRequirement, version: str) -> bool:
    """Whether `version` satisfies the requirement's [minVersion, maxVersion) range."""
    key = _key(version)
    low, high = requirement.min_version, requirement.max_version
    if low is not None and high is not None and _key(low) == _key(high):
        return key == _key(low)
    if low is not None and key < _key(low):
        return False
    return not (high is not None and key >= _key(high))


def describe_range(requirement: LayerRequirement) -> str:
    """The range in words for messages: `>=1.0.0 <2.0.0`, `=1.2.0`, `any version`."""
    low, high = requirement.min_version, requirement.max_version
    if low is not None and high is not None and _key(low) == _key(high):
        return f"={low}"
    parts = ([f">={low}"] if low else []) + ([f"<{high}"] if high else [])
    return " ".join(parts) or "any version"


def newest_in_range(requirement: LayerRequirement, candidates: Iterable[tuple[str, T]]) -> tuple[str, T] | None:
    """The (version, item) with the highest version in range, or None. Candidates with an
    invalid version are skipped (the caller reports them where they come from)."""
    best: tuple[tuple, str, T] | None = None
    for version, item in candidates:
        try:
            key = _key(version)
        except ValueError:
            continue
        if in_range(requirement, version) and (best is None or key > best[0]):
            best = (key, version, item)
    return None if best is None else (best[1], best[2])


@dataclass(frozen=True)
class LayerMeta:
    """What `layer.yaml` says about a local layer directory; its files are in `src/` beside it."""

    uid: str
    version: str
    source: Path


def load_layer_dir(directory: Path) -> LayerMeta:
    """Read DIR/layer.yaml (`uid`, `version`; nothing else) and find DIR/src."""
    file = directory / LAYER_FILE
    where = str(file)
    if not file.is_file():
        raise InputError(f"{directory}: not a layer directory (no {LAYER_FILE})",
                         hint=f"write {LAYER_FILE} with `uid:` and `version:`, and put the layer's files in "
                         f"{LAYER_SOURCE}/")
    raw = read_limited(file, MAX_LAYER_FILE_BYTES,
                       lambda size: InputError(f"{where}: {size} bytes; a {LAYER_FILE} is a few lines "
                                               f"(at most {MAX_LAYER_FILE_BYTES} bytes)"))
    loaded, issues = load_yaml_text(decode(raw, where), where)
    if issues:
        raise InputError(issues[0].render())
    data = loaded.data
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with uid and version")
    unknown = sorted(str(key) for key in data if key not in ("uid", "version"))
    if unknown:
        raise InputError(f"{where}:{loaded.line_of((unknown[0],)) or 1}: unknown key {unknown[0]!r}",
                         hint=f"{LAYER_FILE} has two keys: uid and version")
    for key in ("uid", "version"):
        if key not in data:
            raise InputError(f"{where}: {key} is missing", hint=f"{LAYER_FILE} has two keys: uid and version")
    uid = check_uid(data["uid"], f"{where}:{loaded.line_of(('uid',)) or 1}")
    version = check_version(data["version"], f"{where}:{loaded.line_of(('version',)) or 1}")
    source = directory / LAYER_SOURCE
    if source.is_symlink() or not source.is_dir():
        raise InputError(f"{source}: the layer's files must be in this directory (not a link)",
                         hint=f"create {LAYER_SOURCE}/ beside {LAYER_FILE}")
    return LayerMeta(uid, version, source)
