"""The kopf operator: handler registration and the process entry point (`aosctl operator`).

One daemon per AosService runs reconciler passes, woken when its spec, its instances or the
placement-relevant facts of a device change, and at least every `resync_seconds`. kopf's
indexes keep AosDevices and AosServiceInstances in memory, so passes read no lists from the
API. Deletion goes through kopf's finalizer: the handler removes the service's instances and
waits, for a bounded time, until their agents report them stopped.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from aos_operator.api.client import API_ERRORS, KubeClient, error_text, kopf_connection, kopf_session
from aos_operator.api.models import AOS_SERVICE_INSTANCE, GROUP, LABEL_SERVICE, VERSION
from aos_operator.api.naming import label_value
from aos_operator.api.selectors import equality_selector
from aos_operator.controller import builder, layers as aos_layers, liveness, metrics, reconciler, rollout_pass
from aos_operator.controller.placement import DeviceView, Reservation
from aos_operator.controller.reconciler import Operator, release_stopped
from aos_operator.controller.revisions import ROLLOUT_ANNOTATIONS
from aos_operator.controller.settings import OperatorSettings
from aos_operator.metrics_http import serve_metrics
from aos_operator.packaging import registry_client

log = logging.getLogger("aos_operator.controller")
SERVICES = (GROUP, VERSION, "aosservices")
DEVICES = (GROUP, VERSION, "aosdevices")
INSTANCES = (GROUP, VERSION, "aosserviceinstances")
LAYERS = (GROUP, VERSION, "aoslayers")
CONFIG_MAPS = ("", "v1", "configmaps")
FINALIZER = f"{GROUP}/operator"
REQUEST_SLOTS = 16  # kopf's requests at once besides its watches (a burst of creations queues here)


class _NoDiffBase(kopf.DiffBaseStorage):
    """No diff base. kopf keeps the last handled spec in an annotation for on.create/on.update
    handlers, which this operator does not have (its daemons compare generations): that was one
    more patch per service and per spec change, and the spec twice in etcd and in every watch
    event. Every change looks like no change to kopf; deletion is seen by its timestamp."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        # kopf's essence is a deep copy of the whole body, made twice per watch event and copied
        # again to drop its progress marks: 7 % of the operator's CPU at 2000 services, for a diff
        # that nothing here reads.
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.build(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def _devices_of(index: kopf.Index[str, DeviceView]) -> dict[str, DeviceView]:
    return {name: view for name, store in index.items() for view in store}


@dataclass
class _DeviceSnapshot:
    """The devices as passes see them, made again only when a device's placement facts changed
    (its fingerprint, or it was deleted), not in every pass: 200 passes a second at 2000 services.
    A pass may keep it across its awaits: it is replaced, never changed."""

    fingerprints: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    changes: int = 0
    made_at: int = -1
    views: dict[str, DeviceView] = field(default_factory=dict)

    def seen(self, name: str, body: Mapping[str, Any] | None) -> bool:
        """A device event (body None: deleted); whether placement may see something new."""
        if body is None:
            self.fingerprints.pop(name, None)
        else:
            fingerprint = DeviceView.from_body(body).fingerprint()
            if self.fingerprints.get(name) == fingerprint:
                return False  # a heartbeat
            self.fingerprints[name] = fingerprint
        self.changes += 1
        return True

    def of(self, index: kopf.Index[str, DeviceView]) -> dict[str, DeviceView]:
        if self.made_at != self.changes:
            self.views, self.made_at = _devices_of(index), self.changes
        return self.views


def _kept(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an instance to keep, without its managedFields: 43 % of its bytes, read by no pass."""
    meta = {key: value for key, value in body.get("metadata", {}).items() if key != "managedFields"}
    return copy.deepcopy({**body, "metadata": meta})


def _instances_of(index: kopf.Index[tuple[str, str], Mapping[str, Any]], namespace: str, name: str) -> list[Mapping[str, Any]]:
    return list(index.get((namespace, name), ()))


def make_registry(op: Operator) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    generations: dict[tuple[str, str], Any] = {}
    layer_generations: dict[tuple[str, str], Any] = {}
    deleting: dict[tuple[str, str], Mapping[str, Any]] = {}
    # Per AosService: (generation, identity) so that status-only events parse no config.
    identities: dict[tuple[str, str], tuple[Any, tuple[str, str] | None]] = {}
    fleet = _DeviceSnapshot()
    heard = liveness.LivenessBook(op.settings.device_grace_seconds)

    def identity_of(namespace: str, name: str, body: Mapping[str, Any]) -> tuple[str, str] | None:
        generation = body.get("metadata", {}).get("generation")
        cached = identities.get((namespace, name))
        if cached is None or cached[0] != generation:
            cached = (generation, reconciler.identity_of(op, (namespace, name), body))
            identities[(namespace, name)] = cached
        return cached[1]

    @kopf.on.startup(registry=registry, id="configure")
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.diffbase_storage = _NoDiffBase()
        settings.posting.level = logging.WARNING  # our own events say what happened; no log echo
        settings.networking.request_timeout = 60
        settings.watching.server_timeout = 300
        if op.settings.peering:
            settings.peering.name = op.settings.peering
        sweeper = asyncio.create_task(_sweep(), name="aos-instance-sweeper")
        op.tasks.append(sweeper)
        heard.started = heard.clock()
        op.tasks.append(asyncio.create_task(liveness.mark_silent(op.kube, heard, max(0.5, min(5.0, heard.grace / 4))),
                                            name="aos-device-liveness"))

    @kopf.on.cleanup(registry=registry, id="close-clients")
    async def stop(**_: Any) -> None:
        for task in op.tasks:
            task.cancel()
        await asyncio.gather(*op.tasks, return_exceptions=True)
        await asyncio.to_thread(op.registry.close)
        await asyncio.to_thread(op.kube.close)

    # Index and event handlers are coroutines: kopf runs plain functions in its thread pool, and
    # these share the operator's state (wake-up events, books) with the event loop.
    @kopf.index(*DEVICES, registry=registry, id="devices")
    async def devices(name: str, body: kopf.Body, **_: Any) -> dict[str, DeviceView]:
        return {name: DeviceView.from_body(body)}

    @kopf.index(*INSTANCES, registry=registry, id="instances")
    async def instances(namespace: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Mapping[str, Any]]:
        return {(namespace, body.get("spec", {}).get("service", "")): _kept(body)}

    @kopf.index(*SERVICES, registry=registry, id="identities")
    async def identity_claims(namespace: str, name: str, body: kopf.Body, meta: kopf.Meta,
                        **_: Any) -> dict[tuple[str, str], reconciler.Claim] | None:
        identity = identity_of(namespace, name, body)
        if identity is None:
            return None
        return {identity: reconciler.Claim(str(meta.get("creationTimestamp") or ""), namespace, name)}

    @kopf.index(*LAYERS, registry=registry, id="layers")
    async def layers(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
        return {(namespace, name): aos_layers.LayerView.from_body(body)}

    @kopf.on.event(*LAYERS, registry=registry, id="layer-changed")
    async def layer_changed(namespace: str, name: str, body: kopf.Body, meta: kopf.Meta, type: str | None, **_: Any) -> None:
        # A new pushed version (or one gone) wakes the services that list its uid: they resolve again.
        for uid in op.layers.update(namespace, name, None if type == "DELETED" else body):
            for service in op.layers.users_of(namespace, uid):
                op.wake(namespace, service)
        if type != "DELETED":
            key = (namespace, name)
            if layer_generations.get(key) != meta.get("generation"):
                layer_generations[key] = meta.get("generation")
                op.layers.wakeups.setdefault(key, asyncio.Event()).set()
        else:
            layer_generations.pop((namespace, name), None)

    @kopf.daemon(*LAYERS, registry=registry, id="layer", cancellation_timeout=10.0)
    async def layer_loop(namespace: str, name: str, body: kopf.Body, **_: Any) -> None:
        key = (namespace, name)
        wakeup = op.layers.wakeups.setdefault(key, asyncio.Event())
        try:
            while True:
                wakeup.clear()
                try:
                    delay = await aos_layers.reconcile_layer(op, body)
                except API_ERRORS as error:
                    delay = op.backoff(("aoslayer/" + namespace, name))
                    log.warning("AosLayer %s/%s: %s; retrying in %.0f s", namespace, name, error_text(error), delay)
                except Exception:  # a bug: keep the operator alive and say so loudly
                    delay = op.backoff(("aoslayer/" + namespace, name))
                    log.exception("AosLayer %s/%s: reconcile failed; retrying in %.0f s", namespace, name, delay)
                try:
                    await asyncio.wait_for(wakeup.wait(), timeout=delay)
                except TimeoutError:
                    pass
        finally:
            op.layers.wakeups.pop(key, None)
            op.layers.memos.pop(key, None)
            op.config_maps.forget(("AosLayer", namespace, name))

    @kopf.on.event(*CONFIG_MAPS, registry=registry, id="configmap-changed")
    async def config_map_changed(namespace: str, name: str, meta: kopf.Meta, type: str | None, **_: Any) -> None:
        # Only the version is kept: a changed ConfigMap wakes whoever read it, and they read it again.
        for kind, reader_namespace, reader in op.config_maps.seen(
                namespace, name, None if type == "DELETED" else str(meta.get("resourceVersion") or "")):
            if kind == "AosService":
                op.wake(reader_namespace, reader)
            else:
                op.layers.wakeups.setdefault((reader_namespace, reader), asyncio.Event()).set()

    @kopf.on.event(*DEVICES, registry=registry, id="device-changed")
    async def device_changed(name: str, body: kopf.Body, type: str | None, **_: Any) -> None:
        heard.device_seen(name, None if type == "DELETED" else body)
        if fleet.seen(name, None if type == "DELETED" else body):
            op.wake_all()

    @kopf.on.event(*INSTANCES, registry=registry, id="instance-changed")
    async def instance_changed(namespace: str, name: str, body: kopf.Body, type: str | None, **_: Any) -> None:
        service = body.get("spec", {}).get("service")
        op.reservations.update(namespace, name, None if type == "DELETED" else body)
        if service:
            op.wake(namespace, service)
        if type == "DELETED" or not body.get("metadata", {}).get("deletionTimestamp"):
            deleting.pop((namespace, name), None)
        else:
            deleting[(namespace, name)] = _kept(body)

    @kopf.on.event(*SERVICES, registry=registry, id="service-changed")
    async def service_changed(namespace: str, name: str, meta: kopf.Meta, status: kopf.Status, type: str | None,
                              **_: Any) -> None:
        reconciler.status_seen(op, (namespace, name), str(meta.get("resourceVersion")))
        rollout_pass.status_seen(op, (namespace, name), str(meta.get("uid")), status)
        if type == "DELETED":
            generations.pop((namespace, name), None)
            op.parsed.pop((namespace, name), None)  # the identities index may have parsed it after its loop ended
            _, released = identities.pop((namespace, name), (None, None))
            for other, (_, identity) in identities.items():  # a duplicate may take the identity over now
                if released is not None and identity == released:
                    op.wake(*other)
            return
        # The generation, and the annotations `aosctl rollout undo/resume` write (no new generation).
        annotations = meta.get("annotations") or {}
        generation = (meta.get("generation"), *(annotations.get(key) for key in ROLLOUT_ANNOTATIONS))
        if generations.get((namespace, name)) != generation:
            generations[(namespace, name)] = generation
            op.wake(namespace, name)

    @kopf.daemon(*SERVICES, registry=registry, id="reconcile", cancellation_timeout=10.0)
    async def service_loop(
        namespace: str,
        name: str,
        body: kopf.Body,
        devices: kopf.Index[str, DeviceView],
        instances: kopf.Index[tuple[str, str], Mapping[str, Any]],
        identities: kopf.Index[tuple[str, str], reconciler.Claim],
        layers: kopf.Index[tuple[str, str], Any],
        **_: Any,
    ) -> None:
        key = (namespace, name)
        wakeup = op.wakeups.setdefault(key, asyncio.Event())
        try:
            while True:
                wakeup.clear()
                op.layers.remember({k: view for k, store in layers.items() for view in store if view is not None})
                delay = await _guarded_pass(op, body, fleet.of(devices), _instances_of(instances, namespace, name),
                                            op.reservations.elsewhere(namespace, name), identities)
                try:
                    await asyncio.wait_for(wakeup.wait(), timeout=delay)
                except TimeoutError:
                    pass
        finally:
            op.wakeups.pop(key, None)
            op.memos.pop(key, None)
            op.parsed.pop(key, None)
            op.pending.pop(key, None)
            op.rollouts.pop(key, None)
            op.statuses.pop(key, None)
            op.layers.use(namespace, name, ())
            op.config_maps.forget(("AosService", namespace, name))

    @kopf.on.delete(*SERVICES, registry=registry, id="release-instances")
    async def service_deleted(
        namespace: str, name: str, devices: kopf.Index[str, DeviceView], logger: logging.Logger, **_: Any
    ) -> None:
        selector = equality_selector({LABEL_SERVICE: label_value(name)})
        while True:
            items, _version = await op.call(op.kube.list, AOS_SERVICE_INSTANCE, namespace, selector)
            items = [item for item in items if (item.get("spec") or {}).get("service") == name]
            if not items:
                logger.info("every instance is stopped and removed")
                return
            for item in items:
                if not item["metadata"].get("deletionTimestamp"):
                    await op.call(op.kube.delete, AOS_SERVICE_INSTANCE, item["metadata"]["name"], namespace)
            await release_stopped(op, items, _devices_of(devices))
            await asyncio.sleep(1.0)

    async def _sweep() -> None:
        """Instances whose service is gone (deleted while the operator was down) still get released."""
        while True:
            await asyncio.sleep(5.0)
            try:
                await release_stopped(op, list(deleting.values()), op.known_devices())
            except API_ERRORS as error:
                log.warning("instance sweep failed, will retry: %s", error_text(error))

    return registry


async def _guarded_pass(op: Operator, body: kopf.Body, devices: dict[str, DeviceView], instances: list[Mapping[str, Any]],
                        reserved_elsewhere: Mapping[str, Reservation] | None = None,
                        claims: Mapping[tuple[str, str], Iterable[reconciler.Claim]] | None = None) -> float:
    """One reconciler pass; API and network trouble becomes a retry, never a crashed operator."""
    meta = body.get("metadata", {})
    key = (meta.get("namespace", ""), meta.get("name", ""))
    op.remember_devices(devices)
    started, result = time.monotonic(), "error"
    try:
        delay = await reconciler.reconcile(op, body, devices, instances, reserved_elsewhere, claims)
        result = "ok"
        return delay
    except API_ERRORS as error:
        metrics.count_error("ApiError")
        delay = op.backoff(key)
        log.warning("AosService %s/%s: %s; retrying in %.0f s", *key, error_text(error), delay)
        return delay
    except Exception:  # a bug: keep the operator alive and say so loudly
        metrics.count_error("InternalError")
        delay = op.backoff(key)
        log.exception("AosService %s/%s: reconcile failed; retrying in %.0f s", *key, delay)
        return delay
    finally:
        metrics.PASSES.labels(result=result).inc()
        metrics.PASS_SECONDS.observe(time.monotonic() - started)


def register_login(handlers: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """kopf logs in with the operator's own connection settings, on a bounded session (kopf_session)."""
    connections, connection = _connections(settings), settings.connection

    @kopf.on.login(registry=handlers, id="login")
    async def login(**kwargs: Any) -> Any:
        if connection.server:
            info = kopf.ConnectionInfo(server=connection.server, insecure=True)
        elif connection.kubeconfig:  # kopf's own login reads only $KUBECONFIG and ~/.kube/config
            info = kopf_connection(connection)
        else:
            info = await asyncio.to_thread(kopf.login_via_client, **kwargs)
        return None if info is None else kopf_session(info, connections)


def _connections(settings: OperatorSettings) -> int:
    """kopf's connections: one per watch stream, held for the stream's life (per namespace four
    resources and peering, and one spare; AosDevices and cluster peering once), and REQUEST_SLOTS
    for its patches and events."""
    return 6 * max(1, len(settings.namespaces)) + 2 + REQUEST_SLOTS


async def run(settings: OperatorSettings, *, stop_flag: asyncio.Event | threading.Event | None = None,
              ready_flag: asyncio.Event | threading.Event | None = None) -> None:
    kube = KubeClient(settings.connection, user_agent="aos-operator")
    builder.signing_key(settings)  # trust: a missing or unreadable signing key stops the start
    registry = registry_client(
        insecure=settings.registry_insecure,
        ca_file=settings.registry_ca,
        auth_file=settings.registry_auth,
        limits=settings.registry_limits,
        insecure_registries=settings.registry_insecure_hosts,
    )
    op = Operator(settings, kube, registry, build_slots=asyncio.Semaphore(settings.build_concurrency))
    handlers = make_registry(op)
    register_login(handlers, settings)
    served = serve_metrics(settings.metrics_address, metrics.REGISTRY) if settings.metrics_address else None
    try:
        await _operate(settings, handlers, stop_flag, ready_flag)
    finally:
        if served is not None:
            served.close()


async def _operate(settings: OperatorSettings, handlers: kopf.OperatorRegistry,
                   stop_flag: asyncio.Event | threading.Event | None,
                   ready_flag: asyncio.Event | threading.Event | None) -> None:
    await kopf.operator(
        registry=handlers,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=settings.liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
