"""Per-instance secrets (`AOS_SECRET`) and the node-local permission socket: AosEdge's IAM
RegisterInstance / UnregisterInstance / GetPermissions (reference §4), for one runtime.

- `PermissionRegistry` (used by the Runtime, in the agent's or aosctl's process): `register`
  gives an instance whose service declares permissions a secret, a UUIDv4 unique among the live
  ones, and returns the same secret for the same instance while it stays registered (restarts,
  stops and starts, package updates: the permissions are replaced by the new package's);
  `unregister` drops it when the instance is removed. Kept in `<state root>/permissions.json`
  (mode 0600, replaced atomically under a lock), so the secret of a running container survives a
  restart of the agent and of the node supervisor.
- `PermissionServer` (a thread of the node supervisor, which lives exactly as long as there
  are instances to vouch for and outlives agent restarts): answers on
  `<run root>/permissions.sock` (mode 0600: root's function servers) which permissions a secret
  holds for a function server. Only the secrets of instances that are not Stopped or Failed are
  answered.
- `query_permissions`: the client (for function servers and `aosctl permissions`).

Protocol (version 1): the client connects, sends one JSON object on one line (at most 4096 bytes,
within 2 s), reads one JSON line back, and the server closes the connection.

    > {"secret": "<AOS_SECRET>", "server": "vis"}
    < {"ok": true, "version": 1, "server": "vis", "permissions": {"Signal.Doors.*": "rw"},
       "instance": {"serviceId": ..., "subjectId": ..., "instance": 0, "instanceId": ...}}
    > {"secret": ..., "server": "vis", "function": "Signal.Doors.FrontLeft", "access": "r"}
    < {... as above ..., "function": "Signal.Doors.FrontLeft", "access": "r", "allowed": true}
    < {"ok": false, "version": 1, "code": "UnknownSecret" | "NoPermissions" | "BadRequest", "error": "..."}
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.files import file_lock, write_atomically
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.permissions import (
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    REQUEST_SECONDS,
    BadRequest,
    allowed,
    parse_request,
    secret_problem,
)
from aos_operator.runtime.status import read_status

REGISTRY_FILE = "permissions.json"  # in the state root
SOCKET_FILE = "permissions.sock"  # in the run root
MAX_CONNECTIONS = 16  # answered at once; more are closed unanswered
_MAX_REGISTRY_BYTES = 16 << 20

log = logging.getLogger("aos_operator.runtime.permissions")


def _read_registry(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            data = parse_json(handle.read(_MAX_REGISTRY_BYTES + 1) or b"{}")
    except FileNotFoundError:
        return {}
    except ValueError:
        log.error("%s: not JSON; no secret is answered until it is rewritten", path)
        return {}
    instances = data.get("instances") if isinstance(data, dict) else None
    return {str(k): v for k, v in instances.items() if isinstance(v, dict)} if isinstance(instances, dict) else {}


class PermissionRegistry:
    def __init__(self, state_root: Path, run_root: Path) -> None:
        self.path = state_root / REGISTRY_FILE
        self._lock = run_root / "locks" / "permissions.lock"

    def _write(self, instances: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps({"instances": instances}, sort_keys=True), mode=0o600)

    def register(self, identity: InstanceIdentity, permissions: Mapping[str, Mapping[str, str]]) -> str | None:
        """The instance's secret (the one it has, else a new one); None and unregistered when its
        service declares no permissions."""
        if not permissions:
            self.unregister(identity.instance_id)
            return None
        with file_lock(self._lock):
            instances = _read_registry(self.path)
            current = instances.get(identity.instance_id) or {}
            secret = current.get("secret")
            if secret_problem(secret):
                taken = {entry.get("secret") for entry in instances.values()}
                secret = str(uuid.uuid4())  # os.urandom underneath
                while secret in taken:
                    secret = str(uuid.uuid4())
            instances[identity.instance_id] = {
                "secret": secret, "serviceId": identity.service_id, "subjectId": identity.subject_id,
                "instance": identity.index,
                "permissions": {server: dict(functions) for server, functions in permissions.items()},
            }
            self._write(instances)
        return secret

    def unregister(self, instance_id: str) -> None:
        if not self.path.exists():
            return  # no instance of this runtime has permissions: nothing to take the lock for
        with file_lock(self._lock):
            instances = _read_registry(self.path)
            if instances.pop(instance_id, None) is not None:
                self._write(instances)

    def secret(self, instance_id: str) -> str | None:
        return (_read_registry(self.path).get(instance_id) or {}).get("secret")


class PermissionServer:
    """The socket, served by a thread; the registry file is re-read when it changes."""

    def __init__(self, state_root: Path, run_root: Path) -> None:
        self.state_root = state_root
        self.path = run_root / SOCKET_FILE
        self.registry_path = state_root / REGISTRY_FILE
        self._by_secret: dict[str, tuple[str, dict[str, Any]]] = {}
        self._seen: tuple[int, int, int] | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)  # the caller holds the supervisor lock: a stale socket
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_mask = os.umask(0o177)  # no moment in which others could connect
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_mask)
        os.chmod(self.path, 0o600)
        listener.listen(64)
        listener.settimeout(0.5)
        self._listener, self._inode = listener, os.stat(self.path).st_ino
        self._thread = threading.Thread(target=self._serve, name="permission-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and remove the socket; not waiting for the thread (it is a daemon and sees
        the flag within its accept timeout), so the supervisor's exit is not delayed."""
        self._closed.set()
        if self._listener is not None:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass
            self._listener.close()

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.1)
                continue
            if not self._slots.acquire(blocking=False):
                connection.close()  # too many at once: the client sees the connection closed
                continue
            threading.Thread(target=self._answer, args=(connection,), name="permission-request", daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        try:
            with connection:
                line = self._read_line(connection)
                reply = self.answer(line) if line is not None else _refusal(
                    "BadRequest", f"no request line of at most {MAX_REQUEST_BYTES} bytes within {REQUEST_SECONDS:g} s")
                connection.settimeout(REQUEST_SECONDS)
                try:
                    connection.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass
        finally:
            self._slots.release()

    @staticmethod
    def _read_line(connection: socket.socket) -> bytes | None:
        deadline = time.monotonic() + REQUEST_SECONDS
        buffer = bytearray()
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(buffer) > MAX_REQUEST_BYTES:
                return None
            connection.settimeout(remaining)
            try:
                chunk = connection.recv(MAX_REQUEST_BYTES + 1 - len(buffer) + 1)
            except OSError:
                return None
            if not chunk:
                break  # the client closed its side: what came is the request
            buffer.extend(chunk)
        line = bytes(buffer).split(b"\n", 1)[0]
        return line if len(line) <= MAX_REQUEST_BYTES else None

    def _lookup(self, secret: str) -> tuple[str, dict[str, Any]] | None:
        try:
            info = os.stat(self.registry_path)
            seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            instances = _read_registry(self.registry_path) if seen else {}
            self._by_secret = {entry["secret"]: (instance_id, entry) for instance_id, entry in instances.items()
                               if isinstance(entry.get("secret"), str)}
            self._seen = seen
        return self._by_secret.get(secret)

    def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line."""
        try:
            request = parse_request(line)
        except BadRequest as error:
            return _refusal("BadRequest", str(error))
        found = self._lookup(request.secret)
        if found is not None:
            status = read_status(self.state_root / "instances" / found[0] / "status.json")
            if status is None or status.phase.terminal:
                found = None  # a stopped or failed instance vouches for nobody
        if found is None:
            return _refusal("UnknownSecret", "no running instance holds this secret")
        instance_id, entry = found
        functions = (entry.get("permissions") or {}).get(request.server)
        if not isinstance(functions, dict):
            return _refusal("NoPermissions", f"the instance has no permissions for function server {request.server!r}")
        reply: dict[str, Any] = {
            "ok": True, "version": PROTOCOL_VERSION, "server": request.server, "permissions": functions,
            "instance": {"serviceId": entry.get("serviceId"), "subjectId": entry.get("subjectId"),
                         "instance": entry.get("instance"), "instanceId": instance_id},
        }
        if request.function is not None and request.access is not None:
            reply.update(function=request.function, access=request.access,
                         allowed=allowed(functions, request.function, request.access))
        return reply


def _refusal(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "version": PROTOCOL_VERSION, "code": code, "error": message}


def query_permissions(run_root: Path, secret: str, server: str, function: str | None = None,
                      access: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the node's permission socket; the reply as sent (`ok` false for a refusal).
    RuntimeFailure when no server answers."""
    request: dict[str, Any] = {"version": PROTOCOL_VERSION, "secret": secret, "server": server}
    if function is not None:
        request.update(function=function, access=access)
    path = run_root / SOCKET_FILE
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(path))
            connection.sendall(json.dumps(request).encode() + b"\n")
            reply = bytearray()
            while not reply.endswith(b"\n") and len(reply) <= 1 << 20:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                reply.extend(chunk)
    except OSError as error:
        raise RuntimeFailure(f"{path}: no permission server answers ({error.strerror or error})",
                             hint="it runs while an instance runs on this node; check --run-dir") from None
    try:
        answer = parse_json(bytes(reply))
    except ValueError:
        raise RuntimeFailure(f"{path}: the permission server's reply is not JSON") from None
    if not isinstance(answer, dict):
        raise RuntimeFailure(f"{path}: the permission server's reply is not a JSON object")
    return answer
