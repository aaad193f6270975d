"""Function-server permissions of a service (AosEdge's `permissions`, reference §4), pure: the
service config's map read and checked, AosEdge's path-mask match, and the request of the
permission socket's protocol parsed and checked (the socket itself: permission_server.py).

`permissions` is `{functionServerID: {function or path mask: "r" | "w" | "rw"}}`, for example
`{"vis": {"Signal.Doors.*": "rw"}}`. A function server asks which permissions the caller's secret
(`AOS_SECRET`) holds for its own ID and decides itself; `allowed` is the decision AosEdge's VIS
makes, offered so that every function server need not write it again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.errors import PackageError

# Bounds on what a package may declare (the runtime runs as root; the config is hostile).
MAX_SERVERS = 64
MAX_FUNCTIONS = 1024  # per server
MAX_NAME = 256  # characters of a server ID or a function mask
# The socket protocol: one JSON line in, one JSON line out, then the connection closes.
MAX_REQUEST_BYTES = 4096
REQUEST_SECONDS = 2.0  # the whole request line must arrive within this
PROTOCOL_VERSION = 1

_NAME_RE = re.compile(r"[^\x00-\x20\x7f]+")  # printable, no whitespace
_ACCESS_RE = re.compile(r"rw?|wr?", re.IGNORECASE)  # the letters once each, in any case, as VIS compares them
_SECRET_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

Permissions = Mapping[str, Mapping[str, str]]


def _name_problem(name: Any, what: str) -> str | None:
    if not isinstance(name, str):
        return f"{what} must be a string, got {type(name).__name__}"
    if not name or len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
        return f"{what} {name[:64]!r} must be 1 to {MAX_NAME} printable characters without spaces"
    return None


def parse_permissions(value: Any, where: str) -> dict[str, dict[str, str]]:
    """The `permissions` object of a service config, checked; {} when absent."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PackageError(f"{where}: expected an object {{server: {{function: r|w|rw}}}}, got {type(value).__name__}")
    if len(value) > MAX_SERVERS:
        raise PackageError(f"{where}: {len(value)} function servers, at most {MAX_SERVERS}")
    found: dict[str, dict[str, str]] = {}
    for server, functions in value.items():
        if problem := _name_problem(server, "a function server ID"):
            raise PackageError(f"{where}: {problem}")
        if not isinstance(functions, Mapping):
            raise PackageError(f"{where}.{server}: expected an object {{function: r|w|rw}}, got {type(functions).__name__}")
        if len(functions) > MAX_FUNCTIONS:
            raise PackageError(f"{where}.{server}: {len(functions)} functions, at most {MAX_FUNCTIONS}")
        found[server] = {}
        for function, access in functions.items():
            if problem := _name_problem(function, "a function"):
                raise PackageError(f"{where}.{server}: {problem}")
            if not isinstance(access, str) or not _ACCESS_RE.fullmatch(access):
                raise PackageError(f"{where}.{server}.{function[:64]}: expected r, w or rw, got {access!r:.40}")
            found[server][function] = access
    return found


def mask_matches(mask: str, function: str) -> bool:
    """AosEdge's path filter: both split at dots; a `*` segment stands for one or more segments;
    the mask must match the path's first segments (so `Signal.Doors` covers
    `Signal.Doors.FrontLeft.IsOpen`). Segments compare exactly."""
    wanted, path = mask.split("."), function.split(".")
    # reachable[j]: the first i mask segments can match the first j path segments (a table, not
    # a recursion: a mask of many `*` against a long path stays quadratic).
    reachable = [True] + [False] * len(path)
    for segment in wanted:
        following = [False] * (len(path) + 1)
        for j, ok in enumerate(reachable):
            if not ok:
                continue
            if segment == "*":
                for k in range(j + 1, len(path) + 1):
                    following[k] = True
            elif j < len(path) and path[j] == segment:
                following[j + 1] = True
        reachable = following
    return any(reachable)


def allowed(functions: Mapping[str, str], function: str, access: str) -> bool:
    """Whether some mask that matches `function` grants every letter of `access`
    (letters compared case-insensitively, as AosEdge does)."""
    letters = set(access.lower())
    return any(letters <= set(granted.lower()) for mask, granted in functions.items() if mask_matches(mask, function))


def secret_problem(secret: Any) -> str | None:
    if not isinstance(secret, str) or not _SECRET_RE.fullmatch(secret):
        return "secret must be a UUIDv4 string as AOS_SECRET holds it"
    return None


@dataclass(frozen=True)
class PermissionRequest:
    secret: str
    server: str
    function: str | None = None
    access: str | None = None


class BadRequest(ValueError):
    """A request the server refuses without looking anything up."""


def parse_request(line: bytes) -> PermissionRequest:
    """One request line of the socket protocol, checked field by field."""
    if len(line) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request longer than {MAX_REQUEST_BYTES} bytes")
    try:
        data = parse_json(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("request is not one line of JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request must be a JSON object")
    unknown = sorted(set(data) - {"version", "secret", "server", "function", "access"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:64]!r}")
    if data.get("version", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise BadRequest(f"protocol version {str(data.get('version'))[:16]} is not {PROTOCOL_VERSION}")
    if problem := secret_problem(data.get("secret")):
        raise BadRequest(problem)
    if problem := _name_problem(data.get("server"), "server"):
        raise BadRequest(problem)
    function, access = data.get("function"), data.get("access")
    if (function is None) != (access is None):
        raise BadRequest("function and access go together")
    if function is not None:
        if problem := _name_problem(function, "function"):
            raise BadRequest(problem)
        if not isinstance(access, str) or not _ACCESS_RE.fullmatch(access):
            raise BadRequest("access must be r, w or rw")
    return PermissionRequest(data["secret"], data["server"], function, access)
