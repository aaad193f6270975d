"""Per-instance `/storage` and `/state.dat`, each capped at its quota, kept across restarts.

Mechanism: one ext4 file-system image per volume and instance (`storage.img`, `state.img` in the
instance's data directory, keyed by the instance ID, so by service + subject + index and never by
image digest). At start the image is checked (`e2fsck -p`), attached to a loop device and
mounted in the instance's run directory; the spec binds `data/` (storage) or `state.dat` (state)
from it into the container. At stop it is unmounted and the loop device detached; the image and
its data stay for the next start.

The cap: what a non-root writer can allocate in the image is the quota plus three blocks (the
`data/` directory and extent-tree slack) plus 1/1024 of the quota for extent blocks of large
files. The image is made as small as ext4 allows for that; what ext4 leaves over (a small file
system has a minimum size, and its metadata grows in steps) is taken by a preallocated hidden
file `.reserve` in the image's root, outside what the container sees. So writes fail with ENOSPC
right at the cap, even for a 16 KiB state file. `<image>.json` records the quota, the usable
blocks of the empty file system and the reserve; a quota change resizes the image offline
(`resize2fs`) and recomputes the reserve, keeping the data.

The images are sparse, so a quota is only a promise: before an instance starts, the space its
volumes may still claim (quota minus what their images already hold) must be free on the state
file system, else the start is refused with the free space named (`check_backing`). A quota the
node cannot back would not stop a service from filling the node's disk.

Why not AosEdge's per-UID file-system quotas: the node's root file system here is ext4 mounted
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aos_operator.bounded import parse_json
from aos_operator.errors import RuntimeFailure
from aos_operator.runtime import mounts
from aos_operator.runtime.files import write_atomically

STORAGE = "storage"
STATE = "state"
RESERVE_FILE = ".reserve"
_LOOP_CLR_FD = 0x4C01
_EXT4_MAGIC = 0xEF53
_INCOMPAT_64BIT = 0x80
_SMALL_IMAGE = 64 << 20  # below this quota: 1 KiB blocks, so the cap is finer
_GOOD_ENOUGH_BLOCKS = 16  # stop shrinking the image once the reserve is this small


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
        """Free blocks a non-root writer can use: ext4 holds back 2 % (at most 4096) for itself."""
        return self.free_blocks - min(self.blocks // 50, 4096)


@dataclass(frozen=True)
class Sizing:
    """The `<image>.json` record: quota, usable blocks of the empty file system, reserve blocks."""

    quota: int
    block_size: int
    empty_usable: int
    reserve: int


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_backing(volumes: Sequence[Volume], state_root: Path) -> None:
    """Refuse storage and state quotas that the free space of the state file system cannot hold."""
    needed = 0
    for volume in volumes:
        try:
            allocated = os.stat(volume.image).st_blocks * 512
        except FileNotFoundError:
            allocated = 0
        needed += max(0, volume.quota - allocated)
    if not needed:
        return
    where = _existing_ancestor(Path(volumes[0].image).parent if volumes else state_root)
    info = os.statvfs(where)
    free = info.f_bavail * info.f_frsize
    if needed > free:
        quotas = ", ".join(f"{'storageLimit' if v.kind == STORAGE else 'stateLimit'} {v.quota}" for v in volumes)
        raise RuntimeFailure(f"quotas the node cannot back: {quotas} bytes need {needed} bytes, but only {free} "
                             f"bytes are free on the file system of {where}; nothing was started",
                             hint="lower storageLimit/stateLimit, or free disk space on the node")


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


def _fsck(image: Path, *options: str) -> None:
    """`e2fsck -p`: repairs what is safe to repair (exit 1 and 2 are fixed errors, 4 and up are not)."""
    result = _tool("e2fsck", "-p", *options, str(image))
    if result.returncode >= 4:
        output = (result.stdout + result.stderr).strip()
        raise RuntimeFailure(f"{image}: file system errors e2fsck cannot fix: {output}",
                             hint=f"run `e2fsck -f {image}` by hand")


def target_blocks(quota: int, block_size: int) -> int:
    """Blocks the service may allocate for `quota` bytes: the data, the `data/` directory block,
    two blocks and 1/1024 of the quota of slack for extent-tree blocks."""
    return -(-quota // block_size) + 3 + quota // block_size // 1024


def _sidecar(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def _write_sizing(image: Path, sizing: Sizing) -> None:
    write_atomically(_sidecar(image), json.dumps(sizing.__dict__))


def read_sizing(image: Path) -> Sizing:
    try:
        return Sizing(**parse_json(_sidecar(image).read_text()))
    except (OSError, ValueError, TypeError):
        raise RuntimeFailure(f"{image}: its size record {_sidecar(image)} is missing or unreadable",
                             hint="restore the record, or delete the image to start with an empty volume") from None


def _mkfs(image: Path, kind: str, blocks: int, block_size: int, quota: int) -> bool:
    """Make the file system; False when `blocks` is below ext4's minimum."""
    with open(image, "wb") as stream:
        stream.truncate(blocks * block_size)
    inodes = 16 if kind == STATE else max(64, quota // 16384)
    result = _tool("mkfs.ext4", "-q", "-F", "-b", str(block_size), "-m", "0", "-N", str(inodes),
                   "-O", "^has_journal,^resize_inode", "-E", "nodiscard", str(image))
    if result.returncode != 0 and "Not enough space" in result.stderr:
        return False
    if result.returncode != 0:
        raise RuntimeFailure(f"mkfs.ext4 {image} failed: {(result.stderr or result.stdout).strip()}")
    return True


def _create(image: Path, kind: str, quota: int) -> None:
    block_size = 1024 if quota < _SMALL_IMAGE else 4096
    target = target_blocks(quota, block_size)
    temporary = image.with_name(image.name + ".new")
    blocks = target + 64 + target // 16  # a first guess at the metadata, refined below
    smallest: tuple[int, int] | None = None  # (blocks, usable) of the smallest image that holds the target
    made: int | None = None
    for _ in range(6):
        made = blocks if _mkfs(temporary, kind, blocks, block_size, quota) else None
        if made is None:
            break
        usable = read_superblock(temporary).usable_blocks
        if usable >= target and (smallest is None or blocks < smallest[0]):
            smallest = (blocks, usable)
        if 0 <= usable - target <= _GOOD_ENOUGH_BLOCKS:
            break
        blocks += target - usable
    if smallest is None:
        raise RuntimeFailure(f"{image}: could not size an ext4 image for a quota of {quota} bytes")
    if made != smallest[0]:
        _mkfs(temporary, kind, smallest[0], block_size, quota)
    # The record first: an image without one is never a fresh image (see prepare_image).
    _write_sizing(image, Sizing(quota, block_size, smallest[1], smallest[1] - target))
    os.replace(temporary, image)


def _resize(image: Path, sizing: Sizing, quota: int) -> None:
    """Grow or shrink the file system so the service's capacity is the new quota's target."""
    _fsck(image, "-f")
    _tool("debugfs", "-w", "-R", f"rm /{RESERVE_FILE}", str(image))  # remade at the next mount
    before = read_superblock(image)
    used_by_service = sizing.empty_usable - before.usable_blocks
    target = target_blocks(quota, sizing.block_size)
    needed = target - used_by_service  # usable blocks the file system must have now
    if needed < 0:
        raise RuntimeFailure(
            f"{image}: holds {used_by_service * sizing.block_size} bytes, more than the new quota of {quota} bytes",
            hint="free space in the volume or raise the quota")
    blocks = before.blocks + needed - before.usable_blocks
    for _ in range(6):
        if blocks > before.blocks:
            with open(image, "r+b") as stream:
                stream.truncate(blocks * sizing.block_size)
        result = _tool("resize2fs", str(image), str(blocks))
        if result.returncode != 0:
            raise RuntimeFailure(
                f"{image}: cannot resize to the new quota of {quota} bytes: {result.stderr.strip()}",
                hint="the volume holds more data than the new quota allows; free space in it or raise the quota")
        usable = read_superblock(image).usable_blocks
        if usable >= needed:
            break
        blocks += needed - usable
    with open(image, "r+b") as stream:
        stream.truncate(blocks * sizing.block_size)
    reserve = usable - needed
    _write_sizing(image, Sizing(quota, sizing.block_size, target + reserve, reserve))


def prepare_image(image: Path, kind: str, quota: int) -> None:
    """Create the image for `quota`, or resize an existing one whose quota changed; data is kept."""
    image.parent.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        _create(image, kind, quota)
        return
    sizing = read_sizing(image)
    if sizing.quota != quota:
        _resize(image, sizing, quota)


def _ensure_reserve(root: Path, sizing: Sizing) -> None:
    """The hidden preallocated file that takes what ext4 leaves over beyond the cap."""
    path = root / RESERVE_FILE
    wanted = sizing.reserve * sizing.block_size
    try:
        if os.lstat(path).st_size == wanted:
            return
        path.unlink()
    except FileNotFoundError:
        pass
    if wanted:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, wanted)
        finally:
            os.close(fd)


def mount_volume(volume: Volume) -> None:
    """Check, attach and mount the image; make sure the bound entry exists and belongs to the instance."""
    image = Path(volume.image)
    sizing = read_sizing(image)
    _fsck(image)
    attach = _tool("losetup", "--find", "--show", "--nooverlap", str(image))
    if attach.returncode != 0:
        raise RuntimeFailure(f"losetup {image} failed: {attach.stderr.strip()}",
                             hint="are loop devices available? (modprobe loop)")
    mountpoint = Path(volume.mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        mounts.mount(attach.stdout.strip(), mountpoint, "ext4", mounts.MS_NOSUID | mounts.MS_NODEV)
    except RuntimeFailure:
        detach_loops(image)
        raise
    _ensure_reserve(mountpoint, sizing)
    source = Path(volume.bind_source)
    # The image's content persists across starts: never follow a link found in it.
    if volume.kind == STORAGE:
        source.mkdir(mode=0o755, exist_ok=True)
        if not source.is_dir() or source.is_symlink():
            raise RuntimeFailure(f"{image}: its data/ is not a directory", hint="move the image away to start empty")
    else:
        try:
            os.close(os.open(source, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        except OSError as error:
            raise RuntimeFailure(f"{image}: cannot open its state.dat: {error.strerror}",
                                 hint="move the image away to start empty") from None
    os.chown(source, volume.uid, volume.gid, follow_symlinks=False)


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
