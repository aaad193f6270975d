"""Reading a file from untrusted input whole, but never more than a limit.

The size is checked with fstat on the open file before anything is read, and at most
limit + 1 bytes are read, so a sparse multi-gigabyte file (or one that grows while it is read,
or a FIFO) costs no more memory than the limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from aos_operator.errors import AosError

MAX_JSON_BYTES = 4 * 1024 * 1024  # manifests, index.json, image and service configs (registries cap manifests at 4 MiB)


def read_limited(path: str | os.PathLike[str], limit: int, too_large: Callable[[int], AosError]) -> bytes:
    """The bytes of `path`; `too_large(size)` is raised when it holds more than `limit`.
    OSError passes through for the caller to name."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise too_large(size)
        data = file.read(limit + 1)
    if len(data) > limit:
        raise too_large(len(data))
    return data


def read_text_limited(path: str | os.PathLike[str], limit: int, too_large: Callable[[int], AosError]) -> str:
    """`read_limited`, decoded as UTF-8 (UnicodeDecodeError passes through)."""
    return read_limited(Path(path), limit, too_large).decode("utf-8")
