"""The files of an AosService: gathered from ConfigMaps, written as a root filesystem tree, and
summed up in a content digest that decides whether a new build is needed. `ConfigMapBook` keeps
what the operator's ConfigMap watch has seen, so that unchanged ConfigMaps are not read again."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from aos_operator.api.models import AosServiceSource
from aos_operator.digests import canonical_json, sha256_digest
from aos_operator.errors import AosError, BuildError
from aos_operator.registry.reference import Reference

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


Reader = tuple[str, str, str]  # (kind, namespace, name) of an AosService or AosLayer that reads ConfigMaps
Fetch = Callable[[str, str], Mapping[str, Any] | None]


@dataclass
class ConfigMapBook:
    """The resourceVersion of each ConfigMap the watch has seen, and who reads which. A reader
    whose ConfigMaps still have the versions it last read needs no read; a change wakes its readers."""

    versions: dict[tuple[str, str], str] = field(default_factory=dict)
    _readers: dict[tuple[str, str], set[Reader]] = field(default_factory=dict)
    _reads: dict[Reader, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def seen(self, namespace: str, name: str, version: str | None) -> set[Reader]:
        """A watch event (version None: deleted); returns the readers to wake."""
        key = (namespace, name)
        if version is None:
            self.versions.pop(key, None)
        elif self.versions.get(key) == version:
            return set()
        else:
            self.versions[key] = version
        return set(self._readers.get(key, ()))

    def reading(self, reader: Reader, names: Iterable[str], fetch: Fetch) -> tuple[Fetch, dict[str, str]]:
        """A reader is about to read the ConfigMaps (in its namespace) its spec names: note them, so a
        change (or the creation of a missing one) wakes it; `fetch` wrapped to keep the
        resourceVersions of what it returned, by ConfigMap name."""
        self.forget(reader)
        keys = tuple(sorted({(reader[1], name) for name in names}))
        if keys:
            self._reads[reader] = keys
            for key in keys:
                self._readers.setdefault(key, set()).add(reader)
        read: dict[str, str] = {}

        def recorded(name: str, namespace: str) -> Mapping[str, Any] | None:
            config_map = fetch(name, namespace)
            if config_map is not None:
                read[name] = str((config_map.get("metadata") or {}).get("resourceVersion") or "")
            return config_map

        return recorded, read

    def forget(self, reader: Reader) -> None:
        for key in self._reads.pop(reader, ()):
            readers = self._readers.get(key)
            if readers is not None:
                readers.discard(reader)
                if not readers:
                    del self._readers[key]

    def unchanged(self, namespace: str, read: Mapping[str, str]) -> bool:
        """Whether the watch still has every ConfigMap at the version that was read (an unknown or
        deleted one counts as changed: it is read again)."""
        return all(version and self.versions.get((namespace, name)) == version for name, version in read.items())


def source_unchanged(book: ConfigMapBook, namespace: str, image: str | None, read: Mapping[str, str],
                     checked_at: float, refresh_seconds: float) -> bool:
    """Whether a source read at `checked_at` needs no new read: ConfigMaps while the watch has the
    versions read; an image by digest always; by tag for `refresh_seconds` (a registry request)."""
    if image is None:
        return book.unchanged(namespace, read)
    try:
        if Reference.parse(image).digest:
            return True
    except AosError:
        return False
    return time.monotonic() - checked_at < refresh_seconds
