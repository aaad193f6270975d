"""Unpack a service rootfs layer safely, and keep unpacked layers by digest.

A layer is untrusted input. Only regular files, directories, symlinks and hard links are
accepted; absolute member names, `..` components, writing through a symlink, relative symlinks
that climb out of the layer and hard links to anything but a regular file of the same layer are
refused. Owners are not taken from the tar (everything is 0:0) and set-uid/set-gid bits are
dropped. OCI whiteouts become overlayfs whiteouts, as AosEdge does: `.wh.<name>` a 0/0 character
device `<name>`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory.

A layer is unpacked into a temporary directory next to the store and renamed into place when
complete, so a half-unpacked layer is never used and concurrent installs of one digest are safe.

Instances run a copy owned `0:<service GID>` (`<hex>.g<gid>`), as AosEdge 1.x devices chown the
unpacked service layer, so files the author made group-readable are readable by the service and
nothing else; the copy is made once per service group, the same way (temporary dir, rename).
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
import zlib
from pathlib import Path
from typing import IO

from aos_operator.digests import digest_hex
from aos_operator.errors import PackageError, RuntimeFailure

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_TEMP_PREFIX = ".unpacking-"

_TYPE_NAMES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


class _Unpacker:
    def __init__(self, root: Path, where: str) -> None:
        self.root = root
        self.where = where
        self.directory_times: list[tuple[Path, int]] = []

    def refuse(self, member: tarfile.TarInfo, why: str) -> PackageError:
        return PackageError(f"{self.where}: member {member.name!r}: {why}; nothing was installed",
                            hint="rebuild the package from a source tree without such entries")

    def relative_path(self, member: tarfile.TarInfo, name: str) -> str:
        """The member's path inside the layer, normalised; '' for the layer root."""
        if name.startswith("/"):
            raise self.refuse(member, "absolute path")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member, "path contains '..'")
        return "/".join(parts)

    def parent_dir(self, member: tarfile.TarInfo, relative: str) -> Path:
        """The member's parent inside the layer, created as needed, never reached through a symlink."""
        current = self.root
        for part in relative.split("/")[:-1]:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                continue
            if not stat.S_ISDIR(mode):
                raise self.refuse(member, f"its parent {current.relative_to(self.root)} is not a directory "
                                          "(a path through a symlink or file)")
        return current

    @staticmethod
    def clear(path: Path) -> None:
        """Remove what is at `path` (a later entry replaces an earlier one)."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def unpack(self, tar: tarfile.TarFile) -> None:
        for member in tar:
            relative = self.relative_path(member, member.name)
            if not relative:
                if not member.isdir():
                    raise self.refuse(member, "the layer root must be a directory")
                continue
            parent = self.parent_dir(member, relative)
            base = relative.rsplit("/", 1)[-1]
            path = parent / base
            if base.startswith(WHITEOUT_PREFIX):
                self.whiteout(member, parent, base)
            elif member.isdir():
                self.directory(member, path)
            elif member.isreg():
                self.regular(member, path, tar)
            elif member.issym():
                self.symlink(member, relative, path)
            elif member.islnk():
                self.hardlink(member, path)
            else:
                kind = _TYPE_NAMES.get(member.type, f"entry of tar type {member.type!r}")
                raise self.refuse(member, f"{kind}s are not allowed in a service layer")
        for path, mtime in reversed(self.directory_times):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def whiteout(self, member: tarfile.TarInfo, parent: Path, base: str) -> None:
        if not member.isreg():
            raise self.refuse(member, "a whiteout must be an empty regular file")
        if base == OPAQUE_WHITEOUT:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        hidden = base[len(WHITEOUT_PREFIX):]
        if hidden.startswith(WHITEOUT_PREFIX) or hidden in ("", ".", ".."):
            raise self.refuse(member, "unknown special whiteout")
        target = parent / hidden
        self.clear(target)
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))

    def directory(self, member: tarfile.TarInfo, path: Path) -> None:
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            is_dir = False
        if not is_dir:
            self.clear(path)
            os.mkdir(path, 0o700)
        os.chmod(path, member.mode & 0o1777)
        self.directory_times.append((path, int(member.mtime)))

    def regular(self, member: tarfile.TarInfo, path: Path, tar: tarfile.TarFile) -> None:
        self.clear(path)
        source = tar.extractfile(member)
        assert source is not None  # a regular member always has data
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
            os.fchmod(target.fileno(), member.mode & 0o1777)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def symlink(self, member: tarfile.TarInfo, relative: str, path: Path) -> None:
        target = member.linkname
        if not target or "\0" in target:
            raise self.refuse(member, "empty symlink target")
        # Absolute targets resolve inside the container's root at run time, so they stay inside.
        if not target.startswith("/"):
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relative), target))
            if resolved == ".." or resolved.startswith("../"):
                raise self.refuse(member, f"symlink target {target!r} points outside the layer")
        self.clear(path)
        os.symlink(target, path)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def hardlink(self, member: tarfile.TarInfo, path: Path) -> None:
        relative_target = self.relative_path(member, member.linkname)
        if not relative_target:
            raise self.refuse(member, "hard link to the layer root")
        source = self.parent_dir(member, relative_target) / relative_target.rsplit("/", 1)[-1]
        try:
            source_mode = os.lstat(source).st_mode
        except FileNotFoundError:
            raise self.refuse(member, f"hard link to {member.linkname!r}, which is not earlier in the layer") from None
        if not stat.S_ISREG(source_mode):
            raise self.refuse(member, f"hard link to {member.linkname!r}, which is not a regular file")
        if source == path:
            return
        self.clear(path)
        os.link(source, path, follow_symlinks=False)


def unpack_layer(stream: IO[bytes], destination: Path, where: str) -> None:
    """Unpack a tar or tar+gzip stream into the empty directory `destination`."""
    unpacker = _Unpacker(destination, where)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            unpacker.unpack(tar)
    except (tarfile.TarError, zlib.error, EOFError) as error:
        raise PackageError(f"{where}: not a valid tar or tar+gzip layer: {error}; nothing was installed") from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
            raise RuntimeFailure(f"cannot unpack {where} into {destination}: {error.strerror}") from None
        raise PackageError(f"{where}: cannot unpack the layer: {error}; nothing was installed") from None


class LayerStore:
    """Unpacked service layers under `root/<hex of the compressed layer digest>`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_dir()

    def ensure(self, digest: str, blob: Path, where: str) -> Path:
        """The unpacked layer of `blob` (already verified against `digest`), unpacked once."""
        final = self.path(digest)
        if final.is_dir():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f"{_TEMP_PREFIX}{digest_hex(digest)[:16]}-{uuid.uuid4().hex[:8]}"
        os.mkdir(temporary, 0o755)
        try:
            with open(blob, "rb") as stream:
                unpack_layer(stream, temporary, where)
            os.chmod(temporary, 0o755)
            try:
                os.rename(temporary, final)
            except OSError:
                if not final.is_dir():  # not a concurrent install of the same digest: a real error
                    raise
                shutil.rmtree(temporary)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return final

    def owned_path(self, digest: str, gid: int) -> Path:
        return self.root / f"{digest_hex(digest)}.g{gid}"

    def owned(self, digest: str, gid: int) -> Path:
        """The layer's copy owned 0:`gid` (every entry, symlinks included), made once."""
        final = self.owned_path(digest, gid)
        if final.is_dir():
            return final
        source = self.path(digest)
        if not source.is_dir():
            raise PackageError(f"layer {digest} is not installed in {self.root}", hint="install the package again")
        temporary = self.root / f"{_TEMP_PREFIX}{digest_hex(digest)[:16]}-g{gid}-{uuid.uuid4().hex[:8]}"
        try:
            _copy_owned(source, temporary, gid)
            try:
                os.rename(temporary, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(temporary)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return final

    def remove(self, digest: str) -> None:
        shutil.rmtree(self.path(digest), ignore_errors=True)
        if self.root.is_dir():
            for owned in self.root.glob(f"{digest_hex(digest)}.g*"):
                shutil.rmtree(owned, ignore_errors=True)

    def remove_unfinished(self) -> None:
        """Drop temporary directories left by an install that was killed midway."""
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith(_TEMP_PREFIX):
                    shutil.rmtree(entry, ignore_errors=True)


def _copy_owned(source: Path, destination: Path, gid: int) -> None:
    """Copy an unpacked layer (our own output: directories, regular files, symlinks, hard links,
    0/0 whiteout devices, the opaque xattr) with every entry owned 0:`gid`; never follows a link."""
    linked: dict[tuple[int, int], str] = {}

    def copy_entry(src: str, dst: str) -> None:
        info = os.lstat(src)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            os.mkdir(dst, 0o700)
            with os.scandir(src) as entries:
                for entry in entries:
                    copy_entry(entry.path, os.path.join(dst, entry.name))
            try:
                os.setxattr(dst, OPAQUE_XATTR, os.getxattr(src, OPAQUE_XATTR, follow_symlinks=False))
            except OSError as error:
                if error.errno not in (errno.ENODATA, errno.ENOTSUP):
                    raise
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0):
            os.mknod(dst, stat.S_IFCHR | mode, info.st_rdev)
        elif stat.S_ISREG(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if info.st_nlink > 1 and key in linked:
                os.link(linked[key], dst)
                return
            linked[key] = dst
            shutil.copyfile(src, dst, follow_symlinks=False)
        else:
            raise RuntimeFailure(f"{src}: unexpected file type in an unpacked layer", hint="install the package again")
        os.chown(dst, 0, gid, follow_symlinks=False)
        if not stat.S_ISLNK(info.st_mode):
            os.chmod(dst, mode)  # after chown, which clears set-id bits (there are none anyway)

    copy_entry(str(source), str(destination))
