"""Per-instance service logs with a size cap, and a reader that follows them.

The log is `service.log` plus one rotated generation `service.log.1`: when a write would take
`service.log` past the cap, it is renamed to `service.log.1` (replacing the older one) and a new
file starts. So an instance never holds more than twice the cap on disk, and the newest output is
always kept whole.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_LOG_MAX_BYTES = 1 << 20


class CappedLog:
    """Appends bytes to `path`, rotating once it would exceed `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_LOG_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"log cap must be >= 1 byte, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        while data:
            if self._size >= self.max_bytes:
                self._rotate()
            room = self.max_bytes - self._size
            chunk, data = data[:room], data[room:]
            os.write(self._fd, chunk)
            self._size += len(chunk)

    def _rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = 0

    def close(self) -> None:
        os.close(self._fd)


class LogFollower:
    """Reads what is appended to a CappedLog from where it was when created, across rotations
    (every byte, as long as it reads at least once per rotation)."""

    def __init__(self, path: Path, from_start: bool = False) -> None:
        self.path = path
        self._file = None
        self._inode: int | None = None
        if not from_start:
            self._open(seek_end=True)

    def _open(self, seek_end: bool = False) -> bool:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return False
        if self._file:
            self._file.close()
        self._file = handle
        self._inode = os.fstat(handle.fileno()).st_ino
        if seek_end:
            handle.seek(0, os.SEEK_END)
        return True

    def read(self) -> bytes:
        """Everything new since the last read (b'' when nothing is)."""
        if self._file is None and not self._open():
            return b""
        assert self._file is not None
        data = self._file.read()
        try:
            current_inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return data
        if current_inode != self._inode:
            data += self._file.read()  # the rest of the rotated file, then the new one
            if self._open():
                data += self._file.read()
        return data

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
