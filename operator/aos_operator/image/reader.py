"""Reading a service package back: from its archive, an extracted package directory, or an OCI layout.

`open_package` parses the manifest and gives streaming access to each blob it references,
checking size and sha256 as the bytes go by; a mismatch raises PackageError naming the
digest. Registry push and the device runtime read packages through it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aos_operator.bounded import MAX_JSON_BYTES, read_limited
from aos_operator.digests import digest_hex, sha256_digest
from aos_operator.errors import InputError, PackageError
from aos_operator.image import oci

MAX_MANIFEST_SIZE = 4 << 20  # registries refuse larger manifests too
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _RawBlob:
    size: int
    open: Callable[[], BinaryIO]  # a new file object positioned at the blob's first byte


class Package:
    """An opened package. It holds no open file between reads; `with` is accepted all the same."""

    def __init__(self, source: Path, kind: str, manifest_bytes: bytes, blobs: dict[str, _RawBlob]) -> None:
        self.source = source
        self.kind = kind  # "archive", "directory" or "oci-layout"
        self.manifest_bytes = manifest_bytes
        self.manifest_digest = sha256_digest(manifest_bytes)
        self.manifest = oci.parse_manifest(manifest_bytes, f"{source}: manifest {self.manifest_digest}")
        self._blobs = blobs

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def descriptor(self, digest: str) -> oci.Descriptor:
        for descriptor in self.manifest.descriptors:
            if descriptor.digest == digest:
                return descriptor
        raise PackageError(f"{self.source}: blob {digest} is not referenced by the manifest {self.manifest_digest}")

    def iter_blob(self, digest: str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """The blob's bytes in chunks. The digest check happens when the last chunk has been read:
        treat the data as unverified until the iterator is exhausted (BlobStore.put_stream does)."""
        descriptor = self.descriptor(digest)
        raw = self._blobs.get(digest_hex(digest))
        if raw is None:
            raise PackageError(f"{self.source}: blob {digest} is missing", hint="the package is incomplete")
        if raw.size != descriptor.size:
            raise PackageError(
                f"{self.source}: blob {digest} has {raw.size} bytes, the manifest says {descriptor.size}"
            )
        content_hash = hashlib.sha256()
        with raw.open() as file:
            remaining = descriptor.size
            while remaining:
                chunk = file.read(min(chunk_size, remaining))
                if not chunk:
                    raise PackageError(f"{self.source}: blob {digest} is truncated")
                content_hash.update(chunk)
                remaining -= len(chunk)
                yield chunk
        if "sha256:" + content_hash.hexdigest() != digest:
            raise PackageError(
                f"{self.source}: blob {digest} is corrupt: its content has digest sha256:{content_hash.hexdigest()}",
                hint="the package was damaged or tampered with; rebuild or download it again",
            )

    def read_blob(self, digest: str) -> bytes:
        return b"".join(self.iter_blob(digest))

    def reader(self, digest: str, offset: int = 0) -> BinaryIO:
        """A new file object over the blob; reading it to the end verifies it (raises PackageError otherwise).

        From an `offset` (a chunk of an upload) it reads the rest of the blob unverified: the digest
        is the whole blob's, so whoever assembles the chunks (the registry) checks it."""
        if not offset:
            return _ChunkReader(self.iter_blob(digest))  # type: ignore[return-value]
        descriptor = self.descriptor(digest)
        raw = self._blobs.get(digest_hex(digest))
        if raw is None or raw.size != descriptor.size:
            raise PackageError(f"{self.source}: blob {digest} is missing or has the wrong size",
                               hint="the package is incomplete; rebuild or download it again")
        if not 0 < offset <= descriptor.size:
            raise PackageError(f"{self.source}: blob {digest}: offset {offset} is outside its {descriptor.size} bytes")
        file = raw.open()
        file.seek(offset, io.SEEK_CUR)
        return _Bounded(file, descriptor.size - offset)  # type: ignore[return-value]

    @contextmanager
    def open_blob(self, digest: str) -> Iterator[BinaryIO]:
        yield self.reader(digest)

    def image_config(self) -> dict[str, Any]:
        return _json_object(self, self.manifest.config.digest)

    def service_config(self) -> dict[str, Any]:
        """The Aos service config; a package without `aosService` has an empty one (as on devices)."""
        if self.manifest.aos_service is None:
            return {}
        return _json_object(self, self.manifest.aos_service.digest)

    def verify(self) -> None:
        """Read every blob the manifest references and check its size and digest."""
        for descriptor in self.manifest.descriptors:
            for _ in self.iter_blob(descriptor.digest):
                pass


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def open_package(path: Path, tag: str | None = None) -> Package:
    """Open a package archive (plain tar), an extracted package directory, or an OCI layout.

    `tag` picks a manifest of an OCI layout by its `org.opencontainers.image.ref.name`; it
    may be omitted when the layout holds one manifest.
    """
    path = Path(path)
    if path.is_dir():
        if (path / oci.OCI_LAYOUT_FILE).is_file():
            return _open_layout(path, tag)
        if (path / "manifest.json").is_file():
            return Package(path, "directory", _read_small(path / "manifest.json"), _directory_blobs(path))
        raise PackageError(f"{path}: neither an OCI layout (no oci-layout) nor a package directory (no manifest.json)")
    if path.is_file():
        return _open_archive(path)
    raise InputError(f"{path}: no such package")


def _open_layout(path: Path, tag: str | None) -> Package:
    index = oci.load_json(_read_small(path / "index.json"), f"{path}/index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise PackageError(f"{path}/index.json: no manifests")
    candidates = [
        (i, entry)
        for i, entry in enumerate(manifests)
        if tag is None or (isinstance(entry, dict) and (entry.get("annotations") or {}).get(oci.ANNOTATION_REF_NAME) == tag)
    ]
    if len(candidates) != 1:
        tags = sorted(
            str((entry.get("annotations") or {}).get(oci.ANNOTATION_REF_NAME))
            for entry in manifests
            if isinstance(entry, dict)
        )
        wanted = f"tag {tag!r}" if tag is not None else "a tag"
        raise PackageError(f"{path}/index.json: cannot choose a manifest, give {wanted} from: {', '.join(tags)}")
    position, entry = candidates[0]
    descriptor = oci.Descriptor.from_json(entry, f"{path}/index.json.manifests[{position}]")
    blobs = _directory_blobs(path)
    raw = blobs.get(digest_hex(descriptor.digest))
    if raw is None or raw.size != descriptor.size or raw.size > MAX_MANIFEST_SIZE:
        raise PackageError(f"{path}: manifest blob {descriptor.digest} is missing or has the wrong size")
    with raw.open() as file:
        manifest_bytes = file.read(MAX_MANIFEST_SIZE + 1)
    if sha256_digest(manifest_bytes) != descriptor.digest:
        raise PackageError(f"{path}: manifest blob {descriptor.digest} is corrupt")
    return Package(path, "oci-layout", manifest_bytes, blobs)


def _directory_blobs(root: Path) -> dict[str, _RawBlob]:
    blobs: dict[str, _RawBlob] = {}
    blob_dir = root / "blobs" / "sha256"
    if blob_dir.is_dir():
        for blob_path in blob_dir.iterdir():
            if blob_path.is_file() and not blob_path.is_symlink():
                blobs[blob_path.name] = _RawBlob(blob_path.stat().st_size, lambda p=blob_path: open(p, "rb"))  # type: ignore[misc]
    return blobs


def _open_archive(path: Path) -> Package:
    with open(path, "rb") as file:
        if file.read(2) == b"\x1f\x8b":
            raise PackageError(
                f"{path}: is gzip-compressed; open_package reads plain tar archives",
                hint=f"decompress it first (gunzip -c {path} > package.tar)",
            )
    try:
        with tarfile.open(path, "r:") as archive:
            members = {os.path.normpath(member.name): member for member in archive.getmembers() if member.isreg()}
    except tarfile.TarError as error:
        raise PackageError(f"{path}: not a readable tar archive: {error}") from error
    manifest_member = members.get("manifest.json")
    if manifest_member is None:
        raise PackageError(f"{path}: the archive has no manifest.json")
    if manifest_member.size > MAX_MANIFEST_SIZE:
        raise PackageError(f"{path}: manifest.json is {manifest_member.size} bytes, larger than {MAX_MANIFEST_SIZE}")
    blobs: dict[str, _RawBlob] = {}
    for name, member in members.items():
        directory, _, blob_name = name.rpartition("/")
        if directory == "blobs/sha256":
            blobs[blob_name] = _RawBlob(member.size, lambda m=member: _member_reader(path, m))
    with _member_reader(path, manifest_member) as file:
        manifest_bytes = file.read(MAX_MANIFEST_SIZE + 1)
    return Package(path, "archive", manifest_bytes, blobs)


def _member_reader(path: Path, member: tarfile.TarInfo) -> BinaryIO:
    file = open(path, "rb")
    file.seek(member.offset_data)
    return _Bounded(file, member.size)  # type: ignore[return-value]


class _Bounded(io.RawIOBase):
    """The `limit` bytes of `file` from its current position; closes `file` with itself."""

    def __init__(self, file: BinaryIO, limit: int) -> None:
        self._file = file
        self._left = limit

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Only forward from the current position (SEEK_CUR): enough to start inside a blob."""
        if whence != io.SEEK_CUR or not 0 <= offset <= self._left:
            raise io.UnsupportedOperation("a bounded blob reader only skips forward")
        self._file.seek(offset, io.SEEK_CUR)
        self._left -= offset
        return offset

    def readinto(self, buffer: Any) -> int:
        if not self._left:
            return 0
        view = memoryview(buffer)[: self._left]
        count = self._file.readinto(view)  # type: ignore[attr-defined]
        self._left -= count
        return count

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


def _read_small(path: Path) -> bytes:
    try:
        return read_limited(
            path, MAX_MANIFEST_SIZE, lambda size: PackageError(f"{path}: {size} bytes, larger than {MAX_MANIFEST_SIZE}")
        )
    except OSError as error:
        raise PackageError(f"{path}: cannot read: {error.strerror}") from error


def _json_object(package: Package, digest: str) -> dict[str, Any]:
    declared = next((d.size for d in package.manifest.descriptors if d.digest == digest), 0)
    if declared > MAX_JSON_BYTES:
        raise PackageError(
            f"{package.source}: blob {digest} is declared as {declared} bytes; a JSON config may be at most "
            f"{MAX_JSON_BYTES} bytes"
        )
    value = oci.load_json(package.read_blob(digest), f"{package.source}: blob {digest}")
    if not isinstance(value, dict):
        raise PackageError(f"{package.source}: blob {digest} is not a JSON object")
    return value
