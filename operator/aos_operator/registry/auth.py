"""Registry authentication: WWW-Authenticate challenges, access scopes and a bearer-token cache.

The HTTP exchanges themselves live in the transport; this module holds what they decide on.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aos_operator.bounded import parse_json
from aos_operator.registry.credentials import Credentials

_PARAM_RE = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
# Renew a token this long before the registry would reject it, so a request never races expiry.
_EXPIRY_MARGIN = 10.0
# The distribution token spec: a token without expires_in lives 60 seconds.
_DEFAULT_TOKEN_LIFETIME = 60.0
_LONGEST_TOKEN_LIFETIME = 86400.0


@dataclass(frozen=True)
class Challenge:
    """One parsed WWW-Authenticate challenge: scheme (lowercase) and its parameters."""

    scheme: str
    params: dict[str, str]

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes the registry asked for (space-separated in one `scope` parameter)."""
        return tuple(self.params.get("scope", "").split())


def parse_challenge(header: str | None) -> Challenge | None:
    """Parse `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM_RE.match(rest, position)
        if not match or match.end() == position:
            break
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[name] = value
        position = match.end()
    return Challenge(scheme.lower(), params)


def repository_scope(repository: str, push: bool = False) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


def basic_header(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float

    def usable(self, now: float) -> bool:
        return now < self.expires_at - _EXPIRY_MARGIN


def parse_token_response(body: bytes, requested_at: float) -> Token | None:
    """The `token` (or OAuth2 `access_token`) of a token server's JSON answer; None if absent."""
    try:
        document = parse_json(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    value = document.get("token") or document.get("access_token")
    if not isinstance(value, str) or not value:
        return None
    lifetime = document.get("expires_in")
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not lifetime > 0:  # NaN too
        lifetime = _DEFAULT_TOKEN_LIFETIME
    # a day at most: 1e999 or a 400-digit integer is not a float we can add to
    return Token(value, requested_at + min(lifetime, _LONGEST_TOKEN_LIFETIME))


TokenKey = tuple[str, str, frozenset[str]]


class TokenCache:
    """Bearer tokens per (realm, service, scopes); thread-safe, forgets expired ones."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[TokenKey, Token] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(realm: str, service: str, scopes: Iterable[str]) -> TokenKey:
        return (realm, service, frozenset(scopes))

    def get(self, key: TokenKey) -> Token | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and not token.usable(self._clock()):
                del self._tokens[key]
                return None
            return token

    def put(self, key: TokenKey, token: Token) -> None:
        with self._lock:
            self._tokens[key] = token

    def discard(self, key: TokenKey) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def now(self) -> float:
        return self._clock()
