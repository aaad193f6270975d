"""Building the service rootfs layer: the scanned tree as a deterministic tar, gzipped in one pass, cached by content.

One pass over the file data feeds the tar stream to the parallel gzip writer, which hashes
the uncompressed bytes (the diff_id) while the blob store hashes the compressed ones (the
layer digest). With a cache, the layer's key is computed from content first: a tree digest
over every tar header and every file's sha256 (known from the cache when a file's stat
identity is unchanged, else read), so an unchanged tree is rebuilt without reading or
compressing anything, and any change of content gives a new key.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aos_operator.digests import canonical_json
from aos_operator.errors import BuildError
from aos_operator.image import tarformat
from aos_operator.image.cache import BuildCache, LayerRecord
from aos_operator.image.deflate import Compression, ParallelGzipWriter
from aos_operator.image.progress import ProgressReporter
from aos_operator.image.store import BlobStore
from aos_operator.image.tree import EntryKind, Tree, TreeEntry

# Names the rules of tree.py and tarformat.py; change it whenever they would change the bytes.
LAYER_FORMAT = "aos-layer-tar/1"
_READ_SIZE = 1 << 20
_TYPEFLAGS = {
    EntryKind.DIRECTORY: tarformat.DIRECTORY,
    EntryKind.FILE: tarformat.REGULAR,
    EntryKind.HARDLINK: tarformat.HARDLINK,
    EntryKind.SYMLINK: tarformat.SYMLINK,
}


@dataclass(frozen=True)
class Layer:
    diff_id: str  # sha256 of the uncompressed tar
    digest: str  # sha256 of the gzip blob
    size: int
    uncompressed_size: int
    path: Path  # the blob in the store
    from_cache: bool


def entry_header(entry: TreeEntry, mtime: int) -> bytes:
    return tarformat.encode_entry(
        entry.path,
        _TYPEFLAGS[entry.kind],
        mode=entry.mode,
        mtime=mtime,
        size=entry.size,
        linkname=entry.link_target,
    )


def build_layer(
    tree: Tree,
    *,
    store: BlobStore,
    cache: BuildCache | None,
    compression: Compression,
    mtime: int,
    reporter: ProgressReporter,
    scan_started_ns: int,
) -> Layer:
    files = tree.files
    if cache is not None:
        known = cache.known_file_digests(tree.root, files)
        # Settle the content identity first only when it looks like a rebuild; a first
        # build goes straight to the single pass, which computes it on the way.
        if known or not files:
            digests = dict(known)
            missing = [entry for entry in files if entry.path not in known]
            reporter.start("hash", sum(entry.size for entry in missing), len(missing))
            buffer = bytearray(_READ_SIZE)
            for entry in missing:
                content_hash = hashlib.sha256()
                _stream_file(tree.root, entry, buffer, [content_hash.update], reporter)
                digests[entry.path] = "sha256:" + content_hash.hexdigest()
            reporter.finish()
            if len(known) != len(files):  # something new to remember
                cache.remember_file_digests(tree.root, files, digests, scan_started_ns)
            record = cache.layer(_layer_key(tree, digests, compression, mtime))
            if record is not None:
                return Layer(
                    record.diff_id,
                    record.digest,
                    record.size,
                    record.uncompressed_size,
                    cache.store.path(record.digest),
                    from_cache=True,
                )

    file_digests: dict[str, str] | None = {} if cache is not None else None
    reporter.start("layer", tree.content_bytes, len(files))
    with store.writer() as blob_writer, ParallelGzipWriter(blob_writer, compression) as gzip_writer:
        _write_tar(tree, gzip_writer.write, mtime, file_digests, reporter)
        stream = gzip_writer.close()
    reporter.finish()
    blob = store.get(blob_writer.digest)
    if cache is not None and file_digests is not None:
        cache.remember_file_digests(tree.root, files, file_digests, scan_started_ns)
        cache.remember_layer(
            _layer_key(tree, file_digests, compression, mtime),
            LayerRecord(stream.uncompressed_digest, blob.digest, blob.size, stream.uncompressed_size),
        )
    return Layer(stream.uncompressed_digest, blob.digest, blob.size, stream.uncompressed_size, blob.path, False)


def _write_tar(
    tree: Tree,
    write: Callable[[bytes | memoryview], object],
    mtime: int,
    file_digests: dict[str, str] | None,
    reporter: ProgressReporter,
) -> None:
    buffer = bytearray(_READ_SIZE)
    for entry in tree.entries:
        write(entry_header(entry, mtime))
        if entry.kind is not EntryKind.FILE:
            continue
        if file_digests is None:
            _stream_file(tree.root, entry, buffer, [write], reporter)
        else:
            content_hash = hashlib.sha256()
            _stream_file(tree.root, entry, buffer, [write, content_hash.update], reporter)
            file_digests[entry.path] = "sha256:" + content_hash.hexdigest()
        write(tarformat.padding(entry.size))
    write(tarformat.END_OF_ARCHIVE)


def _layer_key(tree: Tree, file_digests: dict[str, str], compression: Compression, mtime: int) -> str:
    """The content identity of the compressed layer: what decides its tar headers, file contents and compression.

    Every header field comes from (path, kind, mode, size, link target, mtime) under the
    rules named by LAYER_FORMAT, so hashing those is hashing the headers, only cheaper.
    """
    tree_hash = hashlib.sha256()
    for entry in tree.entries:
        content = file_digests[entry.path] if entry.kind is EntryKind.FILE else ""
        record = f"{entry.kind.value}\0{entry.mode:o}\0{entry.size}\0{entry.path}\0{entry.link_target}\0{content}\n"
        tree_hash.update(record.encode("utf-8"))
    return hashlib.sha256(
        canonical_json(
            {
                "format": LAYER_FORMAT,
                "mtime": mtime,
                "tree": tree_hash.hexdigest(),
                "compression": compression.identity,
            }
        )
    ).hexdigest()


def _stream_file(
    root: Path,
    entry: TreeEntry,
    buffer: bytearray,
    sinks: list[Callable[[memoryview], object]],
    reporter: ProgressReporter,
) -> None:
    """Feed exactly the scanned file's bytes to `sinks`; refuse a file that changed since the scan."""
    path = entry.source(root)
    try:
        # O_NOFOLLOW: a file swapped for a link is not followed; O_NONBLOCK: nor does a FIFO block us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise BuildError(f"{path}: cannot open: {error.strerror}", hint=_CHANGED_HINT) from error
    with io.FileIO(fd, "rb") as file:
        _check_unchanged(path, entry, os.fstat(fd))
        view = memoryview(buffer)
        remaining = entry.size
        while remaining:
            count = file.readinto(view[: min(remaining, _READ_SIZE)])
            if not count:
                raise BuildError(f"{path}: shrank while the layer was being built", hint=_CHANGED_HINT)
            chunk = view[:count]
            for sink in sinks:
                sink(chunk)
            remaining -= count
            reporter.advance(data_bytes=count)
        if file.read(1):
            raise BuildError(f"{path}: grew while the layer was being built", hint=_CHANGED_HINT)
        _check_unchanged(path, entry, os.fstat(fd))
    reporter.advance(files=1)


_CHANGED_HINT = "something is changing the source tree; build again once it is stable"


def _check_unchanged(path: Path, entry: TreeEntry, now: os.stat_result) -> None:
    identity = entry.identity
    assert identity is not None
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (identity.device, identity.inode):
        raise BuildError(f"{path}: was replaced while the layer was being built", hint=_CHANGED_HINT)
    if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (identity.size, identity.mtime_ns, identity.ctime_ns):
        raise BuildError(f"{path}: was modified while the layer was being built", hint=_CHANGED_HINT)
