"""The files of an AosService: gathered from ConfigMaps, written as a root filesystem tree, and
summed up in a content digest that decides whether a new build is needed."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from aos_operator.api.models import AosServiceSource
from aos_operator.digests import canonical_json, sha256_digest
from aos_operator.errors import BuildError

DEFAULT_MODE = 0o644


class SourceError(BuildError):
    """The source of an AosService cannot be assembled (a missing ConfigMap or key, a bad path)."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, POSIX, inside the root filesystem
    mode: int
    content: bytes


def _safe_path(path: str, where: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute():
        pure = PurePosixPath(*pure.parts[1:])
    if not pure.parts or any(part in ("..", "") for part in pure.parts) or str(pure) == ".":
        raise SourceError(f"{where}: path {path!r} must stay inside the service's root filesystem (no '..')")
    return str(pure)


def _config_map_data(config_map: Mapping[str, Any]) -> dict[str, bytes]:
    data = {key: value.encode() for key, value in (config_map.get("data") or {}).items()}
    for key, value in (config_map.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


def files_from_config_maps(
    source: AosServiceSource, namespace: str, fetch: Callable[[str, str], Mapping[str, Any] | None]
) -> list[SourceFile]:
    """Files named by `source.configMaps`; `fetch(name, namespace)` returns a ConfigMap or None."""
    files: dict[str, SourceFile] = {}
    for index, reference in enumerate(source.configMaps or []):
        where = f"spec.source.configMaps[{index}]"
        config_map = fetch(reference.name, namespace)
        if config_map is None:
            raise SourceError(f"{where}: ConfigMap {namespace}/{reference.name} not found", hint="create it first")
        data = _config_map_data(config_map)
        items = reference.items
        selection = [(item.key, item.path, item.mode) for item in items] if items else [(k, k, None) for k in sorted(data)]
        for key, path, mode in selection:
            if key not in data:
                raise SourceError(f"{where}: ConfigMap {reference.name} has no key {key!r}")
            safe = _safe_path(path, where)
            if safe in files:
                raise SourceError(f"{where}: two files map to {safe!r}")
            files[safe] = SourceFile(safe, DEFAULT_MODE if mode is None else mode, data[key])
    return sorted(files.values(), key=lambda file: file.path)


def write_tree(files: list[SourceFile], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = root / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.content)
        os.chmod(target, file.mode)


def content_digest(config: Mapping[str, Any], extra: Mapping[str, Any], files: list[SourceFile]) -> str:
    """Identity of what a build reads: the config, the build settings and every file's path, mode, bytes."""
    listing = [[file.path, file.mode, hashlib.sha256(file.content).hexdigest()] for file in files]
    return sha256_digest(canonical_json({"config": config, "settings": dict(extra), "files": listing}))
