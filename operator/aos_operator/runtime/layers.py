"""Unpack a layer (a service layer or an Aos layer) safely, and keep unpacked layers by digest.

A layer is untrusted input. Only regular files, directories, symlinks and hard links are
accepted; absolute member names, `..` components, writing through a symlink, relative symlinks
that climb out of the layer and hard links to anything but a regular file of the same layer are
refused. Owners are not taken from the tar (everything is 0:0) and set-uid/set-gid bits are
dropped. OCI whiteouts become overlayfs whiteouts, as AosEdge does: `.wh.<name>` a 0/0 character
device `<name>`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory.

Bombs: the decompressed tar stream is counted as it is read, and the unpack stops at the first
byte past the bound: the smallest of the layer's declared uncompressed size (when its descriptor
has one), the device's maximum (`max_layer_bytes`) and the free space of the store's file system
(counted in blocks per entry). A member whose header already declares more than what is left is
refused before any of its data is written. GNU sparse entries (tar type 'S', and the PAX
`GNU.sparse.*` forms) are refused by their header, before tarfile expands them; PAX and GNU
long-name headers above 1 MiB are refused before they are read into memory. A layer holds at most
500 000 entries, 256 directories deep (so that no later walk of it nears Python's recursion limit),
with no NUL in a name and modification times between 1901 and 2514.

A layer is unpacked into a temporary directory next to the store and renamed into place when
complete, so a half-unpacked layer is never used and concurrent installs of one digest are safe;
a refused unpack removes the temporary directory.

Instances run a copy owned `0:<service GID>` (`<hex>.g<gid>`), as AosEdge 1.x devices chown the
unpacked service layer, so files the author made group-readable are readable by the service and
nothing else; the copy is made once per service group, the same way (temporary dir, rename).
"""

from __future__ import annotations

import errno
import math
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aos_operator.bounded import MAX_PATH_DEPTH
from aos_operator.digests import digest_hex
from aos_operator.errors import PackageError, RuntimeFailure

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_TEMP_PREFIX = ".unpacking-"
DEFAULT_MAX_LAYER_BYTES = 4 << 30  # 4 GiB unpacked; a service layer is the service's own files
MAX_TAR_HEADER_BYTES = 1 << 20  # PAX / GNU long-name data, read into memory by tarfile
# Entries of one layer: a Debian root file system has about 20 000; each costs memory while unpacking.
MAX_LAYER_ENTRIES = 500_000
_MTIME_RANGE = (-(1 << 31), 1 << 34)  # 1901 to 2514: beyond, os.utime or the file system refuses
UNCOMPRESSED_SIZE_ANNOTATION = "io.aosedge.layer.uncompressed-size"
_READ_CHUNK = 1 << 18
_GZIP_MAGIC = b"\x1f\x8b"
_PLAIN_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)

_TYPE_NAMES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


@dataclass(frozen=True)
class UnpackLimit:
    """What a layer may unpack to: the device's maximum, and the layer's own declared size."""

    max_bytes: int = DEFAULT_MAX_LAYER_BYTES
    declared_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"the maximum unpacked layer size must be >= 1 byte, got {self.max_bytes}")


class _Refused(Exception):
    """Raised from inside tarfile's header parsing; carries the AosError to raise."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Budget:
    """Counts the tar stream (against the declared size and the maximum) and an estimate of the
    disk blocks written (against the free space); the first excess ends the unpack."""

    def __init__(self, destination: Path, limit: UnpackLimit, where: str) -> None:
        self.where = where
        bounds = [(limit.max_bytes, f"the device's maximum unpacked layer size ({limit.max_bytes} bytes)",
                   "raise the maximum (--max-layer-size) if the layer is genuine")]
        if limit.declared_bytes is not None:
            bounds.append((limit.declared_bytes, f"its declared uncompressed size ({limit.declared_bytes} bytes)",
                           "the package is corrupt or hostile"))
        self.bound, self.reason, self.hint = min(bounds, key=lambda bound: bound[0])
        info = os.statvfs(destination)
        self.block = info.f_frsize or 4096
        self.free = info.f_bavail * info.f_frsize
        self.stream = 0
        self.disk = 0
        self.entries = 0

    def over(self, count: int) -> PackageError:
        return PackageError(f"{self.where}: unpacks to more than {self.reason}: refused after {count} bytes; "
                            "nothing was installed", hint=self.hint)

    def read(self, count: int) -> None:
        self.stream += count
        if self.stream > self.bound:
            raise _Refused(self.over(self.stream))

    def member(self, member: tarfile.TarInfo) -> None:
        """Before an entry is written: its declared data must fit in what is left."""
        self.entries += 1
        if self.entries > MAX_LAYER_ENTRIES:
            raise PackageError(f"{self.where}: more than {MAX_LAYER_ENTRIES} entries; nothing was installed",
                               hint="split the service's files over Aos layers, or pack them in fewer files")
        data = member.size if member.isreg() else 0
        end = member.offset_data + data  # where its data ends in the tar stream
        if end > self.bound:
            raise self.over(end)
        self.disk += -(-data // self.block) * self.block + self.block
        if self.disk > self.free:
            raise RuntimeFailure(f"cannot unpack {self.where}: its files need more than the {self.free} bytes "
                                 "free on the layer store's file system; nothing was installed",
                                 hint="free disk space on the node")


class _LayerStream:
    """The layer's tar stream (gunzipped when it is gzip), counted by the budget as it is read."""

    def __init__(self, source: IO[bytes], budget: _Budget) -> None:
        self.source = source
        self.budget = budget
        self.pending = source.read(2)
        self.decompressor: Any = zlib.decompressobj(31) if self.pending == _GZIP_MAGIC else None
        self.tail = b""

    def _raw(self, size: int) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return self.source.read(size)

    def _next(self, limit: int) -> bytes:
        if self.decompressor is None:
            return self._raw(limit)
        while True:
            if self.tail:
                out = self.decompressor.decompress(self.tail, limit)
                self.tail = self.decompressor.unconsumed_tail
                if out:
                    return out
                continue
            if self.decompressor.eof:
                rest = self.decompressor.unused_data
                if not rest.strip(b"\0"):
                    return b""
                self.decompressor, self.tail = zlib.decompressobj(31), rest  # another gzip member
                continue
            chunk = self._raw(_READ_CHUNK)
            if not chunk:
                raise EOFError("the gzip stream ends early")
            self.tail = chunk

    def read(self, size: int = -1) -> bytes:
        size = _READ_CHUNK if size is None or size < 0 else size
        parts, count = [], 0
        while count < size:
            piece = self._next(size - count)
            if not piece:
                break
            parts.append(piece)
            count += len(piece)
        self.budget.read(count)
        return b"".join(parts)


class _CheckedTarInfo(tarfile.TarInfo):
    """Refuses sparse members and oversized extended headers while tarfile parses them."""

    def _refuse(self, why: str) -> _Refused:
        return _Refused(PackageError(f"member {self.name!r}: {why}; nothing was installed",
                                     hint="rebuild the package from a source tree without such entries"))

    def _proc_member(self, tarfile_: Any) -> Any:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise self._refuse("GNU sparse files (tar type 'S') are not allowed in a layer")
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                         tarfile.GNUTYPE_LONGLINK) and self.size > MAX_TAR_HEADER_BYTES:
            raise self._refuse(f"an extended header of {self.size} bytes (at most {MAX_TAR_HEADER_BYTES})")
        member = super()._proc_member(tarfile_)
        if any(key.startswith("GNU.sparse.") for key in member.pax_headers):
            raise member._refuse("GNU sparse files (PAX GNU.sparse.* headers) are not allowed in a layer")
        return member

    def _proc_gnusparse_00(self, next: Any, *args: Any) -> None:  # noqa: A002 (tarfile's own name)
        raise next._refuse("GNU sparse files (PAX sparse format 0.0) are not allowed in a layer")

    def _proc_gnusparse_01(self, next: Any, *args: Any) -> None:  # noqa: A002
        raise next._refuse("GNU sparse files (PAX sparse format 0.1) are not allowed in a layer")

    def _proc_gnusparse_10(self, next: Any, *args: Any) -> None:  # noqa: A002
        raise next._refuse("GNU sparse files (PAX sparse format 1.0) are not allowed in a layer")


class _Unpacker:
    def __init__(self, root: Path, where: str, budget: _Budget | None = None) -> None:
        self.root = root
        self.where = where
        self.budget = budget
        self.directory_times: dict[str, int] = {}  # by path: a repeated entry costs nothing more

    def refuse(self, member: tarfile.TarInfo, why: str) -> PackageError:
        name = member.name if len(member.name) <= 160 else f"{member.name[:100]}...{member.name[-40:]}"
        return PackageError(f"{self.where}: member {name!r}: {why}; nothing was installed",
                            hint="rebuild the package from a source tree without such entries")

    def relative_path(self, member: tarfile.TarInfo, name: str) -> str:
        """The member's path inside the layer, normalised; '' for the layer root."""
        if name.startswith("/"):
            raise self.refuse(member, "absolute path")
        if "\0" in name:
            raise self.refuse(member, "path contains a NUL byte")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member, "path contains '..'")
        if len(parts) > MAX_PATH_DEPTH:
            raise self.refuse(member, f"path is {len(parts)} levels deep (at most {MAX_PATH_DEPTH})")
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
        while (member := tar.next()) is not None:
            tar.members.clear()  # a streamed tar keeps every header it read; nothing here looks back
            relative = self.relative_path(member, member.name)
            if not math.isfinite(member.mtime) or not _MTIME_RANGE[0] <= member.mtime < _MTIME_RANGE[1]:
                raise self.refuse(member, f"modification time {member.mtime!r} is out of range")
            if not relative:
                if not member.isdir():
                    raise self.refuse(member, "the layer root must be a directory")
                continue
            if self.budget is not None:
                self.budget.member(member)
            parent = self.parent_dir(member, relative)
            base = relative.rsplit("/", 1)[-1]
            path = parent / base
            if base.startswith(WHITEOUT_PREFIX):
                self.whiteout(member, parent, base)
            elif member.isdir():
                self.directory(member, path)
            elif member.type in _PLAIN_REGULAR and member.sparse is None:
                self.regular(member, path, tar)
            elif member.issym():
                self.symlink(member, relative, path)
            elif member.islnk():
                self.hardlink(member, path)
            else:
                kind = _TYPE_NAMES.get(member.type, f"entry of tar type {member.type!r}")
                raise self.refuse(member, f"{kind}s are not allowed in a layer")
        for path, mtime in reversed(self.directory_times.items()):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def whiteout(self, member: tarfile.TarInfo, parent: Path, base: str) -> None:
        if member.type not in _PLAIN_REGULAR:
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
        self.directory_times[str(path)] = int(member.mtime)

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


def unpack_layer(stream: IO[bytes], destination: Path, where: str, limit: UnpackLimit | None = None) -> None:
    """Unpack a tar or tar+gzip stream into the empty directory `destination`, within `limit`."""
    budget = _Budget(destination, limit or UnpackLimit(), where)
    unpacker = _Unpacker(destination, where, budget)
    try:
        with tarfile.open(fileobj=_LayerStream(stream, budget), mode="r|",  # type: ignore[call-overload]
                          bufsize=_READ_CHUNK, tarinfo=_CheckedTarInfo) as tar:
            unpacker.unpack(tar)
    except _Refused as refused:
        error = refused.error
        if isinstance(error, PackageError) and not error.message.startswith(where):
            raise PackageError(f"{where}: {error.message}", hint=error.hint) from None
        raise error from None
    except (tarfile.TarError, zlib.error, EOFError) as error:
        raise PackageError(f"{where}: not a valid tar or tar+gzip layer: {error}; nothing was installed") from None
    except (ValueError, OverflowError) as error:  # a header field Python cannot take (the checks above name most)
        raise PackageError(f"{where}: a tar header cannot be unpacked: {error}; nothing was installed") from None
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

    def ensure(self, digest: str, blob: Path, where: str, limit: UnpackLimit | None = None) -> Path:
        """The unpacked layer of `blob` (already verified against `digest`), unpacked once."""
        final = self.path(digest)
        if final.is_dir():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f"{_TEMP_PREFIX}{digest_hex(digest)[:16]}-{uuid.uuid4().hex[:8]}"
        os.mkdir(temporary, 0o755)
        try:
            with open(blob, "rb") as stream:
                unpack_layer(stream, temporary, where, limit)
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
