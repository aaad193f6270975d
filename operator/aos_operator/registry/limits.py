"""Time limits on registry traffic: an overall deadline per request and a minimum rate for blobs.

A socket timeout alone restarts on every byte, so a server that trickles one byte a second
holds a request for as long as it likes. Here:
- every request that is not a blob body (probe, token, manifest, HEAD, upload session, error
  bodies) must be over, headers and body, within `request_timeout` seconds; an upload's deadline
  grows by its size at the minimum rate;
- a blob body must arrive at `blob_min_rate` bytes/s or faster, averaged over the last
  `blob_rate_window` seconds, once `blob_rate_grace` seconds have passed since it started.

The deadline is enforced by one watchdog thread that shuts down an expired request's sockets: a
blocked read returns at once, wherever it is (connect, TLS handshake, headers, body). Sockets are
attached to the deadline of the thread's current request by the connection classes below.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from aos_operator.errors import RegistryError


@dataclass(frozen=True)
class RegistryLimits:
    """How long a registry may take. Defaults suit a slow mobile link; 0 turns a limit off."""

    request_timeout: float = 60.0  # seconds for a whole request that is not a blob body
    blob_min_rate: float = 4096.0  # bytes/s a blob body must keep up, over the window
    blob_rate_window: float = 30.0  # seconds the rate is averaged over
    blob_rate_grace: float = 30.0  # seconds at the start of a blob body before the rate counts

    def __post_init__(self) -> None:
        for name in ("request_timeout", "blob_min_rate", "blob_rate_window", "blob_rate_grace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != value:
                raise ValueError(f"RegistryLimits.{name} must be a number >= 0, not {value!r}")
        if self.blob_min_rate and not self.blob_rate_window:
            raise ValueError("RegistryLimits.blob_rate_window must be positive when blob_min_rate is set")

    def upload_timeout(self, size: int) -> float:
        """The deadline of a request that sends `size` bytes: the request's plus the body at the minimum rate."""
        if not self.request_timeout:
            return 0.0
        if not self.blob_min_rate:
            return 0.0 if size else self.request_timeout
        return self.request_timeout + size / self.blob_min_rate


class _Watchdog:
    """The one thread that expires every Deadline of the process. A `threading.Timer` per request
    started a thread per registry request: in a push burst, 7 % of the operator's thread samples
    waited in `Thread.start`."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._live = 0
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline, at: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (at, next(self._order), deadline))
            self._live += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="registry-deadlines", daemon=True)
                self._thread.start()
            elif self._due[0][2] is deadline:
                self._wake.notify()

    def done(self) -> None:
        with self._wake:
            self._live -= 1
            if len(self._due) > 64 and len(self._due) > 2 * self._live:  # drop the ended ones
                self._due = [entry for entry in self._due if not entry[2].ended]
                heapq.heapify(self._due)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._due and self._due[0][2].ended:
                    heapq.heappop(self._due)
                if not self._due:
                    self._wake.wait()
                    continue
                wait = self._due[0][0] - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                deadline = heapq.heappop(self._due)[2]
            deadline._expire()  # outside the lock: it shuts down sockets


_WATCHDOG = _Watchdog()
_CURRENT: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("registry_deadline", default=None)


class Deadline:
    """The time limit of one request (with its redirects, token fetch and re-authentication).

    Used as a context manager around the request; `seconds` 0 means none. Once expired, every
    socket attached is shut down and `expired` is True: the caller raises `error()` instead of
    whatever the broken connection raised.
    """

    def __init__(self, seconds: float, what: str, setting: str = "request_timeout") -> None:
        self.seconds, self.what, self.setting = seconds, what, setting
        self.expired = self.ended = False
        self._watched = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._token: contextvars.Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline:
        if self.seconds:
            _WATCHDOG.watch(self, time.monotonic() + self.seconds)
            self._watched = True
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        with self._lock:
            self.ended = True
            self._sockets.clear()  # sockets go back to the pool: never shut one down later
        if self._watched:
            _WATCHDOG.done()
        if self._token is not None:
            _CURRENT.reset(self._token)

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if any(known is sock for known in self._sockets):
                return
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut_down(sock)

    def detach(self, sock: Any) -> None:
        with self._lock:
            self._sockets = [known for known in self._sockets if known is not sock]

    def _expire(self) -> None:
        with self._lock:
            if self.ended:
                return
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut_down(sock)

    def error(self) -> RegistryError:
        return RegistryError(
            f"{self.what}: the registry did not complete the request within {self.seconds:g} s "
            f"(the request deadline); nothing was used",
            hint=f"the registry or the network is too slow or stalls on purpose; if it is only slow, raise "
            f"the deadline ({self.setting}, aosctl --request-timeout)",
        )


def _shut_down(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown: on a TLS socket, ssl's own would also drop its TLS state.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def release_socket(sock: Any) -> None:
    """A connection goes back to the pool: its socket leaves the current deadline, so that
    deadline can never shut down a request of another thread that takes the connection next."""
    deadline = _CURRENT.get()
    if deadline is not None and sock is not None:
        deadline.detach(sock)


def _attach_current(sock: Any) -> None:
    deadline = _CURRENT.get()
    if deadline is not None and isinstance(sock, socket.socket):
        deadline.attach(sock)


class _AttachOnUse:
    """Connection mixin: the socket of a new or reused connection joins the current deadline."""

    sock: Any

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _attach_current(sock)
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _attach_current(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self) -> Any:
        _attach_current(self.sock)
        return super().getresponse()  # type: ignore[misc]


class _DeadlineHTTPConnection(_AttachOnUse, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_AttachOnUse, HTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineSSLSocket(ssl.SSLSocket):
    """Joins the current deadline before its handshake, so a trickled handshake is cut too."""

    def do_handshake(self, block: bool = False) -> None:
        _attach_current(self)
        super().do_handshake(block)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context (system CAs or `ca_file`) whose sockets honour deadlines."""
    context = urllib3.util.ssl_.create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


def deadline_pool_manager(**kwargs: Any) -> urllib3.PoolManager:
    """A urllib3 PoolManager whose connections attach their sockets to the current Deadline."""
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}
    return manager


class RateFloor:
    """Refuses a blob body whose rate over the last window falls below the minimum (after the grace)."""

    def __init__(self, limits: RegistryLimits, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.what, self.clock = limits, what, clock
        self.started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def update(self, received: int) -> None:
        """Note that `received` bytes of this body have arrived; raise when that is too slow."""
        limits = self.limits
        if not limits.blob_min_rate:
            return
        now = self.clock()
        window = limits.blob_rate_window
        # a sample every 1/16 of the window is enough to average over it
        if now - self._samples[-1][0] >= window / 16:
            self._samples.append((now, received))
        while len(self._samples) > 1 and self._samples[1][0] <= now - window:
            self._samples.popleft()
        if now - self.started < limits.blob_rate_grace:
            return
        since, base = self._samples[0]
        span = now - since
        if span < min(window, now - self.started) * 0.5 or span <= 0:
            return
        rate = (received - base) / span
        if rate < limits.blob_min_rate:
            raise RegistryError(
                f"{self.what}: the registry sent {rate:.0f} bytes/s over the last {span:.1f} s, below the "
                f"minimum of {limits.blob_min_rate:g} bytes/s; nothing was kept",
                hint="the registry or the network is too slow or stalls on purpose; if it is only slow, lower "
                "the minimum (blob_min_rate, aosctl --min-blob-rate; 0 turns it off)",
            )
