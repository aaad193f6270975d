"""HTTP to OCI registries: pooled keep-alive connections, TLS rules, authentication, retries.

One Transport serves any number of registries from any number of threads (urllib3's pool is
thread-safe). Per registry host it learns, once, whether to speak HTTPS or plain HTTP and
which authentication the registry wants (`GET /v2/`), then adds credentials to each request:
Basic, or a Bearer token fetched from the realm for the request's scopes and cached.

TLS rules: HTTPS always, verified against the system CAs or `ca_file`. Plain HTTP only when
the caller says `insecure=True`, or for a loopback registry that does not speak TLS.

Credential rules: credentials go only to the registry's own host (scheme, host and port of the
reference), or to a token realm served over HTTPS; a plain-HTTP realm on another host gets them
only when that host is named in `insecure_registries` (docker's insecure-registry list). Any
other origin (a redirect, an upload Location) gets no credentials. Every value a server or a
credentials file puts into a header or a URL is checked first (`headers.py`).

Time rules (`limits.py`): every request has an overall deadline; blob bodies a minimum rate.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, cast
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, SSLError

from aos_operator import __version__
from aos_operator.bounded import parse_json
from aos_operator.errors import RegistryError, shorten
from aos_operator.registry.auth import (
    Challenge,
    Token,
    TokenCache,
    basic_header,
    parse_challenge,
    parse_token_response,
)
from aos_operator.registry.credentials import CredentialSource, Credentials
from aos_operator.registry.headers import check_location, check_realm, check_token
from aos_operator.registry.limits import Deadline, RegistryLimits, deadline_pool_manager, release_socket, tls_context
from aos_operator.registry.retry import RetryPolicy, TransientFailure, parse_retry_after

class Readable(Protocol):
    """A request body streamed by urllib3: read in blocks, closed when sent."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


Body = bytes | Callable[[], Readable] | None
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MAX_ERROR_BODY = 64 * 1024
_BLOCK_SIZE = 1024 * 1024  # socket write size for streamed bodies; 16 KiB (the default) costs CPU


@dataclass
class Reply:
    """A response read whole under the request's deadline: status, headers and at most
    `body_limit` bytes of body (`complete` False when there was more)."""

    status: int
    headers: urllib3.HTTPHeaderDict
    body: bytes
    complete: bool


Response = urllib3.BaseHTTPResponse | Reply


def origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of a URL: who receives what is sent to it."""
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def host_name(address: str) -> str:
    return (urlsplit(f"//{address}").hostname or "").lower()


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def candidate_schemes(host: str, insecure: bool) -> list[str]:
    """Schemes to try, in order: HTTPS only, unless asked for plain HTTP or the host is local."""
    if insecure:
        return ["http"]
    if is_loopback(host):
        return ["https", "http"]  # like docker: a local registry may speak plain HTTP
    return ["https"]


@dataclass
class _Registry:
    """What we learned about one registry host."""

    base_url: str = ""
    challenge: Challenge | None = None
    probed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Transport:
    def __init__(
        self,
        *,
        credentials: CredentialSource | None = None,
        ca_file: str | Path | None = None,
        insecure: bool = False,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 15.0,
        read_timeout: float = 60.0,
        max_connections: int = 8,
        limits: RegistryLimits | None = None,
        insecure_registries: Iterable[str] = (),
    ) -> None:
        if ca_file is not None and not Path(ca_file).is_file():
            raise RegistryError(
                f"CA file {ca_file} does not exist",
                hint="pass the PEM file of the CA that signed the registry's certificate",
            )
        self.credentials = credentials
        self.insecure = insecure
        self.insecure_registries = frozenset(address.lower() for address in insecure_registries)
        self.retry = retry or RetryPolicy()
        self.limits = limits or RegistryLimits()
        self._pool = deadline_pool_manager(
            num_pools=16,
            maxsize=max_connections,
            cert_reqs="CERT_REQUIRED",
            ssl_context=tls_context(str(ca_file) if ca_file else None),
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,
            blocksize=_BLOCK_SIZE,
            headers={"User-Agent": f"aos-operator/{__version__}"},
        )
        self._registries: dict[str, _Registry] = {}
        self._registries_lock = threading.Lock()
        self._tokens = TokenCache()
        self._token_lock = threading.Lock()

    def close(self) -> None:
        self._pool.clear()

    # -- credentials -------------------------------------------------------------------

    def credentials_for(self, host: str) -> Credentials | None:
        return self.credentials.credentials_for(host) if self.credentials else None

    # -- requests ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        host: str,
        path_or_url: str,
        *,
        what: str,
        scopes: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        body_size: int = 0,
        follow_redirects: bool = False,
        retry: bool = True,
        stream: bool = False,
        body_limit: int = _MAX_ERROR_BODY,
    ) -> Response:
        """Send one request to registry `host`, authenticated for `scopes`, within its deadline.

        Returns a Reply, read whole (at most `body_limit` bytes) under the deadline, whatever
        its status; with `stream`, a 200 or 206 answer is returned unread instead (a blob body:
        the caller reads it under the minimum rate and closes it). 429, 5xx and broken
        connections raise TransientFailure; with `retry` they are first retried under the retry
        policy. A passed deadline raises RegistryError and is not retried. A request that sends
        a streamed body gives its size in `body_size`, which lengthens its deadline. `what`
        names the operation and reference in error messages.
        """
        scopes = tuple(scopes)
        size = body_size or (len(body) if isinstance(body, bytes) else 0)

        def attempt() -> Response:
            self._registry(host, what)  # the probe runs under its own deadline
            raw: urllib3.BaseHTTPResponse | None = None
            with Deadline(self.limits.upload_timeout(size), what) as deadline:
                try:
                    raw = self._send(method, host, path_or_url, what, scopes, dict(headers or {}), body, follow_redirects)
                    result: Response = raw if stream and raw.status in (200, 206) else _read_reply(raw, body_limit, what)
                except (TransientFailure, RegistryError, HTTPError, OSError):
                    if not deadline.expired:
                        raise
                    result = raw  # replaced by the deadline's error below
            if deadline.expired:
                if raw is not None:
                    discard(raw, drain=False)
                raise deadline.error()
            if isinstance(result, Reply) and raw is not None:
                discard(raw, drain=False)  # read to its end, or closed when longer than wanted
            return result

        return self.retry.run(attempt, what) if retry else attempt()

    def url(self, host: str, path: str) -> str:
        """Absolute URL of `path` on registry `host` (probing the host first if needed)."""
        return urljoin(self._registry(host, f"connect to {host}").base_url, path)

    def _send(
        self,
        method: str,
        host: str,
        path_or_url: str,
        what: str,
        scopes: tuple[str, ...],
        headers: dict[str, str],
        body: Body,
        follow_redirects: bool,
    ) -> urllib3.BaseHTTPResponse:
        registry = self._registry(host, what)
        url = urljoin(registry.base_url, path_or_url)
        # An absolute URL the registry gave (an upload Location) may name another origin:
        # credentials stay with the registry.
        own = origin(url) == origin(registry.base_url)
        authorization = self._authorization(host, registry, scopes, what) if own else None
        response = self._open(method, url, _with_authorization(headers, authorization), body, what)
        if response.status == 401 and own:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            if challenge is not None:
                registry.challenge = challenge
                fresh = self._authorization(
                    host, registry, scopes, what, rejected=authorization, wanted=challenge.scopes
                )
                if fresh is not None and fresh != authorization:
                    discard(response)
                    authorization = fresh
                    response = self._open(method, url, _with_authorization(headers, authorization), body, what)
        for _ in range(_MAX_REDIRECTS):
            if not (follow_redirects and response.status in _REDIRECTS and response.headers.get("Location")):
                break
            target = urljoin(url, check_location(response.headers["Location"], what))
            discard(response)
            # Credentials stay with the registry; a redirect elsewhere (object storage, or the
            # same host over plain HTTP) gets none.
            if origin(target) != origin(url):
                authorization = None
            url = target
            response = self._open(method, url, _with_authorization(headers, authorization), body, what)
        _raise_if_transient(response, method, url)
        return response

    def _open(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, what: str
    ) -> urllib3.BaseHTTPResponse:
        """One HTTP exchange, response unread; connection and TLS failures become our errors."""
        payload = body() if callable(body) else body
        try:
            # urllib3 only calls read() on a body object; its type hints ask for a full IO.
            sent = cast("IO[bytes] | bytes | None", payload)
            return self._pool.request(method, url, headers=headers, body=sent, preload_content=False, redirect=False)
        except SSLError as error:
            if _is_verification_failure(error):
                raise RegistryError(
                    f"{what}: the TLS certificate of {urlsplit(url).netloc} is not trusted ({error})",
                    hint="pass the CA that signed it (ca_file / --ca-file), or fix the registry's certificate",
                ) from None
            raise _HandshakeFailure(f"{method} {_without_query(url)}: TLS handshake failed ({error})") from None
        except HTTPError as error:
            reason = getattr(error, "reason", None) or error
            raise TransientFailure(f"{method} {_without_query(url)}: connection failed ({reason})") from None
        finally:
            if payload is not None and hasattr(payload, "close"):
                payload.close()

    # -- registry discovery ------------------------------------------------------------

    def _registry(self, host: str, what: str) -> _Registry:
        """What we know of `host`, probing it on first use."""
        with self._registries_lock:
            registry = self._registries.setdefault(host, _Registry())
        if not registry.probed:
            with registry.lock:
                if not registry.probed:
                    self.retry.run(lambda: self._probe(host, registry, what), what)
                    registry.probed = True
        return registry

    def _probe(self, host: str, registry: _Registry, what: str) -> None:
        """`GET /v2/`: picks the scheme and learns the authentication challenge."""
        schemes = candidate_schemes(host, self.insecure)
        for scheme in schemes:
            url = f"{scheme}://{host}/v2/"
            with Deadline(self.limits.request_timeout, what) as deadline:
                try:
                    response = self._open("GET", url, {}, None, what)
                    _raise_if_transient(response, "GET", url)
                    discard(response)
                except _HandshakeFailure:
                    if deadline.expired:
                        raise deadline.error() from None
                    if scheme == "https" and "http" in schemes:
                        continue  # the server answered, but not with TLS
                    raise
                except (TransientFailure, HTTPError, OSError):
                    if deadline.expired:
                        raise deadline.error() from None
                    raise
            if deadline.expired:
                raise deadline.error()
            if response.status not in (200, 401):
                raise RegistryError(
                    f"{what}: {host} does not answer like an OCI registry (GET {url} gave HTTP {response.status})",
                    hint="check the registry host and port in the reference",
                )
            registry.base_url = f"{scheme}://{host}"
            registry.challenge = (
                parse_challenge(response.headers.get("WWW-Authenticate")) if response.status == 401 else None
            )
            return

    # -- authentication ----------------------------------------------------------------

    def _authorization(
        self,
        host: str,
        registry: _Registry,
        scopes: tuple[str, ...],
        what: str,
        *,
        rejected: str | None = None,
        wanted: tuple[str, ...] = (),
    ) -> str | None:
        """The Authorization header for a request needing `scopes`, or None for anonymous.

        After a 401, `rejected` is the header the registry refused (a cached token equal to it
        is not reused) and `wanted` the scopes its challenge named; the new token is cached
        under the request's own scopes, so later requests like it reuse it.
        """
        challenge = registry.challenge
        if challenge is None:
            return None
        credentials = self.credentials_for(host)
        if challenge.scheme == "basic":
            return basic_header(credentials) if credentials else None
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise RegistryError(
                f"{what}: {host} asks for unsupported authentication {challenge.scheme!r}",
                hint="this client speaks Basic and Bearer-token authentication",
            )
        realm, service = check_realm(challenge.params["realm"], host, what), challenge.params.get("service", "")
        key = self._tokens.key(realm, service, scopes)
        # One fetch at a time: parallel blob transfers must not each fetch the same token.
        with self._token_lock:
            token = self._tokens.get(key)
            if token is None or f"Bearer {token.value}" == rejected:
                token = self._fetch_token(host, realm, service, sorted({*scopes, *wanted}), credentials, what)
                self._tokens.put(key, token)
        return f"Bearer {token.value}"

    def _fetch_token(
        self, host: str, realm: str, service: str, scopes: list[str], credentials: Credentials | None, what: str
    ) -> Token:
        """GET a token for `scopes` from the realm, with the registry host's credentials if any."""
        if credentials and not self._may_receive_credentials(host, realm):
            realm_host = urlsplit(realm).netloc
            raise RegistryError(
                f"{what}: the registry {host} sends its token requests to {realm}, plain HTTP on another host; "
                f"refusing to send the credentials for {host} there",
                hint=f"serve the token realm over HTTPS or on the registry's own host, or, if {realm_host} is "
                f"trusted, name it as an insecure registry (aosctl --insecure-registry {realm_host})",
            )
        query = [("service", service)] if service else []
        query += [("scope", scope) for scope in scopes]
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}" if query else realm
        requested_at = self._tokens.now()
        response = self._open(
            "GET", url, _with_authorization({}, basic_header(credentials) if credentials else None), None, what
        )
        _raise_if_transient(response, "GET", realm)
        if response.status in (401, 403):
            who = f"user {credentials.username!r}" if credentials else "anonymous access"
            raise RegistryError(
                f"{what}: the token service {realm} refused {who} (HTTP {response.status})"
                f"{describe_error_body(read_error_body(response))}",
                hint=credentials_hint(host, credentials),
            )
        body = read_body(response, _MAX_ERROR_BODY, what)
        token = parse_token_response(body, requested_at) if response.status == 200 else None
        if token is None:
            raise RegistryError(
                f"{what}: the token service {realm} gave no token (HTTP {response.status})",
                hint="check the registry's auth configuration (realm, service)",
            )
        check_token(token.value, realm, what)
        return token

    def _may_receive_credentials(self, host: str, realm: str) -> bool:
        """Credentials go to the registry's own host, to a realm over TLS, or to a host the user named."""
        parts = urlsplit(realm)
        if parts.scheme == "https" or host_name(parts.netloc) == host_name(host):
            return True
        return parts.netloc.lower() in self.insecure_registries or host_name(parts.netloc) in self.insecure_registries


def _read_reply(response: urllib3.BaseHTTPResponse, limit: int, what: str) -> Reply:
    """Read up to `limit` bytes of a small answer; the caller releases or closes the connection."""
    try:
        data = response.read(limit + 1)
    except HTTPError as error:
        raise TransientFailure(f"{what}: connection broke while reading the response ({error})") from None
    return Reply(response.status, response.headers, data[:limit], len(data) <= limit)


def credentials_hint(host: str, credentials: Credentials | None) -> str:
    if credentials is None:
        return (
            f"give credentials for {host}: `aosctl login {host}` (or `docker login`), a docker config.json "
            "passed with --auth FILE, or an image pull secret (.dockerconfigjson)"
        )
    return f"check the user name and password given for {host} and that user's rights on the repository"


def read_body(response: Response, limit: int, what: str) -> bytes:
    """The whole body of a response expected to be small; the connection goes back to the pool."""
    if isinstance(response, Reply):
        data = response.body if response.complete else response.body + b"?"
    else:
        try:
            data = response.read(limit + 1)
        except HTTPError as error:
            raise TransientFailure(f"{what}: connection broke while reading the response ({error})") from None
        finally:
            discard(response)
    if len(data) > limit:
        raise RegistryError(
            f"{what}: the response is larger than {limit} bytes, more than a registry sends here",
            hint="check that the reference (or token realm) points at an OCI registry",
        )
    return data


def read_error_body(response: Response) -> bytes:
    """The start of an error response's body, for the message; never fails."""
    if isinstance(response, Reply):
        return response.body[:_MAX_ERROR_BODY]
    try:
        return response.read(_MAX_ERROR_BODY)
    except HTTPError:
        return b""
    finally:
        discard(response)


def describe_error_body(body: bytes) -> str:
    """`: CODE: message` from a registry's JSON error body, or nothing."""
    try:
        document = parse_json(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = [
        f"{shorten(str(item.get('code', '?')), 40)}: {shorten(str(item.get('message', '')), 200)}"
        for item in errors[:5]
        if isinstance(item, dict)
    ]
    return ": " + "; ".join(parts) if parts else ""


def discard(response: Response, *, drain: bool = True) -> None:
    """Finish with a response: drain a short rest so the connection serves the next request,
    but close rather than read a long or unknown rest (an abandoned blob). Outside a deadline
    (`drain=False`) nothing more is read: only a response read to its end is kept open."""
    if isinstance(response, Reply):
        return
    remaining = response.length_remaining
    try:
        if remaining == 0 and not drain:
            pass
        elif drain and remaining is not None and remaining <= _MAX_ERROR_BODY:
            response.drain_conn()
        else:
            response.close()
    except HTTPError:
        response.close()
    release_socket(getattr(getattr(response, "connection", None), "sock", None))
    response.release_conn()


class _HandshakeFailure(TransientFailure):
    """TLS did not get going: a passing fault, or (on loopback) a server speaking plain HTTP."""


def _with_authorization(headers: Mapping[str, str], authorization: str | None) -> dict[str, str]:
    # Every value here is checked where it comes from: tokens (check_token), basic credentials
    # (credentials.py); header values we build ourselves hold only digests and numbers.
    return {**headers, "Authorization": authorization} if authorization else dict(headers)


def _raise_if_transient(response: urllib3.BaseHTTPResponse, method: str, url: str) -> None:
    if response.status == 429 or response.status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        detail = describe_error_body(read_error_body(response))
        raise TransientFailure(f"HTTP {response.status} from {method} {_without_query(url)}{detail}", retry_after)


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _is_verification_failure(error: SSLError) -> bool:
    cause = error.__context__ or (error.args[0] if error.args else None)
    return isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(error)
