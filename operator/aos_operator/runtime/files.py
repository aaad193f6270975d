"""Three file habits of the runtime: replace a file atomically (unless it holds those bytes already),
hold an exclusive lock file, and read one of its own state files, which may be damaged."""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aos_operator.bounded import parse_json
from aos_operator.errors import RuntimeFailure

T = TypeVar("T")


def write_atomically(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Write to a temporary name in the same directory, then rename: readers see old or new, never half.
    `mode` (e.g. 0o600 for a file holding a secret) is set before any byte is written."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if mode is not None:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode))
            os.chmod(temporary, mode)  # whatever the umask
        if isinstance(data, str):
            temporary.write_text(data)
        else:
            temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_if_changed(path: Path, data: bytes | str, mode: int | None = None) -> bool:
    """write_atomically unless `path` holds exactly `data` already; whether it wrote. A start of an
    installed package writes the same spec and plan again: the read is cheaper than the replace
    (ext4 starts writing back the data of a file renamed over another)."""
    encoded = data.encode() if isinstance(data, str) else data
    try:
        with open(path, "rb") as current:
            if current.read(len(encoded) + 1) == encoded:
                return False
    except FileNotFoundError:
        pass
    write_atomically(path, encoded, mode)
    return True


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_state(path: Path, build: Callable[[Any], T]) -> T | None:
    """`build` of the JSON in `path`, one of the runtime's own files; None when it is missing. A file
    that is not what we write (a crash, an edit) is a RuntimeFailure naming it, not a KeyError."""
    try:
        return build(parse_json(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RuntimeFailure(f"{path}: a damaged state file ({type(error).__name__}: {str(error)[:200]})",
                             hint="remove the file, or the instance it belongs to (aosctl rm -f)") from None
