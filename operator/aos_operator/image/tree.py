"""Scanning a service source tree into the sorted, normalized entries of its rootfs layer.

The tree is hostile until proven otherwise. Rules (documented in the README):
- entries are the tree relative to `/`, sorted by the UTF-8 bytes of their path; every
  directory is listed, so empty ones are kept;
- modes are normalized: directories 0755; files 0755 if any executable bit is set, else
  0644; symlinks 0777. setuid, setgid and sticky bits are dropped with a warning;
- symlinks follow the policy: "raise" refuses any, "delete" drops them all, "copy" keeps each
  as a link, but only if its target, resolved lexically inside the tree (following the tree's
  own links, never the host's), stays inside the tree: an absolute target, a `..` that climbs
  above the tree, or a chain or loop that does either is an error naming the link;
- files that share an inode inside the tree become one file plus tar hardlinks to it; a file
  with more links than the tree holds is linked from outside the tree and is refused;
- FIFOs, sockets and device nodes are refused; names that are not valid UTF-8 are refused,
  shown with their bytes escaped.
Nothing outside the tree is ever opened: symlinks are read with readlink, never followed; the
root itself must be a directory, not a link to one (`resolve_source_folder` finds the real
directory of a source folder inside a service directory without leaving it).
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aos_operator.bounded import MAX_PATH_DEPTH
from aos_operator.errors import BuildError, InputError

SymlinkPolicy = Literal["raise", "copy", "delete"]
SYMLINK_POLICIES: tuple[str, ...] = ("raise", "copy", "delete")

_MAX_LINK_HOPS = 40  # the kernel's own limit on symlink chains


class EntryKind(enum.Enum):
    DIRECTORY = "directory"
    FILE = "file"
    HARDLINK = "hardlink"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class StatIdentity:
    """What the filesystem says about a file's version; a cache hint, never its content identity."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True)
class TreeEntry:
    path: str  # relative, '/'-separated, e.g. "usr/bin/x"
    kind: EntryKind
    mode: int  # normalized permission bits
    size: int = 0  # bytes of content (files only)
    link_target: str = ""  # symlink target, or the path a hardlink refers to
    identity: StatIdentity | None = None  # files only

    def source(self, root: Path) -> Path:
        return root.joinpath(*self.path.split("/"))


@dataclass
class Tree:
    root: Path
    entries: list[TreeEntry]
    warnings: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[TreeEntry]:
        return [entry for entry in self.entries if entry.kind is EntryKind.FILE]

    @property
    def content_bytes(self) -> int:
        return sum(entry.size for entry in self.entries if entry.kind is EntryKind.FILE)


def display_path(path: str | bytes) -> str:
    """A path as text, with bytes that are not UTF-8 escaped (\\xNN) so errors can show it."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def normalize_mode(st_mode: int) -> int:
    if stat.S_ISDIR(st_mode):
        return 0o755
    if stat.S_ISLNK(st_mode):
        return 0o777
    return 0o755 if st_mode & 0o111 else 0o644


def scan_tree(
    root: Path,
    symlinks: SymlinkPolicy = "copy",
    *,
    on_entry: Callable[[int], None] | None = None,
) -> Tree:
    """Walk `root` (never following links) and return its entries under the rules above.

    `on_entry(count)` is called now and then with the number of entries seen since its last call.
    """
    if symlinks not in SYMLINK_POLICIES:
        raise InputError(f"symlinks policy {symlinks!r} is not one of {', '.join(SYMLINK_POLICIES)}")
    try:
        root_stat = root.lstat()
    except OSError as error:
        raise InputError(f"{root}: cannot read the source directory: {error.strerror}") from error
    if stat.S_ISLNK(root_stat.st_mode):
        raise BuildError(
            f"{root}: the source directory is a symbolic link; the build does not follow it",
            hint="give the directory itself (a source folder may name a link that stays inside the service directory)",
        )
    if not stat.S_ISDIR(root_stat.st_mode):
        raise InputError(f"{root}: the source must be a directory")

    raw: list[tuple[str, os.stat_result]] = []
    links: dict[str, str] = {}
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        directory = os.path.join(root, relative_dir) if relative_dir else str(root)
        try:
            with os.scandir(directory) as listing:
                children = [(child.name, child.stat(follow_symlinks=False)) for child in listing]
        except OSError as error:
            raise BuildError(f"{display_path(directory)}: cannot read directory: {error.strerror}") from error
        for name, child_stat in children:
            path = f"{relative_dir}/{name}" if relative_dir else name
            _check_name(root, path)
            if path.count("/") >= MAX_PATH_DEPTH:  # the device would refuse the layer
                raise BuildError(f"{display_path(root)}/{display_path(path[:100])}...: more than {MAX_PATH_DEPTH} "
                                 "levels deep; a device refuses such a layer", hint="flatten the tree")
            mode = child_stat.st_mode
            if stat.S_ISDIR(mode):
                pending.append(path)
            elif stat.S_ISLNK(mode):
                if symlinks == "raise":
                    raise BuildError(
                        f"{root / path}: is a symbolic link and the symlinks policy is 'raise'",
                        hint="replace the link by the file, or build with symlinks 'copy' or 'delete'",
                    )
                if symlinks == "delete":
                    continue
                links[path] = _read_link(root, path)
            elif not stat.S_ISREG(mode):
                raise BuildError(
                    f"{root / path}: is a {_kind_name(mode)}; a service tree may hold only "
                    "directories, regular files and symbolic links",
                    hint="remove it from the source tree (device nodes come from the device config)",
                )
            raw.append((path, child_stat))
            if on_entry is not None and len(raw) % 1024 == 0:
                on_entry(1024)

    for path in sorted(links, key=lambda link: link.encode("utf-8")):  # the same error on every run
        problem = _escape_problem(path, links)
        if problem:
            raise BuildError(
                f"{root / path}: symbolic link to {links[path]!r} {problem}",
                hint="make the link relative and inside the tree, or build with symlinks 'delete'",
            )

    raw.sort(key=lambda item: item[0].encode("utf-8"))
    tree = Tree(root=root, entries=[])
    first_path_of_inode: dict[tuple[int, int], str] = {}
    links_seen: dict[tuple[int, int], int] = {}
    for _, entry_stat in raw:
        if stat.S_ISREG(entry_stat.st_mode) and entry_stat.st_nlink > 1:
            key = (entry_stat.st_dev, entry_stat.st_ino)
            links_seen[key] = links_seen.get(key, 0) + 1
    for path, entry_stat in raw:
        tree.entries.append(_entry(tree, path, entry_stat, links, first_path_of_inode, links_seen))
    if on_entry is not None:
        on_entry(len(raw) % 1024)
    return tree


def _entry(
    tree: Tree,
    path: str,
    entry_stat: os.stat_result,
    links: dict[str, str],
    first_path_of_inode: dict[tuple[int, int], str],
    links_seen: dict[tuple[int, int], int],
) -> TreeEntry:
    mode = entry_stat.st_mode
    if stat.S_IMODE(mode) & 0o7000:
        tree.warnings.append(
            f"{tree.root / path}: setuid/setgid/sticky bits dropped (mode {stat.S_IMODE(mode):04o})"
        )
    if stat.S_ISDIR(mode):
        return TreeEntry(path, EntryKind.DIRECTORY, normalize_mode(mode))
    if stat.S_ISLNK(mode):
        return TreeEntry(path, EntryKind.SYMLINK, normalize_mode(mode), link_target=links[path])
    if entry_stat.st_nlink > 1:
        key = (entry_stat.st_dev, entry_stat.st_ino)
        if entry_stat.st_nlink > links_seen[key]:
            raise BuildError(
                f"{tree.root / path}: is a hard link to a file outside the source tree "
                f"({entry_stat.st_nlink} links, {links_seen[key]} inside the tree)",
                hint="replace it by a copy (cp --remove-destination SRC DEST) so nothing outside the tree is packaged",
            )
        if key in first_path_of_inode:
            return TreeEntry(path, EntryKind.HARDLINK, normalize_mode(mode), link_target=first_path_of_inode[key])
        first_path_of_inode[key] = path
    identity = StatIdentity(
        entry_stat.st_dev, entry_stat.st_ino, entry_stat.st_size, entry_stat.st_mtime_ns, entry_stat.st_ctime_ns
    )
    return TreeEntry(path, EntryKind.FILE, normalize_mode(mode), size=entry_stat.st_size, identity=identity)


def _check_name(root: Path, path: str) -> None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise BuildError(
            f"{display_path(root)}/{display_path(path)}: file name is not valid UTF-8",
            hint="rename it: layer paths must be UTF-8",
        ) from None


def _read_link(root: Path, path: str) -> str:
    try:
        target = os.readlink(os.path.join(root, path))
    except OSError as error:
        raise BuildError(f"{root / path}: cannot read symbolic link: {error.strerror}") from error
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        raise BuildError(
            f"{root / path}: symbolic link target {display_path(target)!r} is not valid UTF-8"
        ) from None
    return target


def _escape_problem(path: str, links: dict[str, str]) -> str | None:
    """Why the link at `path` leads outside the tree, or None when it stays inside.

    Resolution is lexical over the tree's own paths: '..' pops a component, and a component
    that is itself a link in the tree is replaced by that link's target.
    """
    resolved: list[str] = path.split("/")[:-1]
    remaining: list[str] = []
    current_link = path
    hops = 0
    while True:
        target = links[current_link]
        if target.startswith("/"):
            via = "" if current_link == path else f" (through {current_link} -> {target!r})"
            return f"is absolute{via}: it would point outside the source tree"
        remaining = target.split("/") + remaining
        while remaining:
            component = remaining.pop(0)
            if component in ("", "."):
                continue
            if component == "..":
                if not resolved:
                    return "climbs above the source tree"
                resolved.pop()
                continue
            candidate = "/".join([*resolved, component])
            if candidate in links:
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    return "is part of a loop of symbolic links"
                current_link = candidate
                break
            resolved.append(component)
        else:
            return None


def resolve_source_folder(base_dir: Path, relative: str, key: str) -> Path:
    """The real directory that `relative` names inside the service directory `base_dir`.

    Each component is looked at with lstat; a symbolic link is replaced by its target, resolved
    lexically inside `base_dir` as the tree's own links are: an absolute target, a `..` that climbs
    above `base_dir` or a loop is an error naming `key` (the config key that gave the folder). The
    result holds no link, so the tree walk starts inside the service directory. A missing component
    ends the checks: whether the folder exists is the build's question, not this one's.
    """
    base = base_dir.resolve()
    if "\x00" in relative or relative.startswith("/"):
        raise BuildError(
            f"{key}: {relative!r} is not a relative path inside the service directory {base}",
            hint="name a folder inside the service directory, e.g. src",
        )
    resolved: list[str] = []
    remaining = relative.split("/")
    via = ""  # the last link followed, for the message
    hops = 0
    while remaining:
        component = remaining.pop(0)
        if component in ("", "."):
            continue
        if component == "..":
            if not resolved:
                raise BuildError(
                    f"{key}: {relative!r}{via} climbs out of the service directory {base}; "
                    "the build reads only files inside it",
                    hint="keep the source folder inside the service directory (move or copy the files there)",
                )
            resolved.pop()
            continue
        candidate = base.joinpath(*resolved, component)
        try:
            is_link = stat.S_ISLNK(candidate.lstat().st_mode)
        except OSError:
            is_link = False
        if not is_link:
            resolved.append(component)
            continue
        hops += 1
        target = _read_link(base, "/".join([*resolved, component]))
        via = f" (through the link {candidate} -> {target!r})"
        if target.startswith("/") or hops > _MAX_LINK_HOPS:
            problem = "is a loop of symbolic links in" if hops > _MAX_LINK_HOPS else "points outside"
            raise BuildError(
                f"{key}: {relative!r}{via} {problem} the service directory {base}; the build does not follow it",
                hint="make the source folder a directory inside the service directory (or a relative link that stays inside)",
            )
        remaining = target.split("/") + remaining
    return base.joinpath(*resolved)


def _kind_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"
