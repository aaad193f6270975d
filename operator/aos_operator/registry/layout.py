"""The service package directory as pushed and pulled: `manifest.json` + `blobs/sha256/<hex>`."""

from __future__ import annotations

from pathlib import Path

from aos_operator.bounded import read_limited
from aos_operator.digests import digest_hex
from aos_operator.errors import PackageError
from aos_operator.registry.content import FileBlob, FileSink
from aos_operator.registry.manifest import OCI_MANIFEST, MAX_MANIFEST_BYTES, parse_manifest, referenced_blobs

MANIFEST_FILE = "manifest.json"


def blob_path(directory: Path, digest: str) -> Path:
    return directory / "blobs" / "sha256" / digest_hex(digest)


def read_package(directory: str | Path) -> tuple[bytes, str, dict[str, FileBlob]]:
    """Manifest bytes, its media type and a source for every blob it refers to."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    try:
        data = read_limited(
            manifest_path,
            MAX_MANIFEST_BYTES,
            lambda size: PackageError(f"{manifest_path}: {size} bytes, larger than {MAX_MANIFEST_BYTES}; not a manifest"),
        )
    except OSError as error:
        raise PackageError(f"{manifest_path}: cannot read the package manifest ({error.strerror})") from None
    document = parse_manifest(data, str(manifest_path))
    media_type = document.get("mediaType") or OCI_MANIFEST
    blobs = {}
    for descriptor in referenced_blobs(document, str(manifest_path)):
        path = blob_path(directory, descriptor.digest)
        try:
            size = path.stat().st_size
        except OSError:
            raise PackageError(
                f"{manifest_path}: {descriptor.field} refers to {descriptor.digest}, but {path} is missing",
                hint="rebuild the package; every descriptor needs its blob file",
            ) from None
        if size != descriptor.size:
            raise PackageError(f"{path}: is {size} bytes but {descriptor.field}.size says {descriptor.size}")
        blobs[descriptor.digest] = FileBlob(path, descriptor.digest, descriptor.size)
    return data, media_type, blobs


def write_manifest(directory: Path, data: bytes) -> None:
    """Write manifest.json atomically: a directory with a manifest is a complete package."""
    sink = FileSink(directory / MANIFEST_FILE)
    try:
        sink.write(data)
        sink.commit()
    except BaseException:
        sink.abort()
        raise
