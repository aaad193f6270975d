"""Aos layers in the image room: a layer blob built from a tree, and the layer package that carries it.

The blob is made by the same deterministic layer writer as a service's rootfs (layer.py, tree.py):
a gzip tar of relative paths, in which OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) are plain empty
files. Its descriptor has the Aos layer media type and the annotations `io.aosedge.layer.uid`,
`io.aosedge.layer.version` and `io.aosedge.layer.uncompressed-size`; a service package lists it
in `layers[1..]` (package.py).

A layer package (`aosctl build-layer`, and what `--layer ARCHIVE` reads) is, like AosEdge's, the
descriptor and the blob: a plain tar of `./layer.json` and `./blobs/sha256/<hex>`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from aos_operator.digests import canonical_json, digest_hex
from aos_operator.errors import BuildError, InputError, PackageError
from aos_operator.image import oci, tarformat
from aos_operator.image.atomic import atomic_file
from aos_operator.image.cache import BuildCache
from aos_operator.image.deflate import DEFAULT_LEVEL, Compression
from aos_operator.image.layer import build_layer
from aos_operator.image.progress import ProgressReporter
from aos_operator.image.store import BlobStore, StoredBlob
from aos_operator.image.tree import SymlinkPolicy, scan_tree

LAYER_DESCRIPTOR_FILE = "layer.json"
MAX_LAYER_DESCRIPTOR_BYTES = 64 << 10
MAX_UNCOMPRESSED_BYTES = 4 << 30  # the device's default maximum of an unpacked layer


@dataclass(frozen=True)
class AosLayer:
    """One built Aos layer: its uid and version, the manifest descriptor, and where its blob is."""

    uid: str
    version: str
    descriptor: oci.Descriptor
    diff_id: str  # sha256 of the uncompressed tar, for the image config's rootfs.diff_ids
    blob: StoredBlob
    from_cache: bool = False


def layer_descriptor(uid: str, version: str, digest: str, size: int, uncompressed_size: int | None) -> oci.Descriptor:
    """The descriptor of layers[1..]; the uncompressed size (a bound for the device's unpack) when known."""
    annotations = {oci.ANNOTATION_LAYER_UID: uid, oci.ANNOTATION_LAYER_VERSION: version}
    if uncompressed_size is not None:
        annotations[oci.ANNOTATION_LAYER_UNCOMPRESSED_SIZE] = str(uncompressed_size)
    return oci.Descriptor(oci.MEDIA_TYPE_AOS_LAYER, digest, size, tuple(sorted(annotations.items())))


def build_aos_layer(
    source_dir: Path,
    uid: str,
    version: str,
    *,
    store: BlobStore | None = None,
    cache_dir: Path | None = None,
    symlinks: SymlinkPolicy = "copy",
    source_date_epoch: int = 0,
    compression_level: int = DEFAULT_LEVEL,
) -> AosLayer:
    """The layer blob of the tree `source_dir`, put in `store` (or the cache's store with `cache_dir`)."""
    if store is None and cache_dir is None:
        raise ValueError("build_aos_layer needs a store or a cache directory")
    try:
        compression = Compression(level=compression_level)
    except ValueError as error:
        raise InputError(str(error)) from None
    started_ns = time.time_ns()
    tree = scan_tree(Path(source_dir), symlinks)
    cache = BuildCache(Path(cache_dir)) if cache_dir is not None else None
    target = cache.store if cache is not None else store
    assert target is not None
    built = build_layer(tree, store=target, cache=cache, compression=compression, mtime=source_date_epoch,
                        reporter=ProgressReporter(None), scan_started_ns=started_ns)
    descriptor = layer_descriptor(uid, version, built.digest, built.size, built.uncompressed_size)
    return AosLayer(uid, version, descriptor, built.diff_id, StoredBlob(built.digest, built.size, built.path),
                    built.from_cache)


def _descriptor_document(layer: AosLayer) -> bytes:
    return canonical_json(layer.descriptor.to_json())


def write_layer_package(target: Path, layer: AosLayer, mtime: int = 0) -> None:
    """The layer package: `./layer.json` (its descriptor) and `./blobs/sha256/<hex>`."""
    document = _descriptor_document(layer)
    try:
        with atomic_file(Path(target)) as out:
            for directory in (".", "./blobs", "./blobs/sha256"):
                out.write(tarformat.encode_entry(directory, tarformat.DIRECTORY, mode=0o755, mtime=mtime))
            name = f"./blobs/sha256/{digest_hex(layer.blob.digest)}"
            out.write(tarformat.encode_entry(name, tarformat.REGULAR, mode=0o644, mtime=mtime, size=layer.blob.size))
            with open(layer.blob.path, "rb") as source:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            out.write(tarformat.padding(layer.blob.size))
            out.write(tarformat.encode_entry(f"./{LAYER_DESCRIPTOR_FILE}", tarformat.REGULAR, mode=0o644, mtime=mtime,
                                             size=len(document)))
            out.write(document + tarformat.padding(len(document)))
            out.write(tarformat.END_OF_ARCHIVE)
    except OSError as error:
        raise BuildError(f"{target}: cannot write: {error.strerror or error}") from error


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PackageError(f"{where}: missing or not a string")
    return value


def open_layer_package(path: Path, store: BlobStore) -> AosLayer:
    """Read a layer package into `store`, its blob verified against the descriptor's digest and size."""
    where = f"{path}: {LAYER_DESCRIPTOR_FILE}"
    try:
        with tarfile.open(path, "r:") as archive:
            members = {os.path.normpath(m.name): m for m in archive.getmembers() if m.isreg()}
            member = members.get(LAYER_DESCRIPTOR_FILE)
            if member is None:
                raise PackageError(f"{path}: not an Aos layer package (no {LAYER_DESCRIPTOR_FILE})",
                                   hint="give a layer directory (layer.yaml + src/) or an archive from aosctl build-layer")
            if member.size > MAX_LAYER_DESCRIPTOR_BYTES:
                raise PackageError(f"{where}: {member.size} bytes, more than {MAX_LAYER_DESCRIPTOR_BYTES}")
            file = archive.extractfile(member)
            assert file is not None
            document = oci.load_json(file.read(MAX_LAYER_DESCRIPTOR_BYTES + 1), where)
            if not isinstance(document, dict):
                raise PackageError(f"{where}: expected a JSON object")
            descriptor = oci.Descriptor.from_json(document, where)
            if descriptor.media_type not in (oci.MEDIA_TYPE_AOS_LAYER, oci.MEDIA_TYPE_LAYER_GZIP):
                raise PackageError(f"{where}.mediaType: {descriptor.media_type!r}, expected {oci.MEDIA_TYPE_AOS_LAYER}")
            # the caller checks them under the service room's rules (service.layers)
            uid = _text(descriptor.annotation(oci.ANNOTATION_LAYER_UID), f"{where}: {oci.ANNOTATION_LAYER_UID}")
            version = _text(descriptor.annotation(oci.ANNOTATION_LAYER_VERSION),
                            f"{where}: {oci.ANNOTATION_LAYER_VERSION}")
            blob_member = members.get(f"blobs/sha256/{digest_hex(descriptor.digest)}")
            if blob_member is None:
                raise PackageError(f"{path}: blob {descriptor.digest} is missing", hint="the package is incomplete")
            if blob_member.size != descriptor.size:
                raise PackageError(f"{path}: blob {descriptor.digest} has {blob_member.size} bytes, "
                                   f"{LAYER_DESCRIPTOR_FILE} says {descriptor.size}")
            blob_file = archive.extractfile(blob_member)
            assert blob_file is not None
            try:
                blob = store.put_stream(blob_file, descriptor.digest, descriptor.size)
            except PackageError as error:
                raise PackageError(f"{path}: {error.message}", hint="the layer package is damaged; build it again") \
                    from None
    except tarfile.TarError as error:
        raise PackageError(f"{path}: not a readable tar archive: {error}") from error
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from error
    diff_id, uncompressed = _uncompressed_identity(path, blob)
    return AosLayer(uid, version, layer_descriptor(uid, version, blob.digest, blob.size, uncompressed), diff_id, blob)


def _uncompressed_identity(path: Path, blob: StoredBlob) -> tuple[str, int]:
    """diff_id and size of the tar inside the verified gzip blob, computed, not taken from the package."""
    content_hash, size = hashlib.sha256(), 0
    try:
        with gzip.open(blob.path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                content_hash.update(chunk)
                size += len(chunk)
                if size > MAX_UNCOMPRESSED_BYTES:
                    raise PackageError(f"{path}: blob {blob.digest} unpacks to more than {MAX_UNCOMPRESSED_BYTES} "
                                       "bytes, the devices' maximum of a layer")
    except (OSError, EOFError, zlib.error) as error:
        raise PackageError(f"{path}: blob {blob.digest} is not a gzip stream: {error}",
                           hint="an Aos layer is a gzip-compressed tar") from None
    return "sha256:" + content_hash.hexdigest(), size


def scratch_store(parent: Path | None = None) -> tuple[tempfile.TemporaryDirectory[str], BlobStore]:
    """A temporary blob store for layers read from packages; the caller keeps the directory alive."""
    directory = tempfile.TemporaryDirectory(dir=parent, prefix=".aos-layers-")
    return directory, BlobStore(Path(directory.name))
