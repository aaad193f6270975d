"""Registry credentials: from a docker `config.json` or a Kubernetes image pull secret's data.

Lookups match registry hosts the way docker does: a key may be `host[:port]`, a URL such as
`https://host/v1/`, and Docker Hub is known under `https://index.docker.io/v1/` and its aliases.
Credential helpers (`credsStore`, `credHelpers`) are not run: only inline credentials count.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aos_operator.bounded import read_text_limited
from aos_operator.errors import InputError
from aos_operator.registry.headers import bad_character

_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_KEY = "index.docker.io"
PULL_SECRET_KEY = ".dockerconfigjson"
MAX_CONFIG_BYTES = 1024 * 1024  # docker's config.json and pull secrets are a few kilobytes
LEGACY_PULL_SECRET_KEY = ".dockercfg"


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token used as password) for one registry."""

    username: str
    password: str = field(repr=False)

    def credentials_for(self, registry: str) -> Credentials:
        """The same credentials for any registry: lets one pair stand where a source is expected."""
        return self


class CredentialSource(Protocol):
    def credentials_for(self, registry: str) -> Credentials | None:
        """Credentials for `registry` (host[:port] as written in the reference), or None."""


def registry_key(address: str) -> str:
    """Normalize a config key or reference host to a comparable host[:port] (docker's rule)."""
    for prefix in ("https://", "http://"):
        if address.startswith(prefix):
            address = address[len(prefix) :]
            break
    host = address.split("/", 1)[0].lower()
    return _DOCKER_HUB_KEY if host in _DOCKER_HUB_NAMES else host


class DockerConfig:
    """The `auths` of a docker config.json (also the format of a pull secret's .dockerconfigjson)."""

    def __init__(self, auths: Mapping[str, Credentials]) -> None:
        self._by_host = {registry_key(key): value for key, value in auths.items()}

    @classmethod
    def from_json(cls, document: Any, source: str) -> DockerConfig:
        """Build from a parsed config.json; `source` names where it came from in errors."""
        if not isinstance(document, dict):
            raise InputError(f"{source}: expected a JSON object with an 'auths' map")
        auths = document.get("auths", {})
        if not isinstance(auths, dict):
            raise InputError(f"{source}: 'auths' must be an object mapping registry hosts to credentials")
        return cls._from_entries(auths, source, "auths.")

    @classmethod
    def from_legacy_json(cls, document: Any, source: str) -> DockerConfig:
        """The old `.dockercfg` format: the host map is the whole document."""
        if not isinstance(document, dict):
            raise InputError(f"{source}: expected a JSON object mapping registry hosts to credentials")
        return cls._from_entries(document, source, "")

    @classmethod
    def _from_entries(cls, entries: Mapping[str, Any], source: str, prefix: str) -> DockerConfig:
        found = {}
        for key, entry in entries.items():
            credentials = _entry_credentials(entry, f"{source}: {prefix}{key}")
            if credentials is not None:
                found[key] = credentials
        return cls(found)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None) -> DockerConfig:
        """Read a config.json; by default $DOCKER_CONFIG/config.json or ~/.docker/config.json.

        A missing default file means no credentials; a missing explicit file is an error.
        """
        explicit = path is not None
        if path is None:
            directory = os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker"
            path = Path(directory) / "config.json"
        path = Path(path)
        try:
            text = read_text_limited(path, MAX_CONFIG_BYTES, lambda size: _too_large(path, size))
        except FileNotFoundError:
            if explicit:
                raise InputError(f"{path}: docker config file not found") from None
            return cls({})
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: cannot read docker config: {error}") from None
        return cls.from_json(_parse_json(text, str(path)), str(path))

    @classmethod
    def from_pull_secret(cls, data: Mapping[str, str], name: str = "image pull secret") -> DockerConfig:
        """From a Kubernetes Secret's `data` (values base64, as the API returns them).

        Accepts type kubernetes.io/dockerconfigjson (`.dockerconfigjson`) and the legacy
        kubernetes.io/dockercfg (`.dockercfg`).
        """
        for key, legacy in ((PULL_SECRET_KEY, False), (LEGACY_PULL_SECRET_KEY, True)):
            if key in data:
                source = f"{name}: data[{key}]"
                if isinstance(data[key], str) and len(data[key]) > MAX_CONFIG_BYTES * 4 // 3 + 4:
                    raise _too_large(source, len(data[key]) * 3 // 4)
                text = _decode_base64(data[key], source)
                document = _parse_json(text, source)
                return cls.from_legacy_json(document, source) if legacy else cls.from_json(document, source)
        raise InputError(
            f"{name}: has no {PULL_SECRET_KEY} (or {LEGACY_PULL_SECRET_KEY}) key",
            hint="use a Secret of type kubernetes.io/dockerconfigjson, e.g. made by "
            "`kubectl create secret docker-registry`",
        )

    def credentials_for(self, registry: str) -> Credentials | None:
        return self._by_host.get(registry_key(registry))


def _entry_credentials(entry: Any, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object with 'auth' or 'username'/'password'")
    if entry.get("auth"):
        decoded = _decode_base64(entry["auth"], f"{where}.auth")
        username, colon, password = decoded.partition(":")
        if not colon:
            raise InputError(
                f"{where}.auth: decodes to no 'user:password' pair", hint="encode it as base64 of user:password"
            )
        return _checked(Credentials(username, password), f"{where}.auth")
    if entry.get("username"):
        password = entry.get("password", "")
        if not isinstance(entry["username"], str) or not isinstance(password, str):
            raise InputError(f"{where}: 'username' and 'password' must be strings")
        return _checked(Credentials(entry["username"], password), where)
    # An empty entry is what docker writes when a credential helper holds the secret.
    return None


def _checked(credentials: Credentials, where: str) -> Credentials:
    """Refuse a user name or password with CR, LF, NUL or another control character: a copy-paste
    accident at best (`echo` adds a newline), and nothing a registry accepts."""
    for name, value in (("user name", credentials.username), ("password", credentials.password)):
        problem = bad_character(value, allow_space=True)
        if problem and "non-ASCII" not in problem:
            raise InputError(
                f"{where}: the {name} holds {problem}",
                hint="remove it (base64 of `printf 'user:password'`, not of `echo`, which adds a newline)",
            )
    return credentials


def _too_large(where: str | os.PathLike[str], size: int) -> InputError:
    return InputError(
        f"{where}: {size} bytes, more than the {MAX_CONFIG_BYTES} bytes a registry credentials file may hold",
        hint="is this the right file? docker's config.json is a few kilobytes",
    )


def _decode_base64(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as error:
        raise InputError(f"{where}: not valid base64 text ({error})") from None


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
