"""Paths that come from a package or a spec, resolved and created under a root without leaving it.

`resolve_in_root` looks a path up the way the container will see it, with the root as `/`:
symlinks inside are followed (an absolute target starts again at the root), `..` stops at the
root, more than 40 links is a loop (the kernel's limit). Nothing outside the root is ever looked
at. `make_dirs_in` and `create_file_in` create entries under a root the runtime owns, one
component at a time, refusing `..` and any component that is a symlink or not a directory.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from pathlib import Path

from aos_operator.errors import RuntimeFailure

MAX_SYMLINKS = 40


class PathLoop(Exception):
    """More symlinks than the kernel would follow."""


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def resolve_in_root(root: Path, path: str) -> Path | None:
    """The host path of the container path `path` in the tree `root`, or None when it is missing."""
    pending = deque(_components(path))
    current: list[str] = []
    followed = 0
    while pending:
        part = pending.popleft()
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        try:
            mode = os.lstat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            followed += 1
            if followed > MAX_SYMLINKS:
                raise PathLoop(path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            pending.extendleft(reversed(_components(target)))
            continue
        if pending and not stat.S_ISDIR(mode):
            return None
        current.append(part)
    return root.joinpath(*current)


def is_dir_in_root(root: Path, path: str) -> bool:
    try:
        resolved = resolve_in_root(root, path)
    except PathLoop:
        return False
    return resolved is not None and stat.S_ISDIR(os.lstat(resolved).st_mode)


def _checked_relative(relative: str) -> list[str]:
    parts = _components(relative)
    if ".." in parts or any("\0" in part for part in parts):
        raise RuntimeFailure(f"{relative!r}: a path with '..' or NUL cannot be created in the instance's root")
    return parts


def make_dirs_in(root: Path, relative: str, mode: int = 0o755) -> Path:
    """Create `relative` and its parents under `root` (none may be a symlink); returns the path."""
    current = root
    for part in _checked_relative(relative):
        current = current / part
        try:
            existing = os.lstat(current).st_mode
        except FileNotFoundError:
            os.mkdir(current, mode)
            continue
        if not stat.S_ISDIR(existing):
            raise RuntimeFailure(f"{current}: exists and is not a directory; cannot create {relative!r} under {root}")
    return current


def create_file_in(root: Path, relative: str, mode: int = 0o644, data: bytes = b"") -> Path:
    """Create (or replace the content of) a regular file under `root`, parents made as needed,
    never through a symlink."""
    parts = _checked_relative(relative)
    if not parts:
        raise RuntimeFailure(f"{relative!r}: not a file path")
    parent = make_dirs_in(root, "/".join(parts[:-1]))
    path = parent / parts[-1]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except IsADirectoryError:
        raise RuntimeFailure(f"{path}: is a directory; cannot create the file {relative!r} under {root}") from None
    except OSError as error:
        raise RuntimeFailure(f"{path}: cannot create the file {relative!r}: {error.strerror}") from None
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        os.fchmod(stream.fileno(), mode)
    return path
