"""KubeEmulator: KMock's Kubernetes scaffold with an object store that behaves like an API server.

KMock (pinned in pyproject) gives the HTTP plumbing, request parsing and recording, discovery
and the reaction DSL (`kube['patch', ...] << 500`). Its own KubernetesEmulator stores request
bodies as sent, mutates state before user reactions run, and has no resourceVersion, selectors,
PUT, status isolation or garbage collection, so this class derives from KubernetesScaffold and
serves every resource request itself, after user reactions had their chance.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import datetime
import json
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import k8s_views

from tests.harness import kmock_fixes
from tests.harness.faults import STATUS_REASONS, FaultPlan, FaultRule, RequestFacts
from tests.harness.metrics import Metrics, RequestKey
from tests.harness.patching import PatchError, apply_patch
from tests.cluster.proxy import BlockMode, ClientProxy
from tests.harness.resources import (
    BUILTIN_RESOURCES, CRD_DIR, SYSTEM_NAMESPACES, ResourceSpec, ResourceTable, load_crds, specs_from_crd,
)
from tests.harness.selectors import SelectorError, object_matcher, parse_field_selector, parse_label_selector

kmock_fixes.apply()

Object = dict[str, Any]
ADMIN_PREFIX = "/_harness/"
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as the API server's generateName suffixes
_TRUE = {"1", "t", "true", "yes"}


class ApiError(Exception):
    """An API answer other than success, rendered as a `kind: Status` body."""

    def __init__(self, status: int, message: str, reason: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or STATUS_REASONS.get(status, "InternalError")
        self.message = message
        self.details = dict(details or {})

    def body(self) -> Object:
        return {
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": self.status, "reason": self.reason, "message": self.message, "details": self.details,
        }


class _ServeNatively(Exception):
    """Raised by the fallback reaction: no user reaction answered, the store serves the request."""


@dataclass(frozen=True)
class _Event:
    revision: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: Object  # the new state; for DELETED the final state
    old: Object | None


@dataclass(eq=False)
class _Watcher:
    namespace: str | None
    matches: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[tuple[str, Object] | None] = field(default_factory=asyncio.Queue)

    def _visible(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj.get("metadata", {}).get("namespace") != self.namespace:
            return False
        return self.matches(obj)

    def translate(self, event: _Event) -> tuple[str, Object] | None:
        """The event as this watcher sees it: objects entering or leaving its selector are ADDED/DELETED."""
        now = self._visible(event.obj)
        if event.type == "ADDED":
            return ("ADDED", event.obj) if now else None
        if event.type == "DELETED":
            return ("DELETED", event.obj) if now else None
        before = self._visible(event.old)
        if before and now:
            return "MODIFIED", event.obj
        if now:
            return "ADDED", event.obj
        if before:
            return "DELETED", event.obj
        return None

    def offer(self, event: _Event) -> None:
        translated = self.translate(event)
        if translated is not None:
            self.queue.put_nowait(translated)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _param_bool(params: Mapping[str, str], name: str) -> bool:
    return str(params.get(name, "")).lower() in _TRUE


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _without_metadata(obj: Mapping[str, Any], *, drop_status: bool) -> dict[str, Any]:
    return {key: value for key, value in obj.items()
            if key != "metadata" and not (drop_status and key == "status")}


@attrs.define(kw_only=True, eq=False)
class KubeEmulator(kmock.KubernetesScaffold):
    """An in-memory Kubernetes API server for tests: `async with KubeEmulator() as kube: kube.url`."""

    host: str = "127.0.0.1"
    port: int = 0
    crd_dir: Path | None = CRD_DIR  # CRDs to declare and store at start; None for none
    strict_namespaces: bool = True  # creating in a missing namespace is 404, as on a real server
    history_limit: int | None = 20  # object versions kept for `kube.objects[...].history`
    event_log_limit: int = 20000  # watch events kept per resource for `resourceVersion` resumption
    bookmark_interval: float = 60.0  # idle seconds before a BOOKMARK (when the client allows them)
    default_watch_timeout: float = 1800.0  # a watch without `timeoutSeconds` ends after this
    gc_delay: float = 0.0  # seconds between an owner's removal and the collection of dependents
    keep_requests: bool = True  # KMock's request log (`kube.requests`); off for long benchmarks

    metrics: Metrics = attrs.field(factory=Metrics, init=False)
    faults: FaultPlan = attrs.field(factory=FaultPlan, init=False)
    _table: ResourceTable = attrs.field(factory=ResourceTable, init=False)
    _objects: k8s_views.ObjectsArray = attrs.field(factory=k8s_views.ObjectsArray, init=False)
    _revision: int = attrs.field(default=0, init=False)
    _uids: dict[str, tuple[ResourceSpec, str | None, str]] = attrs.field(factory=dict, init=False)
    _orphaning: set[str] = attrs.field(factory=set, init=False)
    _watchers: dict[ResourceSpec, set[_Watcher]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False)
    _logs: dict[ResourceSpec, collections.deque[_Event]] = attrs.field(factory=dict, init=False)
    _evicted: dict[ResourceSpec, int] = attrs.field(factory=dict, init=False)
    _proxies: dict[str, ClientProxy] = attrs.field(factory=dict, init=False)
    _native: Any = attrs.field(default=None, init=False)
    _builtin_payloads: frozenset[int] = attrs.field(default=frozenset(), init=False)
    _runner: aiohttp.web.ServerRunner | None = attrs.field(default=None, init=False)
    _url: str | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Below user reactions, above the scaffold's catch-all 404: resource requests come to us.
        self._native = self.fallback[self._is_resource_request] << self._serve_natively
        self._builtin_payloads = frozenset(id(payload) for payload in self._payloads)
        for spec in BUILTIN_RESOURCES:
            self.declare(spec)
        for namespace in SYSTEM_NAMESPACES:
            self.ensure_namespace(namespace)
        for crd in load_crds(self.crd_dir) if self.crd_dir is not None else []:
            self.create(crd)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:  # type: ignore[override]
        if self._url is None:
            raise RuntimeError("the emulator is not serving: use `async with KubeEmulator() as kube`")
        return self._url

    async def __aenter__(self) -> KubeEmulator:
        await super().__aenter__()
        if self._runner is None:
            server = aiohttp.web.Server(self, handler_cancellation=True)
            self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2.0)
            await self._runner.setup()
            site = aiohttp.web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await site.start()
            host, port = self._runner.addresses[0][:2]
            self._url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if self._entered == 1 and self._runner is not None:
            self.close_watches()
            for proxy in list(self._proxies.values()):
                await proxy.close()
            self._proxies.clear()
            await self._runner.cleanup()
            self._runner = None
            self._url = None
        await super().__aexit__(exc_type, exc_value, traceback)

    def close_watches(self) -> None:
        """End every open watch stream (clients reconnect, as after an API server restart)."""
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.queue.put_nowait(None)

    # --- declarations and seeding (call on the emulator's event loop thread) ------------------

    def declare(self, spec: ResourceSpec) -> None:
        """Serve a resource and advertise it in discovery."""
        self._table.add(spec)
        self.resources[kmock.resource(spec.group, spec.version, spec.plural)] = kmock.ResourceInfo(
            kind=spec.kind, singular=spec.singular, namespaced=spec.namespaced, verbs=set(spec.verbs),
            shortnames=set(spec.short_names), categories=set(spec.categories),
            subresources=set(spec.subresources),
        )

    def create(self, body: Mapping[str, Any], *, namespace: str | None = None) -> Object:
        """Create an object as a POST would (stamped, with events); the resource comes from apiVersion/kind."""
        spec = self._spec_for_body(body)
        return self._create(spec, namespace or _meta(body).get("namespace"), copy.deepcopy(dict(body)))

    def get(self, resource: str, namespace: str | None, name: str) -> Object | None:
        """The live object, or None; `resource` is "plural.group" or "group/version/plural"."""
        return self._current(self._spec_named(resource), namespace, name)

    def list(self, resource: str, namespace: str | None = None, label_selector: str | None = None) -> list[Object]:
        spec = self._spec_named(resource)
        matches = object_matcher(parse_label_selector(label_selector), ())
        return [obj for obj in self._live(spec, namespace) if matches(obj)]

    def patch(self, resource: str, namespace: str | None, name: str, patch: Any, *,
              content_type: str = "application/merge-patch+json", subresource: str | None = None) -> Object:
        """Patch an object as a PATCH request would (merge-patch unless told otherwise)."""
        return self._patch(self._spec_named(resource), namespace, name, patch, content_type, subresource)

    def delete(self, resource: str, namespace: str | None, name: str,
               propagation_policy: str | None = None) -> Object:
        """Delete an object as a DELETE request would (finalizers and garbage collection included)."""
        options = {"propagationPolicy": propagation_policy} if propagation_policy else {}
        return self._delete(self._spec_named(resource), namespace, name, options)

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Object:
        existing = self._current(self._table.get("", "v1", "namespaces"), None, name)  # type: ignore[arg-type]
        if existing is not None:
            return existing
        return self.create({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        })

    def create_node(self, name: str, labels: Mapping[str, str] | None = None,
                    architecture: str = "amd64", os: str = "linux") -> Object:
        """A Node with the well-known labels plus `labels`, Ready."""
        return self.create({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/arch": architecture, "kubernetes.io/os": os,
                **(labels or {}),
            }},
            "spec": {},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "lastTransitionTime": _now(), "lastHeartbeatTime": _now()}],
                "nodeInfo": {"architecture": architecture, "operatingSystem": os},
            },
        })

    def fail_next(self, status: int, count: int = 1, *, retry_after: float | None = None,
                  message: str | None = None, method: str | None = None, resource: str | None = None,
                  subresource: str | None = None, namespace: str | None = None, name: str | None = None,
                  client_prefix: str | None = None, watch: bool | None = None) -> FaultRule:
        """Answer the next `count` matching requests with `status` (and Retry-After), changing nothing."""
        return self.faults.add(FaultRule(
            status=status, count=count, retry_after=retry_after, message=message, method=method,
            resource=resource, subresource=subresource, namespace=namespace, name=name,
            client_prefix=client_prefix, watch=watch,
        ))

    async def client_proxy(self, name: str) -> ClientProxy:
        """A TCP proxy to this emulator for one client (process); `block()`/`unblock()` it later."""
        if name not in self._proxies:
            host, port = self.url.removeprefix("http://").rsplit(":", 1)
            self._proxies[name] = await ClientProxy(name, host, int(port)).start()
        return self._proxies[name]

    @property
    def objects(self) -> k8s_views.ObjectsArray:
        """KMock's view of all objects with their version history, for assertions."""
        return self._objects

    @property
    def revision(self) -> int:
        return self._revision

    # --- request entry -----------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        try:
            if request.url.path.startswith(ADMIN_PREFIX):
                return await self._serve_admin(request)
            facts = self._facts(request)
            self.metrics.count_request(RequestKey(
                facts.client, facts.method, facts.resource or request.url.path, facts.subresource, facts.watch,
            ))
            fault = self.faults.take(facts)
            if fault is not None:
                return aiohttp.web.json_response(fault.status_body(), status=fault.status, headers=fault.headers())
            try:
                if not (self._is_resource_request(request) and self._without_user_reactions()):
                    return await super()._handle(request)
            except _ServeNatively:
                pass
            try:
                return await self._serve_resource(request, facts)
            except ApiError as error:
                return aiohttp.web.json_response(error.body(), status=error.status)
        finally:
            if not self.keep_requests:
                self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        for log in (self._requests, self._native._requests):
            if log and log[-1] is request:
                log.pop()
            elif request in log:
                log.remove(request)

    def _without_user_reactions(self) -> bool:
        # KMock matches a request against a reaction by rescanning every recorded request, so
        # its cost grows with the request count; without user reactions the store answers directly.
        return all(id(payload) in self._builtin_payloads for payload in self._payloads)

    @staticmethod
    def _is_resource_request(request: kmock.Request) -> bool:
        return request.resource is not None and request.resource.plural is not None

    @staticmethod
    def _serve_natively() -> None:
        raise _ServeNatively()

    def _facts(self, request: kmock.Request) -> RequestFacts:
        raw = request._raw_request
        client = raw.headers.get("User-Agent", "") if raw is not None else ""
        method = str(request.method.value).upper()
        label: str | None = None
        if request.resource is not None:
            if request.resource.plural is None:
                label = "discovery"
            else:
                spec = self._table.get(request.resource.group, request.resource.version, request.resource.plural)
                group = request.resource.group
                label = spec.qualified_name if spec else (
                    f"{request.resource.plural}.{group}" if group else request.resource.plural)
        watch = method == "GET" and _param_bool(request.params, "watch")
        return RequestFacts(client=client, method=method, resource=label, subresource=request.subresource,
                            namespace=request.namespace, name=request.name, watch=watch)

    async def _serve_resource(self, request: kmock.Request, facts: RequestFacts) -> aiohttp.web.StreamResponse:
        assert request.resource is not None
        spec = self._table.get(request.resource.group, request.resource.version, request.resource.plural)
        if spec is None:
            raise ApiError(404, "the server could not find the requested resource")
        if request.subresource not in (None, "status") or (
                request.subresource == "status" and "status" not in spec.subresources):
            raise ApiError(404, "the server could not find the requested resource")
        if request.namespace is not None and not spec.namespaced:
            raise ApiError(404, "the server could not find the requested resource")
        namespace, name, method = request.namespace, request.name, facts.method

        if method == "GET" and facts.watch:
            return await self._serve_watch(request, spec)
        if method == "GET" and name is None:
            return aiohttp.web.json_response(self._serve_list(spec, namespace, request.params))
        if method == "GET":
            return aiohttp.web.json_response(self._require(spec, namespace, name))
        if method == "POST" and name is None:
            if spec.namespaced and namespace is None:
                raise ApiError(405, "the server does not allow this method on the requested resource")
            body = self._body_object(request)
            return aiohttp.web.json_response(self._create(spec, namespace, body), status=201)
        if method == "DELETE" and name is None:
            return aiohttp.web.json_response(self._delete_collection(spec, namespace, request))
        if name is None:
            raise ApiError(405, "the server does not allow this method on the requested resource")
        if method == "PUT":
            body = self._body_object(request)
            return aiohttp.web.json_response(self._replace(spec, namespace, name, body, request.subresource))
        if method == "PATCH":
            content_type = request._raw_request.headers.get("Content-Type", "") if request._raw_request else ""
            if request.data is None:
                raise ApiError(400, "the request body is not valid JSON")
            return aiohttp.web.json_response(
                self._patch(spec, namespace, name, request.data, content_type, request.subresource))
        if method == "DELETE":
            options = request.data if isinstance(request.data, dict) else {}
            options = {**options, **{key: value for key, value in request.params.items()
                                     if key in ("propagationPolicy", "orphanDependents")}}
            return aiohttp.web.json_response(self._delete(spec, namespace, name, options))
        raise ApiError(405, "the server does not allow this method on the requested resource")

    @staticmethod
    def _body_object(request: kmock.Request) -> Object:
        if not isinstance(request.data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return copy.deepcopy(request.data)

    # --- the store --------------------------------------------------------------------------

    def _key(self, spec: ResourceSpec, namespace: str | None, name: str) -> tuple[kmock.resource, str | None, str]:
        return kmock.resource(spec.group, spec.version, spec.plural), namespace, name

    def _current(self, spec: ResourceSpec, namespace: str | None, name: str) -> Object | None:
        key = self._key(spec, namespace if spec.namespaced else None, name)
        if key not in self._objects:
            return None
        entry = self._objects[key]
        return None if entry.deleted else entry.raw

    def _require(self, spec: ResourceSpec, namespace: str | None, name: str) -> Object:
        obj = self._current(spec, namespace, name)
        if obj is None:
            raise ApiError(404, f'{spec.qualified_name} "{name}" not found',
                           details={"name": name, "group": spec.group, "kind": spec.plural})
        return obj

    def _live(self, spec: ResourceSpec, namespace: str | None) -> list[Object]:
        """Live objects of a resource in etcd key order (namespace, name)."""
        resource = kmock.resource(spec.group, spec.version, spec.plural)
        found = [
            (object_namespace or "", name, entry.raw)
            for (entry_resource, object_namespace, name), entry in self._objects.items()
            if entry_resource == resource and not entry.deleted
            and (namespace is None or object_namespace == namespace)
        ]
        return [obj for _, _, obj in sorted(found, key=lambda item: (item[0], item[1]))]

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _commit(self, spec: ResourceSpec, event_type: str, obj: Object, old: Object | None) -> None:
        """Store a new version (or the removal) and publish the event to the log and watchers."""
        meta = _meta(obj)
        key = self._key(spec, meta.get("namespace") if spec.namespaced else None, meta["name"])
        if event_type == "DELETED":
            self._objects[key].delete()
            self._uids.pop(meta.get("uid", ""), None)
        elif key not in self._objects:
            self._objects[key] = obj
        else:
            self._objects[key].history.append(obj)
        if event_type != "DELETED":
            self._uids[meta["uid"]] = (spec, key[1], key[2])
        history = self._objects[key].history
        if self.history_limit is not None and len(history) > self.history_limit:
            del history[:len(history) - self.history_limit]

        event = _Event(int(meta["resourceVersion"]), event_type, obj, old)
        log = self._logs.setdefault(spec, collections.deque())
        if len(log) >= self.event_log_limit:
            self._evicted[spec] = log.popleft().revision
        log.append(event)
        for watcher in self._watchers.get(spec, ()):
            watcher.offer(event)

    def _spec_for_body(self, body: Mapping[str, Any]) -> ResourceSpec:
        api_version, kind = body.get("apiVersion"), body.get("kind")
        spec = self._table.by_kind(str(api_version), str(kind))
        if spec is None:
            raise ApiError(404, f"no resource is served for apiVersion={api_version!r} kind={kind!r}")
        return spec

    def _spec_named(self, resource: str) -> ResourceSpec:
        exact = [spec for spec in self._table if resource in (spec.qualified_name, spec.key)]
        by_plural = [spec for spec in self._table if spec.plural == resource]
        for candidates in (exact, by_plural):
            if len(candidates) == 1:
                return candidates[0]
        raise KeyError(f"no single served resource is named {resource!r}: use plural.group or group/version/plural")

    @property
    def open_watches(self) -> int:
        """Watch streams open right now (to check that clients reconnect or stop)."""
        return sum(len(watchers) for watchers in self._watchers.values())

    # --- create -----------------------------------------------------------------------------

    def _create(self, spec: ResourceSpec, namespace: str | None, body: Object) -> Object:
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        self._check_type(spec, body)
        if spec.namespaced:
            body_namespace = meta.get("namespace")
            if namespace is None:
                namespace = body_namespace or "default"
            elif body_namespace not in (None, "", namespace):
                raise ApiError(400, "the namespace of the provided object does not match the namespace "
                                    "sent on the request")
            meta["namespace"] = namespace
            self._check_namespace_open(namespace)
        else:
            meta.pop("namespace", None)
            namespace = None
        if meta.get("resourceVersion"):
            raise ApiError(400, "resourceVersion should not be set on objects to be created")
        name = meta.get("name") or self._generate_name(spec, namespace, meta.get("generateName"))
        meta["name"] = name
        if self._current(spec, namespace, name) is not None:
            raise ApiError(409, f'{spec.qualified_name} "{name}" already exists', reason="AlreadyExists",
                           details={"name": name, "group": spec.group, "kind": spec.plural})
        body["apiVersion"], body["kind"] = spec.api_version, spec.kind
        for server_field in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"):
            meta.pop(server_field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                    resourceVersion=self._next_revision())
        if spec.custom and "status" in spec.subresources:
            body.pop("status", None)  # a CRD with a status subresource drops status on create
        self._commit(spec, "ADDED", body, None)
        owner_uids = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if owner_uids and not owner_uids & self._uids.keys():
            # Every owner is already gone: the garbage collector removes such an orphan-at-birth.
            for owner_uid in owner_uids:
                self._schedule(lambda owner_uid=owner_uid: self._collect_dependents(owner_uid, orphan=False))
        if spec.plural == "customresourcedefinitions":
            for crd_spec in specs_from_crd(body):
                self.declare(crd_spec)
        return body

    def _check_type(self, spec: ResourceSpec, body: Mapping[str, Any]) -> None:
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version not in (None, "", spec.api_version) or kind not in (None, "", spec.kind):
            raise ApiError(400, f"the object is {api_version}/{kind}, but the URL serves "
                                f"{spec.api_version}/{spec.kind}")

    def _check_namespace_open(self, namespace: str) -> None:
        if not self.strict_namespaces:
            return
        namespaces = self._table.get("", "v1", "namespaces")
        assert namespaces is not None
        found = self._current(namespaces, None, namespace)
        if found is None:
            raise ApiError(404, f'namespaces "{namespace}" not found',
                           details={"name": namespace, "kind": "namespaces"})
        if _meta(found).get("deletionTimestamp"):
            raise ApiError(403, f"unable to create new content in namespace {namespace} because it is "
                                "being terminated", reason="Forbidden")

    def _generate_name(self, spec: ResourceSpec, namespace: str | None, prefix: str | None) -> str:
        if not prefix:
            raise ApiError(422, "metadata.name: Required value: name or generateName is required",
                           reason="Invalid")
        for _ in range(100):
            name = prefix + "".join(random.choice(_NAME_ALPHABET) for _ in range(5))
            if self._current(spec, namespace, name) is None:
                return name
        raise ApiError(500, f"could not generate a free name with prefix {prefix!r}")

    # --- update -----------------------------------------------------------------------------

    def _replace(self, spec: ResourceSpec, namespace: str | None, name: str, body: Object,
                 subresource: str | None) -> Object:
        if spec.custom and not _meta(body).get("resourceVersion"):
            raise ApiError(422, "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                           reason="Invalid")
        self._check_type(spec, body)
        return self._update(spec, namespace, name, lambda old: body, subresource)

    def _patch(self, spec: ResourceSpec, namespace: str | None, name: str, patch: Any, content_type: str,
               subresource: str | None) -> Object:
        def build(old: Object) -> Object:
            try:
                return apply_patch(old, patch, content_type, custom_resource=spec.custom)
            except PatchError as error:
                raise ApiError(error.status, error.message, reason=error.reason) from None
        return self._update(spec, namespace, name, build, subresource)

    def _update(self, spec: ResourceSpec, namespace: str | None, name: str, build: Callable[[Object], Object],
                subresource: str | None) -> Object:
        """Apply a change as the API server's update path: preconditions, isolation, stamping."""
        old = self._require(spec, namespace, name)
        old_meta = old["metadata"]
        candidate = build(old)
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata", {}), dict):
            raise ApiError(422, "the object and its metadata must be JSON objects", reason="Invalid")
        candidate_meta = candidate.get("metadata") or {}
        requested_version = candidate_meta.get("resourceVersion")
        if requested_version not in (None, "") and str(requested_version) != old_meta["resourceVersion"]:
            raise ApiError(409, f'Operation cannot be fulfilled on {spec.qualified_name} "{name}": the object '
                                f"has been modified; please apply your changes to the latest version and try again",
                           reason="Conflict", details={"name": name, "group": spec.group, "kind": spec.plural})
        if candidate_meta.get("name") not in (None, name):
            raise ApiError(400, f"the name of the object ({candidate_meta.get('name')}) does not match the name "
                                f"on the URL ({name})")

        isolated_status = "status" in spec.subresources
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            if isolated_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            new_meta = new.setdefault("metadata", {})
            for server_field in ("name", "namespace", "uid", "creationTimestamp", "generation",
                                 "deletionTimestamp", "deletionGracePeriodSeconds"):
                if server_field in old_meta:
                    new_meta[server_field] = old_meta[server_field]
                else:
                    new_meta.pop(server_field, None)
            new_meta.pop("selfLink", None)
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if old_meta.get("deletionTimestamp"):
                added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    raise ApiError(422, f"metadata.finalizers: Forbidden: no new finalizers can be added if the "
                                        f"object is being deleted, found new finalizers {sorted(added)}",
                                   reason="Invalid")
        new_meta = new["metadata"]
        new_meta["resourceVersion"] = old_meta["resourceVersion"]
        if _without_metadata(new, drop_status=isolated_status) != _without_metadata(old, drop_status=isolated_status):
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if new == old:
            return old  # a no-op write: no new resourceVersion and no watch event, as on a real server
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            return self._remove(spec, new)
        new_meta["resourceVersion"] = self._next_revision()
        self._commit(spec, "MODIFIED", new, old)
        return new

    # --- delete and garbage collection --------------------------------------------------------

    def _delete(self, spec: ResourceSpec, namespace: str | None, name: str, options: Mapping[str, Any]) -> Object:
        old = self._require(spec, namespace, name)
        old_meta = old["metadata"]
        preconditions = options.get("preconditions") or {}
        for precondition, actual in (("uid", old_meta["uid"]), ("resourceVersion", old_meta["resourceVersion"])):
            expected = preconditions.get(precondition)
            if expected not in (None, "") and str(expected) != actual:
                raise ApiError(409, f"Precondition failed: {precondition}: {expected}, object has {actual}",
                               reason="Conflict")
        policy = options.get("propagationPolicy")
        if policy == "Orphan" or (policy is None and options.get("orphanDependents") in (True, "true")):
            self._orphaning.add(old_meta["uid"])
        if old_meta.get("deletionTimestamp"):
            return old
        if old_meta.get("finalizers"):
            new = copy.deepcopy(old)
            new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0,
                                   generation=int(old_meta.get("generation", 1)) + 1,
                                   resourceVersion=self._next_revision())
            self._commit(spec, "MODIFIED", new, old)
            return new
        return self._remove(spec, old)

    def _remove(self, spec: ResourceSpec, obj: Object) -> Object:
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = self._next_revision()
        self._commit(spec, "DELETED", final, obj)
        uid = final["metadata"]["uid"]
        orphan = uid in self._orphaning
        self._orphaning.discard(uid)
        self._schedule(lambda: self._collect_dependents(uid, orphan=orphan))
        return final

    def _schedule(self, callback: Callable[[], None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            callback()
        else:
            loop.call_later(self.gc_delay, callback)

    def _collect_dependents(self, owner_uid: str, *, orphan: bool) -> None:
        """Background GC: delete dependents whose only live owner is gone; orphan them if asked."""
        dependents = [
            (resource, namespace, name, entry.raw)
            for (resource, namespace, name), entry in list(self._objects.items())
            if not entry.deleted
            and any(ref.get("uid") == owner_uid for ref in _meta(entry.raw).get("ownerReferences") or [])
        ]
        for resource, namespace, name, obj in dependents:
            spec = self._table.get(resource.group, resource.version, resource.plural)
            if spec is None or self._current(spec, namespace, name) is None:
                continue
            remaining = [ref for ref in obj["metadata"]["ownerReferences"] if ref.get("uid") != owner_uid]
            if orphan or any(ref.get("uid") in self._uids for ref in remaining):
                def strip(old: Object, refs: list[Any] = remaining) -> Object:
                    new = copy.deepcopy(old)
                    if refs:
                        new["metadata"]["ownerReferences"] = refs
                    else:
                        new["metadata"].pop("ownerReferences", None)
                    return new
                self._update(spec, namespace, name, strip, None)
            else:
                self._delete(spec, namespace, name, {})

    def _delete_collection(self, spec: ResourceSpec, namespace: str | None, request: kmock.Request) -> Object:
        matches = self._matcher(spec, request.params)
        deleted = [self._delete(spec, _meta(obj).get("namespace"), _meta(obj)["name"], {})
                   for obj in self._live(spec, namespace) if matches(obj)]
        return self._list_body(spec, deleted)

    # --- list and watch -----------------------------------------------------------------------

    def _matcher(self, spec: ResourceSpec, params: Mapping[str, str],
                 name: str | None = None) -> Callable[[Mapping[str, Any]], bool]:
        try:
            labels = parse_label_selector(params.get("labelSelector"))
            fields = parse_field_selector(params.get("fieldSelector"), spec.field_selectors)
            if name is not None:
                fields += parse_field_selector(f"metadata.name={name}", spec.field_selectors)
        except SelectorError as error:
            raise ApiError(400, str(error)) from None
        return object_matcher(labels, fields)

    def _list_body(self, spec: ResourceSpec, items: list[Object], continue_token: str | None = None) -> Object:
        metadata: dict[str, Any] = {"resourceVersion": str(self._revision)}
        if continue_token:
            metadata["continue"] = continue_token
        return {"apiVersion": spec.api_version, "kind": f"{spec.kind}List", "metadata": metadata, "items": items}

    def _serve_list(self, spec: ResourceSpec, namespace: str | None, params: Mapping[str, str]) -> Object:
        matches = self._matcher(spec, params)
        items = [obj for obj in self._live(spec, namespace) if matches(obj)]
        if params.get("continue"):
            try:
                after = json.loads(base64.urlsafe_b64decode(params["continue"]))
            except ValueError:
                raise ApiError(400, "invalid continue token") from None
            items = [obj for obj in items
                     if [_meta(obj).get("namespace") or "", _meta(obj)["name"]] > after]
        token = None
        limit = int(params.get("limit") or 0)
        if 0 < limit < len(items):
            items = items[:limit]
            last = _meta(items[-1])
            token = base64.urlsafe_b64encode(json.dumps([last.get("namespace") or "", last["name"]]).encode()).decode()
        return self._list_body(spec, items, token)

    async def _serve_watch(self, request: kmock.Request, spec: ResourceSpec) -> aiohttp.web.StreamResponse:
        params = request.params
        matches = self._matcher(spec, params, name=request.name)
        try:
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else self.default_watch_timeout
        except ValueError:
            raise ApiError(400, f"invalid timeoutSeconds {params['timeoutSeconds']!r}") from None
        bookmarks = _param_bool(params, "allowWatchBookmarks")
        since = params.get("resourceVersion") or ""
        watcher = _Watcher(namespace=request.namespace, matches=matches)

        # Subscribe and take the initial events in one synchronous step: nothing lost, nothing twice.
        initial: list[tuple[str, Object]] = []
        expired = False
        if since in ("", "0"):
            initial = [("ADDED", obj) for obj in self._live(spec, request.namespace) if watcher._visible(obj)]
        else:
            try:
                start = int(since)
            except ValueError:
                raise ApiError(400, f"invalid resourceVersion {since!r}") from None
            if start < self._evicted.get(spec, 0):
                expired = True
            else:
                for event in self._logs.get(spec, ()):
                    if event.revision > start and (translated := watcher.translate(event)) is not None:
                        initial.append(translated)
        self._watchers[spec].add(watcher)

        client = request._raw_request.headers.get("User-Agent", "") if request._raw_request else ""
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request._raw_request)
            if expired:
                gone = ApiError(410, f"too old resource version: {since} ({self._evicted[spec]})", reason="Expired")
                await self._send(response, client, "ERROR", gone.body())
                return response
            for event_type, obj in initial:
                await self._send(response, client, event_type, obj)
            if since == "" and _param_bool(params, "sendInitialEvents") and bookmarks:
                await self._send(response, client, "BOOKMARK", self._bookmark(spec, initial_end=True))
            await self._stream_events(response, client, spec, watcher, timeout, bookmarks)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self._watchers[spec].discard(watcher)
        return response

    async def _stream_events(self, response: aiohttp.web.StreamResponse, client: str, spec: ResourceSpec,
                             watcher: _Watcher, timeout: float, bookmarks: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            wait = min(remaining, self.bookmark_interval) if bookmarks else remaining
            try:
                item = await asyncio.wait_for(watcher.queue.get(), wait)
            except asyncio.TimeoutError:
                if bookmarks and watcher.queue.empty() and loop.time() < deadline:
                    await self._send(response, client, "BOOKMARK", self._bookmark(spec))
                continue
            if item is None:
                return
            await self._send(response, client, *item)

    def _bookmark(self, spec: ResourceSpec, *, initial_end: bool = False) -> Object:
        # Sent only when the watcher's queue is empty: it has seen every event up to this revision.
        metadata: dict[str, Any] = {"resourceVersion": str(self._revision)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"apiVersion": spec.api_version, "kind": spec.kind, "metadata": metadata}

    async def _send(self, response: aiohttp.web.StreamResponse, client: str, event_type: str, obj: Object) -> None:
        line = json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"
        await response.write(line)
        self.metrics.count_watch_event(client, len(line))

    # --- the control API for harness subprocesses ---------------------------------------------

    async def _serve_admin(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        parts = request.url.path[len(ADMIN_PREFIX):].strip("/").split("/")
        method = str(request.method.value).upper()
        body = request.data if isinstance(request.data, dict) else {}
        try:
            if parts == ["health"]:
                return aiohttp.web.json_response({"ok": True, "revision": self._revision})
            if parts == ["metrics"] and method == "GET":
                return aiohttp.web.json_response(self.metrics.snapshot())
            if parts == ["metrics", "reset"] and method == "POST":
                self.metrics.reset()
                return aiohttp.web.json_response({})
            if parts == ["faults"] and method == "POST":
                self.fail_next(**body)
                return aiohttp.web.json_response({"pending": len(self.faults.rules)}, status=201)
            if parts == ["faults"] and method == "DELETE":
                self.faults.clear()
                return aiohttp.web.json_response({})
            if len(parts) == 2 and parts[0] == "proxies" and method == "POST":
                proxy = await self.client_proxy(parts[1])
                return aiohttp.web.json_response({"name": proxy.name, "url": proxy.url})
            if len(parts) == 3 and parts[0] == "proxies" and method == "POST" and parts[1] in self._proxies:
                proxy = self._proxies[parts[1]]
                if parts[2] == "block":
                    mode: BlockMode = body.get("mode", "reset")
                    proxy.block(mode)
                    return aiohttp.web.json_response({"blocked": mode})
                if parts[2] == "unblock":
                    proxy.unblock()
                    return aiohttp.web.json_response({"blocked": None})
        except (TypeError, ValueError) as error:
            return aiohttp.web.json_response({"error": str(error)}, status=400)
        return aiohttp.web.json_response({"error": f"unknown harness endpoint {method} {request.url.path}"},
                                         status=404)


async def run_forever(emulator: KubeEmulator, ready: Callable[[str], None],
                      stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or forever); `ready(url)` is called once listening."""
    async with emulator:
        ready(emulator.url)
        await (stop.wait() if stop is not None else asyncio.Event().wait())
