"""Where blob bytes come from when pushing (sources) and go to when pulling (sinks).

Both are streamed: a source is opened for reading in pieces, a sink receives pieces and is
committed only after the whole blob has been checked against its digest and size.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from aos_operator.digests import sha256_digest


class BlobSource(Protocol):
    """A blob to push: its digest and size are known up front; `open` gives a fresh reader."""

    @property
    def digest(self) -> str: ...

    @property
    def size(self) -> int: ...

    def open(self) -> BinaryIO: ...


@dataclass(frozen=True)
class FileBlob:
    """A blob stored in a file."""

    path: Path
    digest: str
    size: int

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> FileBlob:
        """Describe a file by hashing it (streamed)."""
        path = Path(path)
        with path.open("rb") as stream:
            digest = "sha256:" + hashlib.file_digest(stream, "sha256").hexdigest()
            size = stream.tell()
        return cls(path, digest, size)

    def open(self) -> BinaryIO:
        return self.path.open("rb")


@dataclass(frozen=True)
class BytesBlob:
    """A small blob held in memory (configs, the service config)."""

    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)


class BlobSink(Protocol):
    """Receives a pulled blob piece by piece; nothing is final before `commit`.

    `restart` drops what was written so far (the server resent the blob from byte 0);
    `abort` drops everything and leaves no trace. Exactly one of commit/abort ends a sink.
    """

    def write(self, data: bytes) -> None: ...

    def restart(self) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class FileSink:
    """Writes to a temporary file next to `destination`, renamed into place on commit."""

    def __init__(self, destination: str | os.PathLike[str]) -> None:
        self.destination = Path(destination)
        self._file: BinaryIO | None = None
        self._temp_path: Path | None = None

    def _open(self) -> BinaryIO:
        if self._file is None:
            descriptor, name = tempfile.mkstemp(
                dir=self.destination.parent, prefix=f".{self.destination.name}.", suffix=".partial"
            )
            self._temp_path = Path(name)
            self._file = os.fdopen(descriptor, "wb")
        return self._file

    def write(self, data: bytes) -> None:
        self._open().write(data)

    def restart(self) -> None:
        stream = self._open()
        stream.seek(0)
        stream.truncate()

    def commit(self) -> None:
        stream = self._open()
        stream.flush()
        os.fsync(stream.fileno())
        stream.close()
        assert self._temp_path is not None
        os.replace(self._temp_path, self.destination)
        self._file = self._temp_path = None
        _sync_directory(self.destination.parent)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._temp_path is not None:
            self._temp_path.unlink(missing_ok=True)
        self._file = self._temp_path = None


def _sync_directory(directory: Path) -> None:
    """Make a rename durable: devices lose power, and a blob must not vanish after commit."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
