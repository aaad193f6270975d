"""A local content-addressed blob store: ROOT/sha256/<hex>, each blob written once, verified.

A blob is streamed into a temporary file under ROOT/tmp (same filesystem), hashed as it is
written, checked against the expected digest and size when they are known, and only then
renamed to its final name; a failure removes the temporary file. Readers therefore never see
a partial or wrong blob under a digest's name. The build cache and registry pulls share it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aos_operator.digests import digest_hex, sha256_digest
from aos_operator.errors import PackageError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredBlob:
    digest: str
    size: int
    path: Path


class BlobWriter:
    """Receives a blob's bytes; `digest` and `size` are final once the `BlobStore.writer` block ends."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        """Where the blob `digest` lives (whether or not it is there)."""
        return self.root / "sha256" / digest_hex(digest)

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            actual = self.path(digest).stat().st_size
        except FileNotFoundError:
            return False
        return size is None or actual == size

    def get(self, digest: str) -> StoredBlob:
        path = self.path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise PackageError(f"blob {digest} is not in the store {self.root}") from None
        return StoredBlob(digest, size, path)

    @contextmanager
    def writer(self, expected_digest: str | None = None, expected_size: int | None = None) -> Iterator[BlobWriter]:
        """Write a blob by streaming; it is verified and renamed into place when the block ends."""
        temp_dir = self.root / "tmp"
        temp_dir.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=temp_dir, prefix="blob-")
        temp_path = Path(temp_name)
        try:
            with open(handle, "wb") as file:
                blob_writer = BlobWriter(file)
                yield blob_writer
            self._check(blob_writer, expected_digest, expected_size)
            final = self.path(blob_writer.digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(temp_path, 0o444)
            os.replace(temp_path, final)
        finally:
            temp_path.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> StoredBlob:
        digest = sha256_digest(data)
        if digest == (expected_digest or digest) and self.has(digest, len(data)):
            return self.get(digest)
        with self.writer(expected_digest, None) as blob_writer:
            blob_writer.write(data)
        return self.get(blob_writer.digest)

    def put_stream(
        self,
        source: BinaryIO | Iterable[bytes],
        expected_digest: str | None = None,
        expected_size: int | None = None,
    ) -> StoredBlob:
        """Store a blob read from a file object or an iterable of chunks."""
        chunks: Iterable[bytes]
        if hasattr(source, "read"):
            reader: BinaryIO = source  # type: ignore[assignment]
            chunks = iter(lambda: reader.read(_CHUNK), b"")
        else:
            chunks = source  # type: ignore[assignment]
        with self.writer(expected_digest, expected_size) as blob_writer:
            for chunk in chunks:
                blob_writer.write(chunk)
        return self.get(blob_writer.digest)

    @staticmethod
    def _check(blob_writer: BlobWriter, expected_digest: str | None, expected_size: int | None) -> None:
        if expected_size is not None and blob_writer.size != expected_size:
            raise PackageError(
                f"blob {expected_digest or blob_writer.digest}: got {blob_writer.size} bytes, expected {expected_size}"
            )
        if expected_digest is not None and blob_writer.digest != expected_digest:
            raise PackageError(
                f"blob {expected_digest}: content has digest {blob_writer.digest}",
                hint="the source is corrupt or was tampered with; fetch it again",
            )
