"""Outputs that appear whole or not at all: written under a temporary name beside the target, then renamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from aos_operator.errors import BuildError


@contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    """A file object for `target`'s future content; on success it replaces `target`, on failure it vanishes."""
    target = Path(target)
    handle, temp_name = tempfile.mkstemp(dir=_parent(target), prefix=f".{target.name}.", suffix=".tmp")
    try:
        with open(handle, "wb") as file:
            yield file
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def write_file_atomically(target: Path, data: bytes) -> None:
    with atomic_file(target) as file:
        file.write(data)


@contextmanager
def atomic_directory(target: Path, *, replaceable: str) -> Iterator[Path]:
    """A fresh directory to fill; on success it takes `target`'s place.

    An existing `target` is replaced only if it is empty or holds the file `replaceable`
    (so a directory that is not a previous output is never deleted).
    """
    target = Path(target)
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise BuildError(f"{target}: exists and is not a directory", hint="remove it or choose another path")
        if any(target.iterdir()) and not (target / replaceable).is_file():
            raise BuildError(
                f"{target}: exists, is not empty and has no {replaceable!r} file, so it is not ours to replace",
                hint="remove it or choose another path",
            )
    temp_dir = Path(tempfile.mkdtemp(dir=_parent(target), prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(temp_dir, 0o755)
        yield temp_dir
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old / "previous")
            os.replace(temp_dir, target)
            shutil.rmtree(old)
        else:
            os.replace(temp_dir, target)
    finally:
        if temp_dir.exists():
            shutil.rmtree(temp_dir)


def _parent(target: Path) -> Path:
    parent = target.parent
    if not parent.is_dir():
        raise BuildError(f"{target}: the directory {parent} does not exist", hint="create it first")
    return parent
