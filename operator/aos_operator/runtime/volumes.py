"""Per-instance `/storage` and `/state.dat`, each capped at its quota, kept across restarts.

Mechanism: one ext4 file-system image per volume and instance (`storage.img`, `state.img` in the
instance's data directory, keyed by the instance ID, so by service + subject + index and never by
image digest). The image is sized so that what a non-root process can write is the quota plus a
few blocks of metadata slack; a write beyond that fails with ENOSPC. At start the image is
checked (`e2fsck -p`), attached to a loop device and mounted in the instance's run directory; the
spec binds `data/` (storage) or `state.dat` (state) from it into the container. At stop it is
unmounted and the loop device detached; the image and its data stay for the next start.

Why not AosEdge's per-UID filesystem quotas: the node's root file system here is ext4 mounted
without quota support, and turning it on means remounting `/`. A loop image needs nothing from
the host file system, caps each volume separately (AosEdge sums storage and state on one
partition), and deleting the instance's data is deleting two files.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime import mounts
from aos_operator.runtime.files import write_atomically

STORAGE = "storage"
STATE = "state"
_LOOP_CLR_FD = 0x4C01
_EXT4_MAGIC = 0xEF53
_INCOMPAT_64BIT = 0x80
_SMALL_IMAGE = 64 << 20  # below this quota: 1 KiB blocks, so the cap is finer


@dataclass(frozen=True)
class Volume:
    """One volume of one instance: where its image is and where it gets mounted on the host."""

    kind: str  # STORAGE or STATE
    image: str
    quota: int
    mountpoint: str
    uid: int
    gid: int

    @property
    def bind_source(self) -> str:
        """The host path the spec binds into the container."""
        return os.path.join(self.mountpoint, "data" if self.kind == STORAGE else "state.dat")

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "image": self.image, "quota": self.quota, "mountpoint": self.mountpoint,
                "uid": self.uid, "gid": self.gid}


@dataclass(frozen=True)
class Superblock:
    block_size: int
    blocks: int
    free_blocks: int

    @property
    def usable_blocks(self) -> int:
        """Blocks a non-root writer can use: ext4 holds back 2 % (at most 4096) for itself."""
        return self.free_blocks - min(self.blocks // 50, 4096)


def read_superblock(image: Path) -> Superblock:
    with open(image, "rb") as stream:
        stream.seek(1024)
        raw = stream.read(1024)
    if len(raw) < 0x15C or struct.unpack_from("<H", raw, 56)[0] != _EXT4_MAGIC:
        raise RuntimeFailure(f"{image}: not an ext4 image", hint="move it away; a new empty one will be made")
    blocks_lo, _, free_lo = struct.unpack_from("<III", raw, 4)
    log_block_size = struct.unpack_from("<I", raw, 24)[0]
    incompat = struct.unpack_from("<I", raw, 0x60)[0]
    blocks_hi = free_hi = 0
    if incompat & _INCOMPAT_64BIT:
        blocks_hi, _, free_hi = struct.unpack_from("<III", raw, 0x150)
    return Superblock(1024 << log_block_size, blocks_lo | blocks_hi << 32, free_lo | free_hi << 32)


def _tool(*command: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise RuntimeFailure(f"{command[0]}: not found", hint="install e2fsprogs and util-linux") from None


def _checked(*command: str) -> None:
    result = _tool(*command)
    if result.returncode != 0:
        raise RuntimeFailure(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")


def _fsck(image: Path, *options: str) -> None:
    """`e2fsck -p`: repairs what is safe to repair (exit 1 and 2 are fixed errors, 4 and up are not)."""
    result = _tool("e2fsck", "-p", *options, str(image))
    if result.returncode >= 4:
        raise RuntimeFailure(f"{image}: file system errors e2fsck cannot fix: {(result.stdout + result.stderr).strip()}",
                             hint=f"run `e2fsck -f {image}` by hand")


def _target_blocks(quota: int, block_size: int) -> int:
    """Usable blocks for `quota` bytes: the data, one directory block, and slack for extent metadata."""
    return -(-quota // block_size) + 3 + quota // block_size // 1024


def _sidecar(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def _mkfs(image: Path, kind: str, blocks: int, block_size: int, quota: int) -> None:
    with open(image, "wb") as stream:
        stream.truncate(blocks * block_size)
    inodes = 16 if kind == STATE else max(64, quota // 16384)
    _checked("mkfs.ext4", "-q", "-F", "-b", str(block_size), "-m", "0", "-N", str(inodes),
             "-O", "^has_journal,^resize_inode", "-E", "nodiscard", str(image))


def _write_sidecar(image: Path, quota: int, blocks: int) -> None:
    write_atomically(_sidecar(image), json.dumps({"quota": quota, "blocks": blocks}))


def _create(image: Path, kind: str, quota: int) -> None:
    block_size = 1024 if quota < _SMALL_IMAGE else 4096
    target = _target_blocks(quota, block_size)
    blocks = target + 64 + target // 16  # first guess at metadata; corrected below
    temporary = image.with_name(image.name + ".new")
    for _ in range(5):
        _mkfs(temporary, kind, blocks, block_size, quota)
        usable = read_superblock(temporary).usable_blocks
        if usable >= target:
            break
        blocks += target - usable
    # The sidecar first: an image without one is never a fresh image (see prepare_image).
    _write_sidecar(image, quota, blocks)
    os.replace(temporary, image)


def _resize(image: Path, quota: int, old_quota: int, old_blocks: int) -> int:
    block_size = read_superblock(image).block_size
    blocks = old_blocks + _target_blocks(quota, block_size) - _target_blocks(old_quota, block_size)
    _fsck(image, "-f")
    if blocks > old_blocks:
        with open(image, "r+b") as stream:
            stream.truncate(blocks * block_size)
    result = _tool("resize2fs", str(image), str(blocks))
    if result.returncode != 0:
        raise RuntimeFailure(
            f"{image}: cannot resize to the new quota of {quota} bytes: {result.stderr.strip()}",
            hint="the volume holds more data than the new quota allows; free space in it first or raise the quota",
        )
    if blocks < old_blocks:
        with open(image, "r+b") as stream:
            stream.truncate(blocks * block_size)
    return blocks


def prepare_image(image: Path, kind: str, quota: int) -> None:
    """Create the image for `quota`, or resize an existing one whose quota changed; data is kept."""
    image.parent.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        _create(image, kind, quota)
        return
    try:
        recorded = json.loads(_sidecar(image).read_text())
    except (OSError, ValueError):
        raise RuntimeFailure(f"{image}: its size record {_sidecar(image)} is missing or unreadable",
                             hint="restore the record, or delete the image to start with an empty volume") from None
    if recorded["quota"] != quota:
        _write_sidecar(image, quota, _resize(image, quota, recorded["quota"], recorded["blocks"]))


def mount_volume(volume: Volume) -> None:
    """Check, attach and mount the image; make sure the bound entry exists and belongs to the instance."""
    image = Path(volume.image)
    _fsck(image)
    attach = _tool("losetup", "--find", "--show", "--nooverlap", str(image))
    if attach.returncode != 0:
        raise RuntimeFailure(f"losetup {image} failed: {attach.stderr.strip()}",
                             hint="are loop devices available? (modprobe loop)")
    device = attach.stdout.strip()
    mountpoint = Path(volume.mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        mounts.mount(device, mountpoint, "ext4", mounts.MS_NOSUID | mounts.MS_NODEV)
    except RuntimeFailure:
        detach_loops(image)
        raise
    source = Path(volume.bind_source)
    if volume.kind == STORAGE:
        source.mkdir(mode=0o755, exist_ok=True)
    else:
        os.close(os.open(source, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    os.chown(source, volume.uid, volume.gid)


def loop_devices_of(image: Path) -> list[str]:
    """Loop devices backed by `image` (from sysfs: no process, works after a crash)."""
    wanted = os.path.realpath(image)
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip()
        except OSError:
            continue
        if name.removesuffix(" (deleted)") == wanted:
            found.append("/dev/" + backing.parent.parent.name)
    return found


def detach_loops(image: Path) -> None:
    for device in loop_devices_of(image):
        try:
            fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.ioctl(fd, _LOOP_CLR_FD)
        except OSError:
            pass  # already being cleared; the kernel detaches it when its last user goes
        finally:
            os.close(fd)
