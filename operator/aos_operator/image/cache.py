"""The build cache: a blob store, file content digests by stat identity, and layers by content.

Layout under the cache directory:
    blobs/sha256/<hex>           the blob store (compressed layers and other blobs)
    files/<hash of source>.json  per source tree: path -> [device, inode, size, mtime_ns,
                                 ctime_ns, sha256 of content]
    layers/<key>.json            layer key -> {diff_id, digest, size, uncompressed_size}

A layer's key is the sha256 of its tree digest (every tar header plus every file's content
digest, see layer.py) and of the compression settings: content, never time. The stat
identities only spare re-reading a file whose inode, size, mtime and ctime are unchanged,
as git's index does; ctime changes on every write and cannot be set back, and a file whose
times are within RACY_WINDOW_NS of the scan is not remembered (its timestamp may not have
moved yet when it is written again). The cache directory is trusted local state.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from aos_operator.bounded import parse_json
from aos_operator.digests import canonical_json, is_digest
from aos_operator.image.atomic import write_file_atomically
from aos_operator.image.store import BlobStore
from aos_operator.image.tree import StatIdentity, TreeEntry

RACY_WINDOW_NS = 2_000_000_000
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerRecord:
    diff_id: str
    digest: str
    size: int
    uncompressed_size: int


class BuildCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.store = BlobStore(self.root / "blobs")

    def known_file_digests(self, source_root: Path, files: list[TreeEntry]) -> dict[str, str]:
        """Content digests of the files whose stat identity is the one remembered."""
        document = self._read_json(self._files_path(source_root))
        remembered = document.get("entries", {}) if document.get("version") == _FORMAT_VERSION else {}
        known: dict[str, str] = {}
        for entry in files:
            record = remembered.get(entry.path)
            if (
                isinstance(record, list)
                and len(record) == 6
                and entry.identity is not None
                and record[:5] == list(_identity_tuple(entry.identity))
                and isinstance(record[5], str)
                and is_digest(record[5])
            ):
                known[entry.path] = record[5]
        return known

    def remember_file_digests(
        self, source_root: Path, files: list[TreeEntry], digests: dict[str, str], scan_started_ns: int
    ) -> None:
        entries = {}
        for entry in files:
            identity = entry.identity
            if identity is None or entry.path not in digests:
                continue
            if max(identity.mtime_ns, identity.ctime_ns) >= scan_started_ns - RACY_WINDOW_NS:
                continue
            entries[entry.path] = [*_identity_tuple(identity), digests[entry.path]]
        self._write_json(self._files_path(source_root), {"version": _FORMAT_VERSION, "entries": entries})

    def layer(self, key: str) -> LayerRecord | None:
        value = self._read_json(self._layer_path(key))
        try:
            record = LayerRecord(**value)
        except TypeError:
            return None
        if not (is_digest(record.diff_id) and is_digest(record.digest)):
            return None
        return record if self.store.has(record.digest, record.size) else None

    def remember_layer(self, key: str, record: LayerRecord) -> None:
        self._write_json(self._layer_path(key), asdict(record))

    def _files_path(self, source_root: Path) -> Path:
        name = hashlib.sha256(str(Path(source_root).resolve()).encode("utf-8", "surrogateescape")).hexdigest()
        return self.root / "files" / f"{name}.json"

    def _layer_path(self, key: str) -> Path:
        return self.root / "layers" / f"{key}.json"

    @staticmethod
    def _read_json(path: Path) -> dict:
        # The cache is advisory: anything unreadable is a miss, never an error.
        try:
            value = parse_json(path.read_bytes())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    @staticmethod
    def _write_json(path: Path, value: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, canonical_json(value))


def _identity_tuple(identity: StatIdentity) -> tuple[int, int, int, int, int]:
    return (identity.device, identity.inode, identity.size, identity.mtime_ns, identity.ctime_ns)
