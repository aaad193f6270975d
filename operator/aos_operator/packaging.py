"""The pipeline `aosctl` and the operator share: a service's files and description become a
package (image room), and a package goes to or comes from a registry (registry room)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aos_operator import values
from aos_operator.digests import digest_hex
from aos_operator.errors import BuildError, InputError, Issue
from aos_operator.image import MEDIA_TYPE_MANIFEST, BuildResult, Package, ProgressCallback, build_package, open_package
from aos_operator.image.aos_layer import AosLayer, build_aos_layer, open_layer_package
from aos_operator.image.package import source_date_epoch_from, write_archive, write_oci_layout
from aos_operator.image.progress import ProgressReporter
from aos_operator.image.store import BlobStore, StoredBlob
from aos_operator.image.tree import SymlinkPolicy, resolve_source_folder
from aos_operator.registry import RegistryClient, RegistryLimits
from aos_operator.registry.content import BlobSource
from aos_operator.registry.credentials import DockerConfig
from aos_operator.registry.retry import RetryPolicy
from aos_operator.registry.reference import Reference
from aos_operator.runtime.paths import is_dir_in_root
from aos_operator.service import image_config, service_config
from aos_operator.service.description import Image, ServiceDescription
from aos_operator.service.layers import check_uid, check_version, describe_range, in_range, load_layer_dir
from aos_operator.service.loader import ConfigResult


def source_folder(image: Image, base_dir: Path) -> Path:
    """The image's source folder, which must be inside the service directory `base_dir`."""
    folder = resolve_source_folder(base_dir, image.source_folder, image.source_key)
    if not folder.is_dir():
        raise InputError(
            f"{folder}: the service's source folder does not exist",
            hint=f"create it, or name the right folder: {image.source_key}" if getattr(image, "source_key", None)
            else "create it, or name the right folder: build.source_folder (schema version 1), or the image's "
            "sourceFolder or path (schema version 2)",
        )
    return folder


def check_source_folders(result: ConfigResult) -> ConfigResult:
    """Add an error to `result` for each image whose source folder leads out of the service
    directory on disk (through a link); `validate` runs it, the build's `source_folder` refuses."""
    if result.base_dir is None:
        return result
    found: list[Issue] = []
    for service in result.services:
        for image in service.images:
            try:
                resolve_source_folder(result.base_dir, image.source_folder, image.source_key)
            except BuildError as error:
                found.append(Issue(result.file, None, image.source_key, error.message))
    if found:
        result.issues = [*result.issues, *found]
        result.services = []
    return result


def _check_working_dir_in_tree(image: Image, source_dir: Path) -> None:
    """The device refuses a package whose layer lacks the WorkingDir; say so at build time."""
    working_dir = image.working_dir or "/"
    if working_dir != "/" and not values.working_dir_problem(working_dir) \
            and not is_dir_in_root(Path(source_dir), working_dir):
        raise BuildError(f"workingDir {working_dir!r}: the source tree {source_dir} has no such directory; "
                         "AosEdge devices fail to start such a service",
                         hint="add the directory to the source tree, or change workingDir")


def build_service(
    service: ServiceDescription,
    source_dir: Path,
    *,
    architecture: str | None = None,
    archive: Path | None = None,
    oci_layout: Path | None = None,
    tag: str | None = None,
    cache_dir: Path | None = None,
    source_date_epoch: int | None = None,
    progress: ProgressCallback | None = None,
    symlinks: SymlinkPolicy | None = None,
    layers: Sequence[AosLayer] = (),
) -> BuildResult:
    """Build the package of one of the service's images from the files in `source_dir`, with the
    Aos `layers` (in the order of the service's `layers`, see `order_layers`) in layers[1..]."""
    try:
        image = service.image_for(architecture)
    except LookupError as error:
        raise InputError(str(error), hint="pass --arch") from None
    epoch = source_date_epoch_from(source_date_epoch)
    _check_working_dir_in_tree(image, source_dir)
    return build_package(
        source_dir,
        image_config(service, image),
        service_config(service, created_epoch=epoch),
        symlinks=symlinks or service.symlinks,
        archive=archive,
        oci_layout=oci_layout,
        tag=tag,
        source_date_epoch=epoch,
        cache_dir=cache_dir,
        progress=progress,
        layers=layers,
    )


def load_local_layer(path: Path, store: BlobStore, *, cache_dir: Path | None = None,
                     source_date_epoch: int | None = None) -> AosLayer:
    """A layer directory (`layer.yaml` + `src/`) built into a layer blob, or a layer package
    (`aosctl build-layer`) read and verified; blobs go to `store` (or the cache's store)."""
    path = Path(path)
    if path.is_dir():
        meta = load_layer_dir(path)
        return build_aos_layer(meta.source, meta.uid, meta.version, store=store, cache_dir=cache_dir,
                               source_date_epoch=source_date_epoch_from(source_date_epoch))
    if path.is_file():
        layer = open_layer_package(path, store)
        check_uid(layer.uid, f"{path}: layer.json annotation io.aosedge.layer.uid")
        check_version(layer.version, f"{path}: layer.json annotation io.aosedge.layer.version")
        return layer
    raise InputError(f"{path}: no such layer directory or layer package",
                     hint="give a directory with layer.yaml and src/, or an archive from aosctl build-layer")


def order_layers(service: ServiceDescription, given: Sequence[tuple[str, AosLayer]], flag: str = "--layer") -> list[AosLayer]:
    """The given (origin, layer) pairs in the order of the service's `layers`, each checked
    against its entry: a uid the service does not list, a version out of range, a uid given
    twice, or (when any layer is given) an entry left without a layer is an InputError."""
    wanted = {requirement.uid: requirement for requirement in service.layers}
    chosen: dict[str, AosLayer] = {}
    for origin, layer in given:
        requirement = wanted.get(layer.uid)
        if requirement is None:
            listed = ", ".join(sorted(wanted)) or "none"
            raise InputError(f"{flag} {origin}: layer {layer.uid!r} is not one the service lists in its layers "
                             f"(it lists: {listed})", hint=f"drop this {flag}, or add the layer to the config's layers")
        if not in_range(requirement, layer.version):
            raise InputError(f"{flag} {origin}: layer {layer.uid!r} is version {layer.version}, outside the range "
                             f"{describe_range(requirement)} of the service's layers entry",
                             hint="give a version in range, or change minVersion/maxVersion")
        if layer.uid in chosen:
            raise InputError(f"{flag} {origin}: layer {layer.uid!r} is given twice", hint="give each layer once")
        chosen[layer.uid] = layer
    if chosen:
        for requirement in service.layers:
            if requirement.uid not in chosen:
                raise InputError(f"{flag}: the service also needs layer {requirement.uid!r} "
                                 f"({describe_range(requirement)}), which no {flag} gives",
                                 hint=f"add {flag} DIR|ARCHIVE for it")
    return [chosen[requirement.uid] for requirement in service.layers if requirement.uid in chosen]


@dataclass(frozen=True)
class _PackageBlob:
    """A package blob as the registry client wants it: digest, size, and fresh verified readers."""

    package: Package
    digest: str
    size: int

    def open(self) -> BinaryIO:
        return _BlobReader(self.package, self.digest)  # type: ignore[return-value]

    def __str__(self) -> str:
        return f"blob {self.digest} of {self.package.source}"


class _BlobReader:
    """A package blob as a file: reading from the start verifies the digest at the end; `seek`
    (the chunked upload starts each chunk at its offset) reopens the blob there, unverified, as
    the registry checks the digest of the whole upload when it completes."""

    def __init__(self, package: Package, digest: str) -> None:
        self._package, self._digest = package, digest
        self._stream: BinaryIO | None = None

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or self._stream is not None:
            raise OSError(f"blob {self._digest}: can only seek once, from the start, before reading")
        self._stream = self._package.reader(self._digest, offset)
        return offset

    def read(self, size: int = -1) -> bytes:
        if self._stream is None:
            self._stream = self._package.reader(self._digest)
        return self._stream.read(size)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def __enter__(self) -> _BlobReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def blob_sources(package: Package) -> Mapping[str, BlobSource]:
    return {d.digest: _PackageBlob(package, d.digest, d.size) for d in package.manifest.descriptors}


def registry_limits(request_timeout: float | None = None, blob_min_rate: float | None = None) -> RegistryLimits:
    """The registry limits, with the defaults where nothing was given; bad values are input errors."""
    defaults = RegistryLimits()
    try:
        return RegistryLimits(
            request_timeout=defaults.request_timeout if request_timeout is None else request_timeout,
            blob_min_rate=defaults.blob_min_rate if blob_min_rate is None else blob_min_rate,
        )
    except ValueError as error:
        raise InputError(str(error), hint="give --request-timeout and --min-blob-rate as numbers >= 0") from None


def registry_client(
    *,
    insecure: bool = False,
    ca_file: Path | None = None,
    auth_file: Path | None = None,
    limits: RegistryLimits | None = None,
    insecure_registries: tuple[str, ...] = (),
    docker_defaults: bool = False,
    notify_retry: Callable[[str], None] | None = None,
) -> RegistryClient:
    """A client with the credentials of `auth_file`, else (`docker_defaults`) of docker's own
    config.json, as docker, skopeo and crane find it; `notify_retry` hears of every retry."""
    if auth_file:
        credentials: DockerConfig | None = DockerConfig.from_file(auth_file)
    elif docker_defaults:
        credentials = DockerConfig.from_file(None)
    else:
        credentials = None
    retry = RetryPolicy(notify=notify_retry) if notify_retry else None
    return RegistryClient(credentials=credentials, ca_file=ca_file, insecure=insecure, retry=retry,
                          limits=limits, insecure_registries=insecure_registries)


def push_package(client: RegistryClient, package: Package, reference: str, mount_from: tuple[str, ...] = ()) -> str:
    return client.push(reference, package.manifest_bytes, MEDIA_TYPE_MANIFEST, blob_sources(package), mount_from=mount_from)


def materialize(package: Package, directory: Path) -> Path:
    """Write any package (archive, layout, directory) as a package directory, verified blob by blob:
    `manifest.json` + `blobs/sha256/<hex>`, the form devices install from. The manifest goes last."""
    store = BlobStore(directory / "blobs")
    for descriptor in package.manifest.descriptors:
        if not store.has(descriptor.digest, descriptor.size):
            store.put_stream(package.iter_blob(descriptor.digest), descriptor.digest, descriptor.size)
    shutil.rmtree(directory / "blobs" / "tmp", ignore_errors=True)
    manifest = directory / "manifest.json"
    partial = manifest.with_name(".manifest.json.partial")
    partial.write_bytes(package.manifest_bytes)
    partial.replace(manifest)
    return directory


def pull_package(client: RegistryClient, reference: str, output: Path, *, oci_layout: bool = False) -> tuple[str, Path]:
    """Pull into a package directory, a package archive (`output` ends in .tar) or an OCI layout."""
    if output.suffix != ".tar" and not oci_layout:
        return client.pull(reference, output).digest, output
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".aos-pull-") as scratch:
        pulled = client.pull(reference, Path(scratch))
        package = open_package(Path(scratch))
        blobs = [
            StoredBlob(d.digest, d.size, Path(scratch) / "blobs" / "sha256" / digest_hex(d.digest))
            for d in package.manifest.descriptors
        ]
        tag = Reference.parse(reference).tag
        try:
            if oci_layout:
                write_oci_layout(output, package.manifest_bytes, blobs, tag, ProgressReporter(None))
            else:
                write_archive(output, package.manifest_bytes, blobs, source_date_epoch_from(None), ProgressReporter(None))
        except OSError as error:
            raise BuildError(f"{output}: cannot write: {error.strerror or error}") from error
        return pulled.digest, output
