"""Building an AosEdge service package from a source tree, an image config and a service config.

The package (AosEdge service-config era) is an OCI image manifest with a top-level
`aosService` descriptor, plus three blobs: the image config, the Aos service config and the
rootfs layer. It is written as the archive devices receive (a tar of `./manifest.json` and
`./blobs/sha256/*`) and/or as an OCI image layout that standard tools read. Every output is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import datetime
import errno
import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aos_operator.digests import canonical_json, sha256_digest
from aos_operator.errors import BuildError, InputError
from aos_operator.image import oci, tarformat
from aos_operator.image.aos_layer import AosLayer
from aos_operator.image.atomic import atomic_directory, atomic_file
from aos_operator.image.cache import BuildCache
from aos_operator.image.deflate import DEFAULT_LEVEL, Compression
from aos_operator.image.layer import build_layer
from aos_operator.image.progress import ProgressCallback, ProgressReporter
from aos_operator.image.store import BlobStore, StoredBlob
from aos_operator.image.tree import SymlinkPolicy, scan_tree

_OWNED_CONFIG_KEYS = ("rootfs", "created")


@dataclass(frozen=True)
class BuildResult:
    """What was built: the manifest, the three blob descriptors, and how the layer was made."""

    manifest_digest: str
    manifest_bytes: bytes
    config: oci.Descriptor
    service_config: oci.Descriptor
    layer: oci.Descriptor
    diff_id: str
    layer_uncompressed_size: int
    layer_from_cache: bool  # True when the compressed layer was reused from the cache
    compression: dict[str, object]
    warnings: tuple[str, ...]
    archive: Path | None
    oci_layout: Path | None
    aos_layers: tuple[oci.Descriptor, ...] = ()  # layers[1..] of the manifest


def source_date_epoch_from(value: int | None) -> int:
    """The build time: `value`, else the SOURCE_DATE_EPOCH environment variable, else 0."""
    if value is None:
        text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if not text:
            return 0
        try:
            value = int(text)
        except ValueError:
            raise InputError(
                f"SOURCE_DATE_EPOCH={text!r} is not an integer", hint="set it to seconds since 1970, or unset it"
            ) from None
    if not 0 <= value <= tarformat.MAX_MTIME:
        raise InputError(f"source date epoch {value} is outside 0..{tarformat.MAX_MTIME}")
    return value


def build_package(
    source_dir: Path,
    image_config: dict[str, Any],
    service_config: dict[str, Any],
    *,
    symlinks: SymlinkPolicy = "copy",
    archive: Path | None = None,
    oci_layout: Path | None = None,
    tag: str | None = None,
    source_date_epoch: int | None = None,
    cache_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    compression_level: int = DEFAULT_LEVEL,
    layers: Sequence[AosLayer] = (),
) -> BuildResult:
    """Build the package of `source_dir`; write it to `archive` and/or `oci_layout`.

    `layers` are built Aos layers (aos_layer.py), listed after the service layer in
    `layers[1..]` in the order given, their diff_ids after the service layer's.

    `image_config` is an OCI image config without `rootfs` and `created`, which the build
    fills (diff_ids of the layer; the time from the source date epoch). `source_date_epoch`
    defaults to $SOURCE_DATE_EPOCH, else 0. With `cache_dir`, file digests, layers and blobs
    are kept there and an unchanged tree is rebuilt without reading or compressing it.
    `compression_level` (1-9) changes the layer's bytes; the default is DEFAULT_LEVEL.
    `progress` receives Progress reports (phases scan, hash, layer, write).
    """
    epoch = source_date_epoch_from(source_date_epoch)
    _check_configs(image_config, service_config)
    _check_layers(layers)
    _check_output(archive, "archive", must_be_file=True)
    _check_output(oci_layout, "OCI layout", must_be_file=False)
    if tag is not None:
        oci.check_tag(tag)
    try:
        compression = Compression(level=compression_level)
    except ValueError as error:
        raise InputError(str(error)) from None
    reporter = ProgressReporter(progress)

    scan_started_ns = time.time_ns()
    reporter.start("scan")
    tree = scan_tree(Path(source_dir), symlinks, on_entry=lambda count: reporter.advance(files=count))
    reporter.finish()

    with ExitStack() as cleanup:
        cache: BuildCache | None = None
        if cache_dir is not None:
            cache = BuildCache(Path(cache_dir))
            store = cache.store
        else:
            scratch = _scratch_parent(archive, oci_layout)
            store = BlobStore(Path(cleanup.enter_context(tempfile.TemporaryDirectory(dir=scratch, prefix=".aos-build-"))))
        layer = build_layer(
            tree,
            store=store,
            cache=cache,
            compression=compression,
            mtime=epoch,
            reporter=reporter,
            scan_started_ns=scan_started_ns,
        )
        config_bytes = canonical_json(
            {
                **image_config,
                "created": _rfc3339(epoch),
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id, *(aos.diff_id for aos in layers)]},
            }
        )
        blobs = [
            store.put_bytes(config_bytes),
            store.put_bytes(canonical_json(service_config)),
            StoredBlob(layer.digest, layer.size, layer.path),
        ]
        config, service, layer_descriptor = (
            oci.Descriptor(media_type, blob.digest, blob.size)
            for media_type, blob in zip(
                (oci.MEDIA_TYPE_IMAGE_CONFIG, oci.MEDIA_TYPE_AOS_SERVICE_CONFIG, oci.MEDIA_TYPE_LAYER_GZIP), blobs, strict=True
            )
        )
        blobs.extend(aos.blob for aos in layers)
        manifest = oci.manifest_json(config, [layer_descriptor, *(aos.descriptor for aos in layers)], service)

        reporter.start("write", sum(blob.size for blob in blobs) * ((archive is not None) + (oci_layout is not None)))
        for output, write in (
            (archive, lambda path: write_archive(path, manifest, blobs, epoch, reporter)),
            (oci_layout, lambda path: write_oci_layout(path, manifest, blobs, tag, reporter)),
        ):
            if output is not None:
                try:
                    write(Path(output))
                except OSError as error:
                    raise BuildError(f"{output}: cannot write: {error.strerror or error}") from error
        reporter.finish()

    return BuildResult(
        manifest_digest=sha256_digest(manifest),
        manifest_bytes=manifest,
        config=config,
        service_config=service,
        layer=layer_descriptor,
        diff_id=layer.diff_id,
        layer_uncompressed_size=layer.uncompressed_size,
        layer_from_cache=layer.from_cache,
        compression=compression.identity,
        warnings=tuple(tree.warnings),
        archive=Path(archive) if archive is not None else None,
        oci_layout=Path(oci_layout) if oci_layout is not None else None,
        aos_layers=tuple(aos.descriptor for aos in layers),
    )


def write_archive(
    target: Path, manifest: bytes, blobs: list[StoredBlob], mtime: int, reporter: ProgressReporter
) -> None:
    """The package as devices receive it: a plain tar laid out like `tar -C pkg -cf target ./`."""
    with atomic_file(target) as out:
        for directory in (".", "./blobs", "./blobs/sha256"):
            out.write(tarformat.encode_entry(directory, tarformat.DIRECTORY, mode=0o755, mtime=mtime))
        for blob in sorted(_unique(blobs), key=lambda blob: blob.digest):
            name = f"./blobs/sha256/{blob.digest.split(':', 1)[1]}"
            out.write(tarformat.encode_entry(name, tarformat.REGULAR, mode=0o644, mtime=mtime, size=blob.size))
            with open(blob.path, "rb") as source:
                _copy(source, out, reporter)
            out.write(tarformat.padding(blob.size))
        out.write(
            tarformat.encode_entry("./manifest.json", tarformat.REGULAR, mode=0o644, mtime=mtime, size=len(manifest))
        )
        out.write(manifest + tarformat.padding(len(manifest)))
        out.write(tarformat.END_OF_ARCHIVE)


def write_oci_layout(
    target: Path, manifest: bytes, blobs: list[StoredBlob], tag: str | None, reporter: ProgressReporter
) -> None:
    """The package as an OCI image layout: `oci-layout`, `index.json` and every blob, the manifest included."""
    manifest_descriptor = oci.Descriptor(oci.MEDIA_TYPE_MANIFEST, sha256_digest(manifest), len(manifest))
    with atomic_directory(target, replaceable=oci.OCI_LAYOUT_FILE) as layout:
        blob_dir = layout / "blobs" / "sha256"
        blob_dir.mkdir(parents=True, mode=0o755)
        os.chmod(layout / "blobs", 0o755)
        for blob in _unique(blobs):
            with open(blob.path, "rb") as source, open(blob_dir / blob.digest.split(":", 1)[1], "wb") as out:
                _copy(source, out, reporter)
        (blob_dir / manifest_descriptor.digest.split(":", 1)[1]).write_bytes(manifest)
        (layout / oci.OCI_LAYOUT_FILE).write_bytes(oci.OCI_LAYOUT_CONTENT)
        (layout / "index.json").write_bytes(oci.index_json(manifest_descriptor, tag))


def _copy(source: BinaryIO, out: BinaryIO, reporter: ProgressReporter) -> None:
    """Copy a whole blob file in the kernel (copy_file_range), not through Python buffers."""
    out.flush()
    source_fd, out_fd = source.fileno(), out.fileno()
    try:
        while count := os.copy_file_range(source_fd, out_fd, 1 << 24):
            reporter.advance(data_bytes=count)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        # Another filesystem or an old kernel: copy through user space from where the kernel stopped.
        while chunk := source.read(1 << 20):
            out.write(chunk)
            reporter.advance(data_bytes=len(chunk))


def _unique(blobs: list[StoredBlob]) -> list[StoredBlob]:
    # Two configs could be byte-equal; each blob is written once.
    return list({blob.digest: blob for blob in blobs}.values())


def _check_configs(image_config: Any, service_config: Any) -> None:
    if not isinstance(image_config, dict):
        raise InputError(f"image config must be a JSON object, got {type(image_config).__name__}")
    if not isinstance(service_config, dict):
        raise InputError(f"service config must be a JSON object, got {type(service_config).__name__}")
    for key in _OWNED_CONFIG_KEYS:
        if key in image_config:
            raise InputError(
                f"image config: {key!r} is set, but the build fills it",
                hint="leave out 'rootfs' and 'created'; the time comes from the source date epoch",
            )
    for name, value in (("image config", image_config), ("service config", service_config)):
        try:
            canonical_json(value)
        except (TypeError, ValueError) as error:
            raise InputError(f"{name} cannot be written as JSON: {error}") from None


def _check_layers(layers: Sequence[AosLayer]) -> None:
    seen: set[str] = set()
    for layer in layers:
        if layer.uid in seen:
            raise InputError(f"Aos layer {layer.uid!r} is given twice; a package carries each layer once")
        seen.add(layer.uid)


def _check_output(path: Path | None, what: str, *, must_be_file: bool) -> None:
    if path is None:
        return
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: the {what}'s directory {path.parent} does not exist", hint="create it first")
    if must_be_file and path.is_dir():
        raise InputError(f"{path}: is a directory; the {what} is a file", hint="give a file name")


def _rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scratch_parent(*outputs: Path | None) -> Path | None:
    # Blobs are staged beside the first output: same filesystem, and no RAM-backed /tmp for big layers.
    for output in outputs:
        if output is not None:
            parent = Path(output).parent
            if parent.is_dir():
                return parent
    return None
