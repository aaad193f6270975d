"""Reconciling one AosService: validate its config, build and push its packages when their
inputs changed, place its instances revision by revision (rollout_pass), and write its status.

Level-triggered: each pass compares what should be with what is (the in-memory indexes of
AosDevices and AosServiceInstances that kopf keeps) and writes only the differences, so a pass
with nothing to do makes no API request. Blocking work (API calls, builds, pushes) runs in
threads; the event loop stays free.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from aos_operator.api import naming
from aos_operator.api.client import KubeClient
from aos_operator.api.models import (
    AOS_SERVICE,
    AOS_SERVICE_INSTANCE,
    FINALIZER_OPERATOR,
    AosServiceSpec,
    ImageStatus,
)
from aos_operator.bounded import parse_json
from aos_operator.controller import builder, metrics, revisions, rollout_pass
from aos_operator.controller.layers import LAYER_NOT_FOUND, LayerBook, LayerNotFound, LayerView, layer_key
from aos_operator.controller.conditions import (
    CONFIG_VALID,
    IMAGE_PUSHED,
    READY,
    RECONCILING,
    STALLED,
    Wanted,
    merge_conditions,
)
from aos_operator.controller.placement import (
    DeviceView,
    InstanceView,
    PackageRef,
    Reservation,
    ReservationBook,
    SelectionMemo,
    ServiceView,
    reservation,
)
from aos_operator.controller.settings import OperatorSettings
from aos_operator.controller.source import ConfigMapBook, SourceError, source_unchanged
from aos_operator.errors import (
    AosError,
    BuildError,
    ConfigError,
    InputError,
    PackageError,
    RegistryError,
    SignatureError,
    SpecError,
)
from aos_operator.registry import RegistryClient
from aos_operator.service import parse_config_data
from aos_operator.service.description import ServiceDescription
from aos_operator.service.loader import select_service

T = TypeVar("T")
log = logging.getLogger("aos_operator.controller")


class Retry(Exception):
    """The pass could not finish for a reason that time may fix; try again after `delay`."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Pushed(NamedTuple):
    """The status a build adds: the IMAGE_PUSHED condition and the packages' references."""

    conditions: list[Wanted]
    status: dict[str, Any]


@dataclass(frozen=True)
class PackageMemo:
    """When a service's sources were last read, so that passes between changes read nothing."""

    generation: int | None
    source_digest: str
    images: tuple[ImageStatus, ...]
    checked_at: float
    layers: tuple[str, ...] = ()  # the resolved Aos layers (layer_key) the packages were built with
    config_maps: tuple[tuple[str, str], ...] = ()  # (name, resourceVersion) of the ConfigMaps read
    # What a build pushed, until a pass's status write has carried it: one patch, not a second
    # one right after the push (each status patch is also a watch event for every watcher).
    unwritten: Pushed | None = None


@dataclass
class Operator:
    """What every handler shares: settings, clients, and the wake-up signals of service loops."""

    settings: OperatorSettings
    kube: KubeClient
    registry: RegistryClient
    build_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    memos: dict[tuple[str, str], PackageMemo] = field(default_factory=dict)
    parsed: dict[tuple[str, str], tuple[Any, Any, Any, str]] = field(default_factory=dict)  # generation, spec, description, problem
    pending: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # instance -> digest patched
    # The rollout status each service's last pass wrote (rollout_pass.Written), while the body the
    # watch delivered is older than it.
    rollouts: dict[tuple[str, str], Any] = field(default_factory=dict)
    statuses: dict[tuple[str, str], StatusMemo] = field(default_factory=dict)  # each service's last status write
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    layers: LayerBook = field(default_factory=LayerBook)  # pushed AosLayers, and which services use them
    config_maps: ConfigMapBook = field(default_factory=ConfigMapBook)  # ConfigMap versions the watch saw
    reservations: ReservationBook = field(default_factory=ReservationBook)  # per device, from instance events
    selections: SelectionMemo = field(default_factory=SelectionMemo)  # the devices each selector matches
    _devices: dict[str, DeviceView] = field(default_factory=dict)

    def remember_devices(self, devices: Mapping[str, DeviceView]) -> None:
        self._devices = dict(devices)

    def known_devices(self) -> dict[str, DeviceView]:
        return dict(self._devices)

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)

    def wake(self, namespace: str, name: str) -> None:
        self.wakeups.setdefault((namespace, name), asyncio.Event()).set()

    def wake_all(self) -> None:
        for event in self.wakeups.values():
            event.set()

    def backoff(self, key: tuple[str, str]) -> float:
        failures = self.failures.get(key, 0) + 1
        self.failures[key] = failures
        return min(self.settings.retry_min_seconds * 2 ** (failures - 1), self.settings.retry_max_seconds)


# --- status ---------------------------------------------------------------------------------------


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in status.get("conditions") or ():
        if condition.get("type") == kind:
            return condition
    return {}


def _changed(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in wanted.items() if current.get(key) != value}


def _events_for(body: Any, old: Mapping[str, Any], new: list[dict[str, Any]]) -> None:
    """Post an Event when a condition that users watch changes (kopf.event: not filtered by the
    posting level, which only keeps kopf's own log echo quiet)."""
    for condition in new:
        before = _condition(old, condition["type"])
        if (before.get("status"), before.get("reason")) == (condition["status"], condition["reason"]):
            continue
        kind, status, reason, message = condition["type"], condition["status"], condition["reason"], condition["message"]
        if kind == CONFIG_VALID and status == "False":
            kopf.event(body, type="Warning", reason=reason, message=message[:1000])
        elif kind == STALLED and status == "True" and reason not in ("InvalidConfig", "DuplicateServiceId"):
            kopf.event(body, type="Warning", reason=reason, message=message[:1000])
        elif kind == READY and status == "True":
            kopf.event(body, type="Normal", reason="Ready", message=message)
        elif kind == IMAGE_PUSHED and status == "True":
            kopf.event(body, type="Normal", reason="Pushed", message=message)


@dataclass(frozen=True)
class StatusMemo:
    """A service's status as this operator's last write left it (the server's answer), and the
    resourceVersions of the object older than that write. The operator is the status's only
    writer, and the daemon's body lags behind until the watch delivers the write: a pass woken
    meanwhile (by its new instance's event) diffed against the older status and wrote it all again,
    one patch per service in a burst."""

    uid: str
    status: bytes  # compact JSON: a few KiB, where its dicts would take several times that
    version: str  # the resourceVersion the write made
    older: frozenset[str]


def status_now(op: Operator, body: Any) -> dict[str, Any]:
    """The service's status: the body's, or the last write's while the body is older than that."""
    meta = body["metadata"]
    memo = op.statuses.get((meta["namespace"], meta["name"]))
    if memo is not None and memo.uid == meta.get("uid") and meta.get("resourceVersion") in memo.older:
        return dict(parse_json(memo.status))
    return dict(body.get("status") or {})


def status_seen(op: Operator, key: tuple[str, str], version: str) -> None:
    """A watch event of the service: once the body has caught up, the last write is not kept (a
    status is some kilobytes: at 2000 services, tens of MiB if kept)."""
    memo = op.statuses.get(key)
    if memo is not None and version not in memo.older:
        del op.statuses[key]


async def write_status(op: Operator, body: Any, wanted: list[Wanted], extra: Mapping[str, Any]) -> None:
    status = status_now(op, body)
    meta = body["metadata"]
    generation = meta.get("generation")
    conditions = merge_conditions(status.get("conditions"), wanted, generation)
    update = _changed(status, {**extra, "conditions": conditions, "observedGeneration": generation})
    if not update:
        return
    _events_for(body, status, conditions)
    key = (meta["namespace"], meta["name"])
    written = await op.call(op.kube.patch, AOS_SERVICE, meta["name"], {"status": update}, meta["namespace"], status=True)
    seen = str(meta.get("resourceVersion"))
    older = {seen}
    memo = op.statuses.get(key)
    if memo is not None and memo.uid == meta.get("uid"):
        older.add(memo.version)
        if seen in memo.older:
            older |= memo.older  # the body has not caught up with the earlier write either
    op.statuses[key] = StatusMemo(str(meta.get("uid")), json.dumps(written.get("status") or {}, separators=(",", ":")).encode(),
                                  str((written.get("metadata") or {}).get("resourceVersion")), frozenset(older))


# --- the pass -------------------------------------------------------------------------------------


class Claim(NamedTuple):
    """An AosService holding an instance identity (service ID, subject); the oldest one keeps it."""

    created: str
    namespace: str
    name: str


def parse_once(op: Operator, key: tuple[str, str], body: Mapping[str, Any]) -> tuple[Any, Any, Any, str] | ValidationError:
    """(generation, spec, description, problem) of the service's generation, parsed once for the
    identities index and every pass; the spec's ValidationError, not kept, when it is not valid."""
    generation = body.get("metadata", {}).get("generation")
    parsed = op.parsed.get(key)
    if parsed is not None and generation is not None and parsed[0] == generation:
        return parsed
    try:
        spec = AosServiceSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as error:
        return error
    service, problem = _describe(spec, *key)
    op.parsed[key] = parsed = (generation, spec, service, problem)
    return parsed


def identity_of(op: Operator, key: tuple[str, str], body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(service ID, subject) of an AosService, or None when its spec or config is not valid."""
    parsed = parse_once(op, key, body)
    if isinstance(parsed, ValidationError) or parsed[2] is None:
        return None
    _, spec, service, _ = parsed
    return naming.service_id(service.service_id, *key), spec.subject


def _identity_taken(body: Mapping[str, Any], identity: tuple[str, str],
                    claims: Mapping[tuple[str, str], Iterable[Claim]] | None) -> str | None:
    """Why this service may not run: another, older AosService has the same instance identity.
    Instance IDs derive from (service ID, subject, index), so both would drive the same
    containers on a device."""
    meta = body["metadata"]
    mine = Claim(str(meta.get("creationTimestamp") or ""), meta["namespace"], meta["name"])
    holders = sorted({*(claims or {}).get(identity, ()), mine})
    owner = holders[0]
    if owner == mine:
        return None
    return (f"service ID {identity[0]} with subject {identity[1]!r} is already used by AosService "
            f"{owner.namespace}/{owner.name}; two services with one identity would run the same instances. "
            f"Give this service its own service UID in its config (publish.service_uid; identity.id in "
            f"schema 2) or another spec.subject, or delete one of them")


def _describe(spec: AosServiceSpec, namespace: str, name: str) -> tuple[ServiceDescription | None, str]:
    result = parse_config_data(spec.config, f"AosService {namespace}/{name} spec.config")
    if result.errors:
        return None, "; ".join(f"{issue.field or 'config'}: {issue.message}" for issue in result.errors)
    try:
        return select_service(result, spec.item), ""
    except AosError as error:
        return None, error.message


async def _ensure_packages(
    op: Operator, body: Any, spec: AosServiceSpec, service: ServiceDescription, layers: list[LayerView] | None = None
) -> list[ImageStatus]:
    """The service's packages: reused when config, source and resolved layers are unchanged, else built and pushed."""
    meta, status = body["metadata"], body.get("status") or {}
    namespace, name = meta["namespace"], meta["name"]
    key = (namespace, name)
    layers = layers or []
    layers_now = layer_key(layers)
    memo = op.memos.get(key)
    if memo and memo.generation == meta.get("generation") and memo.layers == layers_now \
            and _sources_unchanged(op, spec, namespace, memo):
        return list(memo.images)  # nothing changed since the sources were last read
    repository = builder.repository_for(op.settings, namespace, name)
    names = [ref.name for ref in spec.source.configMaps or []] if spec.source is not None else []
    fetch, read = op.config_maps.reading(("AosService", namespace, name), names, op.kube.config_map)
    source = await op.call(builder.gather_source, spec, namespace, fetch, op.registry)
    digest = builder.source_digest(spec, source, repository, builder.signer_id(op.settings), layers)

    def remember(images: Iterable[ImageStatus], unwritten: Pushed | None = None) -> None:
        if unwritten is None and memo is not None and memo.source_digest == digest:
            unwritten = memo.unwritten  # the same packages, still to be written
        op.memos[key] = PackageMemo(meta.get("generation"), digest, tuple(images), time.monotonic(), layers_now,
                                    tuple(sorted(read.items())), unwritten)

    # After a restart the status remembers what was built: no rebuild for unchanged inputs.
    recorded = memo.images if memo else tuple(ImageStatus.model_validate(i) for i in status.get("images") or ())
    if recorded and (memo.source_digest if memo else status.get("sourceDigest")) == digest:
        remember(recorded)
        return list(recorded)
    known = revisions.by_source(revisions.of(status), digest)
    if known is not None:  # a spec back to an earlier revision's inputs: its packages, no rebuild
        images = [ImageStatus.model_validate(image) for image in known["images"]]
        remember(images)
        log.info("AosService %s/%s: inputs of revision %s, reusing %s", namespace, name, known["revision"], known["digest"])
        return images
    log.info("AosService %s/%s: building and pushing %s", namespace, name, service.version)

    async def build() -> list[ImageStatus]:
        async with op.build_slots:
            return await op.call(builder.build_and_push, op.settings, op.registry, service, source, repository, layers)

    images = await builder.noticed(build(), lambda: write_status(
        op, body, [Wanted(RECONCILING, True, "Building", f"building {service.version}")], {}))
    summary = ", ".join(f"{image.architecture}: {image.ref}" for image in images)
    remember(images, Pushed([Wanted(IMAGE_PUSHED, True, "Pushed", summary)], {
        "sourceDigest": digest,
        "images": [image.model_dump(exclude_none=True) for image in images],
        "image": images[0].model_dump(exclude_none=True),
        "version": service.version,
    }))
    return images


def _sources_unchanged(op: Operator, spec: AosServiceSpec, namespace: str, memo: PackageMemo) -> bool:
    image = spec.source.image.reference if spec.source is not None and spec.source.image is not None else None
    return source_unchanged(op.config_maps, namespace, image, dict(memo.config_maps), memo.checked_at,
                            op.settings.source_refresh_seconds)


def _service_view(body: Any, spec: AosServiceSpec, service: ServiceDescription, images: list[ImageStatus]) -> ServiceView:
    meta = body["metadata"]
    packages = {}
    for image in images:
        repository = image.ref.split("@", 1)[0].rsplit(":", 1)[0]
        packages[image.architecture or ""] = PackageRef(repository, image.digest, image.architecture or "")
    return ServiceView(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        service_id=naming.service_id(service.service_id, meta["namespace"], meta["name"]),
        subject=spec.subject,
        version=service.version,
        instances_per_device=spec.instancesPerDevice
        if spec.instancesPerDevice is not None
        else service.instances.min_instances,
        runners=service.runners,
        selector=spec.selector,
        packages=packages,
        reservation=reservation(service.quotas.cpu_dmips, service.quotas.ram,
                                service.requested_resources.cpu_dmips if service.requested_resources else None,
                                service.requested_resources.ram if service.requested_resources else None,
                                service.skip_resource_limits, devices=[device.name for device in service.devices]),
        resources=tuple(service.resources),
    )


async def release_stopped(op: Operator, instances: Iterable[Mapping[str, Any]], devices: Mapping[str, DeviceView]) -> None:
    """Remove our finalizer from removed instances once their agent reports them stopped, their
    device is gone, or the agent has not answered within the stop timeout."""
    now = datetime.now(UTC)
    for body in instances:
        meta = body["metadata"]
        if not meta.get("deletionTimestamp") or FINALIZER_OPERATOR not in (meta.get("finalizers") or ()):
            continue
        phase = (body.get("status") or {}).get("phase")
        device = (body.get("spec") or {}).get("device")
        since = datetime.fromisoformat(meta["deletionTimestamp"].replace("Z", "+00:00"))
        overdue = (now - since).total_seconds() > op.settings.instance_stop_timeout
        if phase in ("Stopped", "Failed", None) or device not in devices or overdue:
            if overdue and phase not in ("Stopped", "Failed", None):
                log.warning("instance %s/%s: no stop report from device %s; releasing it", meta["namespace"], meta["name"], device)
            remaining = [f for f in meta.get("finalizers") or () if f != FINALIZER_OPERATOR]
            patch = [
                {"op": "test", "path": "/metadata/finalizers", "value": meta["finalizers"]},
                {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
            ]
            try:
                await op.call(op.kube.patch, AOS_SERVICE_INSTANCE, meta["name"], patch, meta["namespace"])
            except ApiException as error:
                if error.status not in (404, 409, 422):
                    raise


async def reconcile(
    op: Operator,
    body: Any,
    devices: Mapping[str, DeviceView],
    instance_bodies: list[Mapping[str, Any]],
    reserved_elsewhere: Mapping[str, Reservation] | None = None,
    claims: Mapping[tuple[str, str], Iterable[Claim]] | None = None,
) -> float:
    """One pass over one AosService; returns when to look again (seconds)."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    parsed = parse_once(op, key, body)
    if isinstance(parsed, ValidationError):
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in parsed.errors())
        await write_status(op, body, _invalid("InvalidSpec", message), {})
        return op.settings.resync_seconds
    _, spec, service, problem = parsed
    if spec.suspend:
        await write_status(op, body, [Wanted(RECONCILING, False, "Suspended", "spec.suspend is true")], {})
        return op.settings.resync_seconds
    if service is None:
        await write_status(op, body, _invalid("InvalidConfig", problem), {})
        return op.settings.resync_seconds
    taken = _identity_taken(body, (naming.service_id(service.service_id, *key), spec.subject), claims)
    if taken:
        await write_status(op, body, _invalid("DuplicateServiceId", taken), {})
        return op.settings.resync_seconds
    op.layers.use(key[0], key[1], (requirement.uid for requirement in service.layers))
    try:
        layers = op.layers.resolve(key[0], service)
    except LayerNotFound as error:
        # Nothing is built or dispatched; the instances that run keep their package.
        log.info("AosService %s/%s: %s", *key, error.message)
        await write_status(op, body, _layer_not_found(error.message), {})
        return op.settings.resync_seconds
    try:
        images = await _ensure_packages(op, body, spec, service, layers)
    except (SourceError, BuildError, InputError, PackageError, ConfigError) as error:
        delay = op.backoff(key)
        log.warning("AosService %s/%s: build failed, retrying in %.0f s: %s", *key, delay, error)
        await write_status(op, body, _stalled(IMAGE_PUSHED, "BuildFailed", str(error)), {})
        return delay
    except RegistryError as error:
        delay = op.backoff(key)
        log.warning("AosService %s/%s: push failed, retrying in %.0f s: %s", *key, delay, error)
        await write_status(op, body, _stalled(IMAGE_PUSHED, "RegistryUnavailable", str(error)), {})
        return delay
    except SignatureError as error:  # the operator's own key cannot be used
        delay = op.backoff(key)
        log.warning("AosService %s/%s: signing failed, retrying in %.0f s: %s", *key, delay, error)
        await write_status(op, body, _stalled(IMAGE_PUSHED, "SigningFailed", str(error)), {})
        return delay
    view = _service_view(body, spec, service, images)
    instances = [InstanceView.from_body(instance) for instance in instance_bodies]
    memo = op.memos[key]
    pushed = memo.unwritten or Pushed([], {})
    try:
        step = await rollout_pass.run(op, body, spec, view, devices, instances, images, memo.source_digest,
                                      reserved_elsewhere)
    except SpecError as error:
        await write_status(op, body, [*pushed.conditions, *_invalid("InvalidSpec", error.message)], pushed.status)
        _written(op, key, memo)
        return op.settings.resync_seconds
    await release_stopped(op, instance_bodies, devices)
    current = status_now(op, body)
    await write_status(
        op,
        body,
        [*pushed.conditions, Wanted(CONFIG_VALID, True, "Valid", f"schema version {service.dialect}"), *step.conditions],
        {
            **pushed.status,
            **step.status,
            "rollout": _replacing(current.get("rollout"), step.status["rollout"]),
            "serviceId": view.service_id,
            "version": service.version,
        },
    )
    _written(op, key, memo)
    op.failures.pop(key, None)
    if step.wake_in is not None:
        return max(0.5, min(op.settings.resync_seconds, step.wake_in + 0.5))
    return op.settings.resync_seconds


def _written(op: Operator, key: tuple[str, str], memo: PackageMemo) -> None:
    """The pushed packages are in the status now (unless a newer build replaced the memo meanwhile)."""
    if memo.unwritten is not None and op.memos.get(key) is memo:
        op.memos[key] = replace(memo, unwritten=None)


def _replacing(current: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    """A merge patch value that replaces `current` by `wanted` (null for keys that went away),
    equal to `current` when nothing changed so that no write happens."""
    if isinstance(current, dict) and {k: v for k, v in current.items() if v is not None} == wanted:
        return current
    removed = {key: None for key in current or {} if key not in wanted} if isinstance(current, dict) else {}
    return {**removed, **wanted}


def _invalid(reason: str, message: str) -> list[Wanted]:
    """The config cannot be used: say so, and leave what runs alone."""
    metrics.count_error(reason)  # each pass that ends so
    return [
        Wanted(CONFIG_VALID, False, reason, message),
        Wanted(READY, False, reason, message),
        Wanted(RECONCILING, False, reason, message),
        Wanted(STALLED, True, reason, message),
    ]


def _layer_not_found(message: str) -> list[Wanted]:
    return [
        Wanted(READY, False, LAYER_NOT_FOUND, message),
        Wanted(RECONCILING, False, LAYER_NOT_FOUND, "waiting for an AosLayer in range: " + message),
        Wanted(STALLED, True, LAYER_NOT_FOUND, message),
    ]


def _stalled(kind: str, reason: str, message: str) -> list[Wanted]:
    metrics.count_error(reason)  # each pass that ends so
    return [
        Wanted(kind, False, reason, message),
        Wanted(READY, False, reason, message),
        Wanted(RECONCILING, True, reason, "retrying with backoff: " + message),
        Wanted(STALLED, True, reason, message),
    ]
