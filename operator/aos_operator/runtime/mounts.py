"""mount(2) and umount(2) for the runtime, and the list of what is mounted under a directory.

Calls libc directly: no `mount` process per mount, and the exact errno in every error.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import time
from pathlib import Path

from aos_operator.errors import RuntimeFailure

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    result = _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, data.encode() or None)
    if result != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(
            f"mount {fstype} {source} on {target} ({data or 'no options'}) failed: {os.strerror(err)}",
            hint="the runtime needs root; `dmesg | tail` shows the kernel's reason",
        )


def umount(target: Path, flags: int = 0) -> int:
    """0 on success, else the errno (EINVAL: not a mount point)."""
    if _libc.umount2(os.fsencode(target), flags) == 0:
        return 0
    return ctypes.get_errno()


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        return [_unescape(line.split()[4]) for line in info if line.strip()]


def mount_table() -> list[str]:
    """Every line of this mount namespace's mountinfo, unescaped (mount point, source, options)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        return [_unescape(line) for line in info if line.strip()]


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest (last mounted) first."""
    root = os.path.realpath(directory)
    prefix = root.rstrip("/") + "/"
    found = [point for point in mount_points() if point == root or point.startswith(prefix)]
    return list(reversed(found))


def unmount_all_under(directory: Path) -> None:
    """Unmount everything at or below `directory`; a busy mount gets a few retries, then a lazy detach."""
    for _ in range(50):
        points = mounts_under(directory)
        if not points:
            return
        for point in points:
            err = umount(Path(point))
            if err == errno.EBUSY:
                time.sleep(0.02)
            elif err not in (0, errno.EINVAL, errno.ENOENT):
                raise RuntimeFailure(f"umount {point} failed: {os.strerror(err)}")
    for point in mounts_under(directory):
        umount(Path(point), MNT_DETACH)
    if mounts_under(directory):
        raise RuntimeFailure(f"cannot unmount {directory}: still busy", hint="see `grep {directory} /proc/mounts`")
