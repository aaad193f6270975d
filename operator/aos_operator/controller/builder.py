"""Build and push the packages of an AosService (blocking; the reconciler runs it in a thread).

The source is either files from ConfigMaps, written as a root filesystem tree and built like
`aosctl build` does, or the root filesystem layer of an existing OCI image, which is reused by
digest: only the two small config blobs and the manifest are new, and the layer is mounted
from its repository when it lives in the same registry.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from aos_operator.api import naming
from aos_operator.api.models import AosServiceSpec, ImageStatus
from aos_operator.controller import metrics
from aos_operator.controller.settings import OperatorSettings
from aos_operator.controller.source import SourceError, SourceFile, content_digest, files_from_config_maps, write_tree
from aos_operator.bounded import MAX_JSON_BYTES, parse_json
from aos_operator.digests import canonical_json, sha256_digest
from aos_operator.image import MEDIA_TYPE_MANIFEST, open_package
from aos_operator.image.oci import (
    MEDIA_TYPE_AOS_SERVICE_CONFIG,
    MEDIA_TYPE_IMAGE_CONFIG,
    Descriptor,
    manifest_json,
    parse_manifest,
)
from aos_operator.packaging import blob_sources, build_service, push_package
from aos_operator.registry import BytesBlob, RegistryClient
from aos_operator.registry.reference import Reference
from aos_operator.service import image_config, service_config
from aos_operator.service.description import Image, ServiceDescription
from aos_operator.errors import SignatureError
from aos_operator.trust.keys import SigningKey, load_signing_key
from aos_operator.trust.store import attach_signature

if TYPE_CHECKING:
    from aos_operator.controller.layers import LayerView

# Part of every content digest: a new builder that lays packages out differently must rebuild.
BUILDER_VERSION = 1
SOURCE_DATE_EPOCH = 0  # packages are reproducible; their time is the epoch
BUILDING_NOTICE_SECONDS = 1.0  # a build still going after this long gets its "Building" status written
T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """What a build reads: files from ConfigMaps, or the layer of an existing image."""

    files: tuple[SourceFile, ...] = ()
    image: Reference | None = None
    image_manifest: bytes | None = None  # the source image's manifest, when image is set

    @property
    def identity(self) -> dict[str, Any]:
        if self.image is not None and self.image_manifest is not None:
            return {"image": f"{self.image.registry}/{self.image.repository}@{sha256_digest(self.image_manifest)}"}
        return {}


def gather_source(
    spec: AosServiceSpec,
    namespace: str,
    config_map: Callable[[str, str], Mapping[str, Any] | None],
    registry: RegistryClient,
) -> Source:
    if spec.source is not None and spec.source.image is not None:
        reference = Reference.parse(spec.source.image.reference)
        return Source(image=reference, image_manifest=registry.pull_manifest(reference).data)
    if spec.source is not None and spec.source.configMaps:
        return Source(files=tuple(files_from_config_maps(spec.source, namespace, config_map)))
    return Source()


def source_digest(spec: AosServiceSpec, source: Source, repository: str, signer: str | None = None,
                  layers: Sequence[LayerView] = ()) -> str:
    settings = {"builder": BUILDER_VERSION, "item": spec.item, "repository": repository, **source.identity}
    if signer:  # a new signing key re-pushes (blobs skipped) and signs what was pushed unsigned
        settings["signer"] = signer
    if layers:  # a new layer version in range is a new package (services without layers keep their digest)
        settings["layers"] = [[view.uid, view.version, view.digest] for view in layers]
    return content_digest(spec.config, settings, list(source.files))


def signing_key(settings: OperatorSettings) -> SigningKey | None:
    """The operator's signing key (re-read when the mounted Secret changes), or None."""
    if settings.sign_key is None:
        return None
    try:
        stat = settings.sign_key.stat()
    except OSError as error:
        raise SignatureError(f"{settings.sign_key}: cannot read the signing key ({error.strerror})") from None
    return _load_key(settings.sign_key, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_key(path: Path, _mtime_ns: int, _size: int) -> SigningKey:
    return load_signing_key(path)


def signer_id(settings: OperatorSettings) -> str | None:
    key = signing_key(settings)
    return key.public.key_id if key else None


def repository_for(settings: OperatorSettings, namespace: str, name: str) -> str:
    return f"{settings.registry_host}/{naming.repository(settings.repository_prefix, namespace, name)}"


def tag_for(service: ServiceDescription, image: Image) -> str:
    version = service.version.replace("+", "_")  # '+' is not allowed in tags
    return version if len(service.images) == 1 else f"{version}-{image.platform.architecture}"


def build_and_push(
    settings: OperatorSettings,
    registry: RegistryClient,
    service: ServiceDescription,
    source: Source,
    repository: str,
    layers: Sequence[LayerView] = (),
) -> list[ImageStatus]:
    """Every image of the service, built and pushed (and signed when the operator has a key),
    with the resolved Aos `layers` in layers[1..]; their references by digest."""
    pushed = []
    key = signing_key(settings)
    for image in service.images:
        reference = f"{repository}:{tag_for(service, image)}"
        if source.image is not None:
            with metrics.timed(metrics.PUSHES, metrics.PUSH_SECONDS):
                digest = _push_from_layer(registry, service, image, source, reference, layers)
        else:
            digest = _build_and_push_files(settings, registry, service, image, source.files, reference, layers)
        if key is not None:
            size = len(registry.pull_manifest(f"{repository}@{digest}").data)
            attach_signature(registry, reference, digest, size, key)
        pushed.append(ImageStatus(architecture=image.platform.architecture, ref=f"{reference}@{digest}", digest=digest))
    return pushed


def _build_and_push_files(
    settings: OperatorSettings,
    registry: RegistryClient,
    service: ServiceDescription,
    image: Image,
    files: tuple[SourceFile, ...],
    reference: str,
    layers: Sequence[LayerView] = (),
) -> str:
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="build-") as scratch:
        root = Path(scratch) / "rootfs"
        with metrics.timed(metrics.BUILDS, metrics.BUILD_SECONDS):
            write_tree(list(files), root)
            build_service(
                service,
                root,
                architecture=image.platform.architecture,
                oci_layout=Path(scratch) / "layout",
                cache_dir=settings.work_dir / "cache",
                source_date_epoch=SOURCE_DATE_EPOCH,
            )
            package = open_package(Path(scratch) / "layout")
        with metrics.timed(metrics.PUSHES, metrics.PUSH_SECONDS):
            if not layers:
                return push_package(registry, package, reference)
            # The built package plus the layers: new image config (diff_ids) and manifest, the service's
            # blobs from the layout, the layers' blobs mounted from their repositories.
            config = package.image_config()
            manifest = package.manifest
            assert manifest.aos_service is not None
            sources = blob_sources(package)
            blobs: dict[str, Any] = {manifest.layers[0].digest: sources[manifest.layers[0].digest],
                                     manifest.aos_service.digest: sources[manifest.aos_service.digest]}
            return _push_with_layers(registry, reference, config, manifest.layers[0], manifest.aos_service, blobs,
                                     layers, Path(scratch), ())


def _push_with_layers(
    registry: RegistryClient,
    reference: str,
    config: dict[str, Any],
    service_layer: Descriptor,
    service_config_descriptor: Descriptor,
    blobs: dict[str, Any],
    layers: Sequence[LayerView],
    scratch: Path,
    mount_from: tuple[str, ...],
) -> str:
    """Push a service package whose manifest lists `layers` after the service layer (the format
    contract: Aos media type, uid and version annotations; diff_ids of every layer)."""
    target = Reference.parse(reference)
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])[:1]
    config = {**config, "rootfs": {"type": "layers", "diff_ids": [*diff_ids, *(view.diff_id for view in layers)]}}
    config_blob = BytesBlob(canonical_json(config))
    descriptors = [view.descriptor() for view in layers]
    document = manifest_json(Descriptor(MEDIA_TYPE_IMAGE_CONFIG, config_blob.digest, config_blob.size),
                             [service_layer, *descriptors], service_config_descriptor)
    blobs = {**blobs, config_blob.digest: config_blob}
    mounts = list(mount_from)
    for view, descriptor in zip(layers, descriptors, strict=True):
        origin = view.repository
        blobs.setdefault(descriptor.digest, LazyBlob(registry, origin, descriptor, scratch))
        if origin.registry == target.registry:
            mounts.append(origin.repository)
    return registry.push(reference, document, MEDIA_TYPE_MANIFEST, blobs, mount_from=tuple(dict.fromkeys(mounts)))


class LazyBlob:
    """A blob of another repository, fetched only if the registry can neither skip nor mount it."""

    def __init__(self, registry: RegistryClient, repository: Reference, descriptor: Descriptor, scratch: Path) -> None:
        self.registry, self.repository, self.scratch = registry, repository, scratch
        self.digest, self.size = descriptor.digest, descriptor.size
        self._path: Path | None = None

    def open(self) -> BinaryIO:
        if self._path is None:
            path = self.scratch / self.digest.replace(":", "-")
            self.registry.pull_blob(self.repository, self.digest, self.size, path)
            self._path = path
        return self._path.open("rb")


def image_diff_ids(registry: RegistryClient, origin: Reference, manifest: Any, scratch: Path, where: str) -> list[str]:
    """The rootfs.diff_ids of an image's config (size-bounded), at least one."""
    config_path = scratch / "origin-config.json"
    if manifest.config.size > MAX_JSON_BYTES:
        raise SourceError(f"{where}: its image config is declared as {manifest.config.size} bytes, more than "
                          f"the {MAX_JSON_BYTES} bytes of an image config")
    registry.pull_blob(origin, manifest.config.digest, manifest.config.size, config_path)
    origin_config = _json(config_path.read_bytes(), where)  # its size was checked while it was pulled
    diff_ids = (origin_config.get("rootfs") or {}).get("diff_ids") or []
    if not diff_ids or not isinstance(diff_ids[0], str):
        raise SourceError(f"{where}: its image config has no rootfs.diff_ids; cannot reuse its layer")
    return list(diff_ids)


def _push_from_layer(
    registry: RegistryClient, service: ServiceDescription, image: Image, source: Source, reference: str,
    layers: Sequence[LayerView] = (),
) -> str:
    assert source.image is not None and source.image_manifest is not None
    origin = source.image
    where = f"spec.source.image {origin}"
    manifest = parse_manifest(source.image_manifest, where)
    layer = manifest.layers[0]
    with tempfile.TemporaryDirectory(prefix="aos-layer-") as scratch:
        diff_ids = image_diff_ids(registry, origin, manifest, Path(scratch), where)
        config = {
            **image_config(service, image),
            "created": "1970-01-01T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": [diff_ids[0]]},
        }
        config_blob = BytesBlob(canonical_json(config))
        service_blob = BytesBlob(canonical_json(service_config(service, created_epoch=SOURCE_DATE_EPOCH)))
        if layers:
            service_descriptor = Descriptor(MEDIA_TYPE_AOS_SERVICE_CONFIG, service_blob.digest, service_blob.size)
            target = Reference.parse(reference)
            return _push_with_layers(
                registry, reference, config, layer, service_descriptor,
                {service_blob.digest: service_blob, layer.digest: LazyBlob(registry, origin, layer, Path(scratch))},
                layers, Path(scratch), (origin.repository,) if origin.registry == target.registry else ())
        document = manifest_json(
            Descriptor(MEDIA_TYPE_IMAGE_CONFIG, config_blob.digest, config_blob.size),
            [layer],
            Descriptor(MEDIA_TYPE_AOS_SERVICE_CONFIG, service_blob.digest, service_blob.size),
        )
        target = Reference.parse(reference)
        mount_from = (origin.repository,) if origin.registry == target.registry else ()
        blobs = {
            config_blob.digest: config_blob,
            service_blob.digest: service_blob,
            layer.digest: LazyBlob(registry, origin, layer, Path(scratch)),
        }
        return registry.push(reference, document, MEDIA_TYPE_MANIFEST, blobs, mount_from=mount_from)


def _json(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = parse_json(data)
    except ValueError as error:
        raise SourceError(f"{where}: its image config is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise SourceError(f"{where}: its image config is not a JSON object")
    return value


async def noticed(work: Awaitable[T], notice: Callable[[], Awaitable[Any]], after: float = BUILDING_NOTICE_SECONDS) -> T:
    """The result of `work` (a build); `notice` (the "Building" status) is awaited once if it has
    not ended within `after` seconds. That status is worth a write only for a build a user could
    watch: most end within a second, and a patch per build was a tenth of the operator's requests."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=after)
        if not done:
            await notice()
        return await task
    finally:
        task.cancel()  # a no-op once it has ended; else (we were cancelled) it ends with us
