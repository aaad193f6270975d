"""A small synchronous client for the project's resources and the few core ones it touches.

Built on the official `kubernetes` client. The agent calls it from its threads; the operator,
which runs on kopf's event loop, calls it through `asyncio.to_thread`. Every call sends a
User-Agent that names the component, so API traffic can be told apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from aos_operator.api.models import GROUP, VERSION, Kind
from aos_operator.bounded import parse_json
from aos_operator.errors import InputError, shorten, shorten_middle

LEASE = ("coordination.k8s.io", "v1", "leases")  # group, version, plural
# What a call to the API server raises when the server refuses it or cannot be reached.
API_ERRORS = (ApiException, HTTPError, OSError)


def error_text(error: BaseException) -> str:
    """One line for a log or a message: the server's code, reason and its own message, or the
    connection's failure. str() of the client's ApiException is several lines of headers and body."""
    if not isinstance(error, ApiException):
        # Cut in the middle: urllib3 puts the cause ("Connection refused") at the end.
        return shorten_middle(f"{type(error).__name__}: {error}".replace("\n", " "), 300)
    text = " ".join(str(part) for part in (error.status, error.reason) if part) or "the API server refused the request"
    message = ""
    if error.body:
        try:
            status = parse_json(error.body)
            message = str(status.get("message") or "") if isinstance(status, dict) else ""
        except ValueError:
            message = str(error.body)
    if message and message not in text:
        text += f": {message}"
    retry = (error.headers or {}).get("Retry-After")
    if retry:
        text += f" (retry after {retry} s)"
    return shorten(" ".join(text.split()), 600)


def status_error(status: Any) -> ApiException:
    """The error a watch stream's ERROR event carries (a Status: 410 Expired, 500, ...)."""
    status = status if isinstance(status, dict) else {"message": str(status)}
    error = ApiException(status=int(status.get("code") or 500), reason=str(status.get("reason") or "Error"))
    error.body = json.dumps(status)
    return error


@dataclass(frozen=True)
class Connection:
    """Where the API server is: an explicit URL (tests, benchmarks), in-cluster, or kubeconfig."""

    server: str | None = None
    kubeconfig: str | None = None

    def configuration(self) -> kubernetes.client.Configuration:
        configuration = kubernetes.client.Configuration()
        # Retries are ours (with backoff, visible in logs); urllib3's would hide 429s and outages.
        configuration.retries = 0
        if self.server:
            configuration.host = self.server.rstrip("/")
            return configuration
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not self.kubeconfig:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        return configuration

    def check(self) -> None:
        """Load the configuration now, so that a missing or broken kubeconfig is an InputError
        naming it (the CLI's exit code 2), not a traceback from the first request."""
        try:
            self.configuration()
        except (kubernetes.config.ConfigException, OSError, ValueError, TypeError) as error:
            where = self.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise InputError(f"{where}: cannot use this kubeconfig: {error}",
                             hint="pass --kubeconfig FILE or --kube-server URL") from None


def kopf_connection(connection: Connection) -> Any:
    """kopf's credentials read from the same place as the sync client's (kopf's own kubeconfig login
    reads only $KUBECONFIG and ~/.kube/config, never a --kubeconfig file)."""
    import kopf

    configuration = connection.configuration()
    keys = configuration.api_key or {}
    header = str(keys.get("BearerToken") or keys.get("authorization") or "")
    scheme, _, token = header.partition(" ")
    if not token:
        scheme, token = "Bearer", scheme
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
        scheme=scheme if token else None,
        token=token or None,
    )


def kopf_session(info: Any, connections: int) -> Any:
    """kopf's credentials on a session with at most `connections` open at once. kopf's own
    session has no limit (`TCPConnector(limit=0)`): every concurrent request opens one more, and
    asyncio gives each TLS connection a 256 KiB read buffer; at 300 services the operator held
    548 of them (70 MiB). Called on the event loop: the session belongs to it."""
    import aiohttp
    import kopf

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(), proxy=info.proxy_url, trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace,
                               priority=info.priority, expiration=info.expiration, aiohttp_session=session)


class KubeClient:
    def __init__(self, connection: Connection, user_agent: str, timeout: float = 30.0) -> None:
        configuration = connection.configuration()
        self.api = kubernetes.client.ApiClient(configuration)
        self.api.user_agent = user_agent
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.timeout = timeout

    def close(self) -> None:
        self.api.close()

    # --- custom resources ---------------------------------------------------------------------

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            if kind.namespaced:
                return self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, kind.plural, name, _request_timeout=self.timeout
                )
            return self.custom.get_cluster_custom_object(GROUP, VERSION, kind.plural, name, _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        return self._list(GROUP, VERSION, kind.plural, namespace if kind.namespaced else None, label_selector)

    def _list(self, group: str, version: str, plural: str, namespace: str | None,
              label_selector: str | None) -> tuple[list[dict[str, Any]], str | None]:
        options: dict[str, Any] = {"_request_timeout": self.timeout}
        if label_selector:
            options["label_selector"] = label_selector
        if namespace:
            result = self.custom.list_namespaced_custom_object(group, version, namespace, plural, **options)
        else:
            result = self.custom.list_cluster_custom_object(group, version, plural, **options)
        return list(result.get("items") or []), (result.get("metadata") or {}).get("resourceVersion")

    def create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        if kind.namespaced:
            namespace = body["metadata"]["namespace"]
            return self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, body, _request_timeout=self.timeout
            )
        return self.custom.create_cluster_custom_object(GROUP, VERSION, kind.plural, body, _request_timeout=self.timeout)

    def patch(
        self, kind: Kind, name: str, patch: Any, namespace: str | None = None, *, status: bool = False
    ) -> dict[str, Any]:
        """A merge patch (a dict) or a JSON patch (a list), of the object or of its status."""
        content_type = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        options: dict[str, Any] = {"_content_type": content_type, "_request_timeout": self.timeout}
        suffix = "_status" if status else ""
        if kind.namespaced:
            method = getattr(self.custom, f"patch_namespaced_custom_object{suffix}")
            return method(GROUP, VERSION, namespace, kind.plural, name, patch, **options)  # type: ignore[no-any-return]
        method = getattr(self.custom, f"patch_cluster_custom_object{suffix}")
        return method(GROUP, VERSION, kind.plural, name, patch, **options)  # type: ignore[no-any-return]

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> bool:
        """Delete; False when it was already gone."""
        try:
            if kind.namespaced:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, kind.plural, name, _request_timeout=self.timeout
                )
            else:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, kind.plural, name, _request_timeout=self.timeout)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def post_event(self, namespace: str, involved: dict[str, Any], event_type: str, reason: str, message: str,
                   component: str) -> None:
        """A core/v1 Event about `involved` (apiVersion, kind, name, namespace)."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": involved, "type": event_type, "reason": reason, "message": message[:1000],
            "source": {"component": component}, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        self.core.create_namespaced_event(namespace, body, _request_timeout=self.timeout)

    def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
    ) -> Iterator[dict[str, Any]]:
        """Events ({type, object}) until the server ends the stream."""
        return self._watch(GROUP, VERSION, kind.plural, namespace if kind.namespaced else None, label_selector,
                           resource_version, timeout_seconds)

    def _watch(self, group: str, version: str, plural: str, namespace: str | None, label_selector: str | None,
               resource_version: str | None, timeout_seconds: int) -> Iterator[dict[str, Any]]:
        watcher = kubernetes.watch.Watch()
        options: dict[str, Any] = {"timeout_seconds": timeout_seconds, "allow_watch_bookmarks": True}
        if label_selector:
            options["label_selector"] = label_selector
        if resource_version:
            options["resource_version"] = resource_version
        if namespace:
            stream = watcher.stream(self.custom.list_namespaced_custom_object, group, version, namespace, plural, **options)
        else:
            stream = watcher.stream(self.custom.list_cluster_custom_object, group, version, plural, **options)
        try:
            yield from stream
        finally:
            watcher.stop()

    # --- Leases: an agent's liveness, as a kubelet's node Lease ----------------------------------

    def renew_lease(self, name: str, namespace: str, holder: str, duration_seconds: int,
                    labels: dict[str, str]) -> dict[str, Any]:
        """Set the Lease's renewTime to now (a merge patch); created when there is none."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
        spec = {"holderIdentity": holder, "leaseDurationSeconds": duration_seconds, "renewTime": stamp}
        try:
            return self.custom.patch_namespaced_custom_object(  # type: ignore[no-any-return]
                LEASE[0], LEASE[1], namespace, LEASE[2], name, {"spec": spec},
                _content_type="application/merge-patch+json", _request_timeout=self.timeout)
        except ApiException as error:
            if error.status != 404:
                raise
        body = {"apiVersion": f"{LEASE[0]}/{LEASE[1]}", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {**spec, "acquireTime": stamp}}
        return self.custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
            LEASE[0], LEASE[1], namespace, LEASE[2], body, _request_timeout=self.timeout)

    def list_leases(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str | None]:
        return self._list(LEASE[0], LEASE[1], LEASE[2], namespace, label_selector)

    def watch_leases(self, namespace: str, label_selector: str, resource_version: str | None,
                     timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        return self._watch(LEASE[0], LEASE[1], LEASE[2], namespace, label_selector, resource_version, timeout_seconds)

    # --- core resources -----------------------------------------------------------------------

    def config_map(self, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            result = self.core.read_namespaced_config_map(name, namespace, _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self.api.sanitize_for_serialization(result)  # type: ignore[no-any-return]

    def node_labels(self, name: str) -> dict[str, str] | None:
        try:
            node = self.core.read_node(name, _request_timeout=self.timeout)
        except ApiException as error:
            if error.status in (403, 404):
                return None
            raise
        return dict(node.metadata.labels or {})
