"""Bounds on untrusted input: files read whole but never past a limit, JSON of any nesting,
layer paths of any depth.

The size is checked with fstat on the open file before anything is read, and at most
limit + 1 bytes are read, so a sparse multi-gigabyte file (or one that grows while it is read)
costs no more memory than the limit; anything but a regular file (a FIFO would block the open) is
refused.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aos_operator.errors import AosError

MAX_JSON_BYTES = 4 * 1024 * 1024  # manifests, index.json, image and service configs (registries cap manifests at 4 MiB)
# Directories deep in a layer or a source tree: real root file systems stay below 40; the bound keeps
# every walk of an unpacked layer (the group copy, removal) far from Python's recursion limit.
MAX_PATH_DEPTH = 256


def parse_json(data: str | bytes | bytearray) -> Any:
    """json.loads, but nesting too deep for the parser and integers over Python's digit limit are
    a JSONDecodeError (a ValueError) as any other malformed document, never a RecursionError."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:64], 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as error:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise json.JSONDecodeError(str(error).split(";")[0], text[:64], 0) from None


def open_regular(path: str | os.PathLike[str], *, follow: bool = True) -> int:
    """A read-only descriptor of `path`, which must be a regular file (with `follow=False`, not a
    symlink either). Opened without blocking: open() of a FIFO waits for a writer for ever.
    OSError (EINVAL for a FIFO, device or directory; ELOOP for a refused link) for the caller to name."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def read_limited(path: str | os.PathLike[str], limit: int, too_large: Callable[[int], AosError]) -> bytes:
    """The bytes of `path`, a regular file; `too_large(size)` is raised when it holds more than
    `limit`. OSError passes through for the caller to name."""
    with os.fdopen(open_regular(path), "rb") as file:
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
