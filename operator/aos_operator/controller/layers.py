"""Aos layers in the operator: an AosLayer built (or taken from an image's first layer) and pushed
by digest to its own repository, and a service's `layers` ranges resolved to the newest pushed
AosLayer of its namespace.

Every version of a layer uid lives in `<prefix>/<namespace>/layers/<uid>`, one manifest per
version (tag: the version), whose only layer is the Aos layer blob. A service's package lists
the blob in layers[1..]; the builder mounts it from that repository into the service's.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import kopf
from pydantic import ValidationError

from aos_operator.api import naming
from aos_operator.api.models import AOS_LAYER, AosLayerSpec
from aos_operator.controller.builder import noticed
from aos_operator.controller.conditions import IMAGE_PUSHED, READY, RECONCILING, STALLED, Wanted, merge_conditions
from aos_operator.controller.settings import OperatorSettings
from aos_operator.controller.source import (
    SourceError,
    content_digest,
    files_from_config_maps,
    source_unchanged,
    write_tree,
)
from aos_operator.digests import canonical_json
from aos_operator.errors import AosError, BuildError, InputError, PackageError, RegistryError
from aos_operator.image import MEDIA_TYPE_MANIFEST
from aos_operator.image.aos_layer import build_aos_layer, layer_descriptor
from aos_operator.image.oci import MEDIA_TYPE_IMAGE_CONFIG, MEDIA_TYPE_LAYER_GZIP, Descriptor, parse_manifest
from aos_operator.image.store import BlobStore
from aos_operator.registry import BytesBlob, FileBlob, RegistryClient
from aos_operator.registry.reference import Reference
from aos_operator.service.description import ServiceDescription
from aos_operator.service.layers import check_uid, check_version, describe_range, newest_in_range

log = logging.getLogger("aos_operator.controller")
LAYER_BUILDER_VERSION = 1  # part of every layer's content digest
LAYER_NOT_FOUND = "LayerNotFound"
# The gzip tar layer types an image source's first layer may have; others (zstd, plain tar) are refused.
_GZIP_LAYER_TYPES = (MEDIA_TYPE_LAYER_GZIP, "application/vnd.docker.image.rootfs.diff.tar.gzip",
                     "application/vnd.aos.image.layer.v1.tar+gzip")


@dataclass(frozen=True)
class LayerView:
    """A pushed AosLayer as resolution sees it: what its status says was pushed."""

    namespace: str
    name: str
    uid: str
    version: str
    digest: str
    diff_id: str
    size: int
    uncompressed_size: int | None
    ref: str  # repository:tag@manifest digest

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> LayerView | None:
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        if meta.get("deletionTimestamp"):
            return None
        try:
            return cls(meta["namespace"], meta["name"], status["uid"], status["version"], status["digest"],
                       status["diffId"], int(status["size"]), status.get("uncompressedSize"), status["ref"])
        except (KeyError, TypeError, ValueError):
            return None  # not pushed yet

    @property
    def repository(self) -> Reference:
        return Reference.parse(self.ref)

    def descriptor(self) -> Descriptor:
        return layer_descriptor(self.uid, self.version, self.digest, self.size, self.uncompressed_size)


class LayerNotFound(AosError):
    """A service's layers entry has no pushed AosLayer in range in its namespace."""


class LayerMemo(NamedTuple):
    """When an AosLayer's sources were last read, so that passes between changes read nothing."""

    generation: int | None
    checked_at: float
    config_maps: tuple[tuple[str, str], ...]  # (name, resourceVersion) of the ConfigMaps read


@dataclass
class LayerBook:
    """What the operator knows of AosLayers: the pushed ones, and which services use which uid."""

    views: dict[tuple[str, str], LayerView] = field(default_factory=dict)  # (namespace, name): from kopf's index
    seen: dict[tuple[str, str], LayerView] = field(default_factory=dict)  # the same, as the events told it
    users: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (namespace, uid) -> services
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)  # layer loops
    memos: dict[tuple[str, str], LayerMemo] = field(default_factory=dict)

    def update(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> set[str]:
        """Record an AosLayer event; return the uids whose pushed versions changed."""
        before = self.seen.pop((namespace, name), None)
        after = LayerView.from_body(body) if body is not None else None
        if after is not None:
            self.seen[(namespace, name)] = after
        if before == after:
            return set()
        return {view.uid for view in (before, after) if view is not None}

    def remember(self, views: Mapping[tuple[str, str], LayerView]) -> None:
        self.views = dict(views)

    def use(self, namespace: str, service: str, uids: Iterable[str]) -> None:
        wanted = set(uids)
        for (space, uid), names in self.users.items():
            if space == namespace and uid not in wanted:
                names.discard(service)
        for uid in wanted:
            self.users.setdefault((namespace, uid), set()).add(service)

    def users_of(self, namespace: str, uid: str) -> set[str]:
        return set(self.users.get((namespace, uid), ()))

    def resolve(self, namespace: str, service: ServiceDescription) -> list[LayerView]:
        """The newest pushed AosLayer in range for each of the service's layers, in its order."""
        resolved = []
        for requirement in service.layers:
            candidates = [(view.version, view) for view in self.views.values()
                          if view.namespace == namespace and view.uid == requirement.uid]
            found = newest_in_range(requirement, candidates)
            if found is None:
                seen = ", ".join(f"{version} ({view.name})" for version, view in sorted(candidates, key=lambda c: c[1].name))
                raise LayerNotFound(
                    f"layer {requirement.uid!r} {describe_range(requirement)}: no pushed AosLayer in namespace "
                    f"{namespace} has a version in range" + (f" (found: {seen})" if seen else " (none has this uid)"),
                    hint="create an AosLayer with this uid and a version in range, or change the layers entry",
                )
            resolved.append(found[1])
        return resolved


def layer_key(layers: Iterable[LayerView]) -> tuple[str, ...]:
    return tuple(f"{view.uid}@{view.version}@{view.digest}" for view in layers)


# --- building and pushing one AosLayer -------------------------------------------------------------


def repository_for(settings: OperatorSettings, namespace: str, uid: str) -> str:
    return f"{settings.registry_host}/{naming.layer_repository(settings.repository_prefix, namespace, uid)}"


def _layer_config(diff_id: str) -> bytes:
    # An image config that only lists the layer: standard tools can inspect the layer's repository.
    return canonical_json({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}})


def build_and_push(settings: OperatorSettings, registry: RegistryClient, spec: AosLayerSpec, namespace: str,
                   config_map: Any) -> dict[str, Any]:
    """Build (ConfigMaps) or reuse (image) the layer, push its manifest; the status fields."""
    uid = check_uid(spec.uid, "spec.uid")
    version = check_version(spec.version, "spec.version")
    repository = repository_for(settings, namespace, uid)
    reference = f"{repository}:{version.replace('+', '_')}"
    if spec.source.image is not None:
        return _push_from_image(registry, spec, uid, version, reference)
    if not spec.source.configMaps:
        raise SourceError("spec.source: give configMaps or image: a layer needs files")
    files = files_from_config_maps(spec.source, namespace, config_map)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="layer-") as scratch:
        root = Path(scratch) / "rootfs"
        write_tree(files, root)
        layer = build_aos_layer(root, uid, version, store=BlobStore(Path(scratch) / "blobs"),
                                cache_dir=settings.work_dir / "cache")
        config = BytesBlob(_layer_config(layer.diff_id))
        manifest = _manifest(config, layer.descriptor)
        digest = registry.push(reference, manifest, MEDIA_TYPE_MANIFEST,
                               {config.digest: config,
                                layer.descriptor.digest: FileBlob(layer.blob.path, layer.descriptor.digest,
                                                                  layer.descriptor.size)})
    return _status(uid, version, f"{reference}@{digest}", layer.descriptor.digest, layer.diff_id,
                   layer.descriptor.size, layer.descriptor.annotation("io.aosedge.layer.uncompressed-size"))


def _manifest(config: BytesBlob, layer: Descriptor) -> bytes:
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": Descriptor(MEDIA_TYPE_IMAGE_CONFIG, config.digest, config.size).to_json(),
        "layers": [layer.to_json()],
    })


def _push_from_image(registry: RegistryClient, spec: AosLayerSpec, uid: str, version: str, reference: str) -> dict[str, Any]:
    from aos_operator.controller.builder import LazyBlob, image_diff_ids

    assert spec.source.image is not None
    origin = Reference.parse(spec.source.image.reference)
    where = f"spec.source.image {origin}"
    manifest = parse_manifest(registry.pull_manifest(origin).data, where)
    first = manifest.layers[0]
    if first.media_type not in _GZIP_LAYER_TYPES:
        raise SourceError(f"{where}: its first layer is {first.media_type}; an Aos layer is a gzip tar",
                          hint="use an image whose first layer is tar+gzip")
    with tempfile.TemporaryDirectory(prefix="aos-layer-") as scratch:
        diff_id = image_diff_ids(registry, origin, manifest, Path(scratch), where)[0]
        descriptor = layer_descriptor(uid, version, first.digest, first.size, None)
        config = BytesBlob(_layer_config(diff_id))
        target = Reference.parse(reference)
        mount_from = (origin.repository,) if origin.registry == target.registry else ()
        digest = registry.push(reference, _manifest(config, descriptor), MEDIA_TYPE_MANIFEST,
                               {config.digest: config, first.digest: LazyBlob(registry, origin, first, Path(scratch))},
                               mount_from=mount_from)
    return _status(uid, version, f"{reference}@{digest}", first.digest, diff_id, first.size, None)


def _status(uid: str, version: str, ref: str, digest: str, diff_id: str, size: int,
            uncompressed: str | None) -> dict[str, Any]:
    status = {"uid": uid, "version": version, "ref": ref, "digest": digest, "diffId": diff_id, "size": size}
    if uncompressed is not None:
        status["uncompressedSize"] = int(uncompressed)
    return status


def source_digest(spec: AosLayerSpec, namespace: str, config_map: Any, registry: RegistryClient,
                  settings: OperatorSettings) -> str:
    """What a build of the layer reads: spec, repository, ConfigMap files or the image's manifest digest."""
    extra: dict[str, Any] = {"builder": LAYER_BUILDER_VERSION,
                             "repository": repository_for(settings, namespace, spec.uid)}
    files = []
    if spec.source.image is not None:
        origin = Reference.parse(spec.source.image.reference)
        extra["image"] = f"{origin.registry}/{origin.repository}@{registry.pull_manifest(origin).digest}"
    elif spec.source.configMaps:
        files = files_from_config_maps(spec.source, namespace, config_map)
    return content_digest(spec.model_dump(mode="json"), extra, files)


# --- the AosLayer loop ---------------------------------------------------------------------------------


async def reconcile_layer(op: Any, body: Mapping[str, Any]) -> float:
    """One pass over one AosLayer: build and push it when its inputs changed; returns when to look again."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = (namespace, name)
    status = dict(body.get("status") or {})
    try:
        spec = AosLayerSpec.model_validate(dict(body.get("spec") or {}))
        check_uid(spec.uid, "spec.uid")
        check_version(spec.version, "spec.version")
    except ValidationError as error:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        await _write(op, body, _failed("InvalidSpec", message), {})
        return op.settings.resync_seconds
    except InputError as error:
        await _write(op, body, _failed("InvalidSpec", error.message), {})
        return op.settings.resync_seconds
    memo = op.layers.memos.get(key)
    if memo and memo.generation == meta.get("generation") and _source_unchanged(op, spec, namespace, memo):
        return op.settings.resync_seconds
    fetch, read = op.config_maps.reading(("AosLayer", namespace, name),
                                         [ref.name for ref in spec.source.configMaps or []], op.kube.config_map)
    try:
        digest = await op.call(source_digest, spec, namespace, fetch, op.registry, op.settings)
        if digest != status.get("sourceDigest") or not status.get("digest"):
            async def build() -> dict[str, Any]:
                async with op.build_slots:
                    return await op.call(build_and_push, op.settings, op.registry, spec, namespace, op.kube.config_map)

            pushed = await noticed(build(), lambda: _write(
                op, body, [Wanted(RECONCILING, True, "Building", f"building {spec.uid} {spec.version}")], {}))
            log.info("AosLayer %s/%s: pushed %s", namespace, name, pushed["ref"])
            await _write(op, body, _pushed(pushed["ref"]), {**pushed, "sourceDigest": digest})
        else:
            await _write(op, body, _pushed(status.get("ref", "")), {})
    except (SourceError, BuildError, InputError, PackageError) as error:
        delay = op.backoff(("aoslayer/" + namespace, name))
        log.warning("AosLayer %s/%s: build failed, retrying in %.0f s: %s", namespace, name, delay, error)
        await _write(op, body, _failed("BuildFailed", str(error), retrying=True), {})
        return delay
    except RegistryError as error:
        delay = op.backoff(("aoslayer/" + namespace, name))
        log.warning("AosLayer %s/%s: push failed, retrying in %.0f s: %s", namespace, name, delay, error)
        await _write(op, body, _failed("RegistryUnavailable", str(error), retrying=True), {})
        return delay
    op.failures.pop(("aoslayer/" + namespace, name), None)
    op.layers.memos[key] = LayerMemo(meta.get("generation"), time.monotonic(), tuple(sorted(read.items())))
    return op.settings.resync_seconds


def _source_unchanged(op: Any, spec: AosLayerSpec, namespace: str, memo: LayerMemo) -> bool:
    image = spec.source.image.reference if spec.source.image is not None else None
    return source_unchanged(op.config_maps, namespace, image, dict(memo.config_maps), memo.checked_at,
                            op.settings.source_refresh_seconds)


def _pushed(ref: str) -> list[Wanted]:
    return [Wanted(IMAGE_PUSHED, True, "Pushed", ref), Wanted(READY, True, "Pushed", ref),
            Wanted(RECONCILING, False, "Pushed", ref), Wanted(STALLED, False, "Pushed", ref)]


def _failed(reason: str, message: str, *, retrying: bool = False) -> list[Wanted]:
    return [Wanted(READY, False, reason, message),
            Wanted(RECONCILING, retrying, reason, ("retrying with backoff: " if retrying else "") + message),
            Wanted(STALLED, True, reason, message)]


async def _write(op: Any, body: Mapping[str, Any], wanted: list[Wanted], extra: Mapping[str, Any]) -> None:
    status = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    conditions = merge_conditions(status.get("conditions"), wanted, generation)
    update = {key: value for key, value in {**extra, "conditions": conditions, "observedGeneration": generation}.items()
              if status.get(key) != value}
    if not update:
        return
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in status.get("conditions") or ()}
    ready = next(c for c in conditions if c["type"] == READY) if any(c["type"] == READY for c in conditions) else None
    if ready is not None and before.get(READY) != (ready["status"], ready["reason"]):
        kind = "Normal" if ready["status"] == "True" else "Warning"
        kopf.event(dict(body), type=kind, reason=ready["reason"], message=ready["message"][:1000])
    meta = body["metadata"]
    await op.call(op.kube.patch, AOS_LAYER, meta["name"], {"status": update}, meta["namespace"], status=True)
