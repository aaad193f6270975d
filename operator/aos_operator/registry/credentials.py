"""Registry credentials: from a docker `config.json` or a Kubernetes image pull secret's data.

Lookups match registry hosts the way docker does: a key may be `host[:port]`, a URL such as
`https://host/v1/`, and Docker Hub is known under `https://index.docker.io/v1/` and its aliases.
Credential helpers are run as docker runs them: `credHelpers[host]` names the helper of one
registry, `credsStore` the helper of all others; `docker-credential-NAME get` reads the server on
stdin and answers JSON. Inline `auths` entries are the fallback. `store_credentials` and
`erase_credentials` write config.json (or the helper) as `docker login`/`logout` do.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aos_operator.bounded import parse_json, read_text_limited
from aos_operator.errors import InputError
from aos_operator.registry.headers import bad_character

_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_KEY = "index.docker.io"
_DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key docker writes for Docker Hub
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HELPER_TIMEOUT = 30.0
_HELPER_OUTPUT_LIMIT = 64 << 10
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


def default_config_path() -> Path:
    """Where docker keeps its config: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    directory = os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker"
    return Path(directory) / "config.json"


def server_key(registry: str) -> str:
    """The key docker writes into `auths` (and passes to helpers) for a registry."""
    key = registry_key(registry)
    return _DOCKER_HUB_SERVER if key == _DOCKER_HUB_KEY else key


class DockerConfig:
    """The `auths` of a docker config.json (also the format of a pull secret's .dockerconfigjson),
    with its credential helpers."""

    def __init__(self, auths: Mapping[str, Credentials], helpers: Mapping[str, str] | None = None,
                 store: str | None = None, source: str = "docker config") -> None:
        self._by_host = {registry_key(key): value for key, value in auths.items()}
        self._helpers = {registry_key(key): value for key, value in (helpers or {}).items()}
        self._store = store
        self._source = source
        self._from_helpers: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_json(cls, document: Any, source: str, *, helpers_allowed: bool = False) -> DockerConfig:
        """Build from a parsed config.json; `source` names where it came from in errors.

        Helpers run programs, so only a config file of the user's own names them
        (`helpers_allowed`); in a pull secret from the API they are ignored."""
        if not isinstance(document, dict):
            raise InputError(f"{source}: expected a JSON object with an 'auths' map")
        auths = document.get("auths", {})
        if not isinstance(auths, dict):
            raise InputError(f"{source}: 'auths' must be an object mapping registry hosts to credentials")
        helpers = (document.get("credHelpers") or {}) if helpers_allowed else {}
        if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
            raise InputError(f"{source}: 'credHelpers' must be an object mapping registry hosts to helper names")
        store = (document.get("credsStore") or None) if helpers_allowed else None
        if store is not None and not isinstance(store, str):
            raise InputError(f"{source}: 'credsStore' must be the name of a credential helper")
        for where, name in [*((f"credHelpers.{k}", v) for k, v in helpers.items()), ("credsStore", store)]:
            if name is not None and not _HELPER_NAME.fullmatch(name):
                raise InputError(f"{source}: {where}: {name!r} is not a credential helper name",
                                 hint="a name such as 'pass' or 'secretservice' (docker-credential-NAME on PATH)")
        inline = cls._from_entries(auths, source, "auths.")
        return cls(inline._by_host, helpers, store, source)

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
        path = default_config_path() if path is None else Path(path)
        try:
            text = read_text_limited(path, MAX_CONFIG_BYTES, lambda size: _too_large(path, size))
        except FileNotFoundError:
            if explicit:
                raise InputError(f"{path}: docker config file not found") from None
            return cls({})
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: cannot read docker config: {error}") from None
        return cls.from_json(_parse_json(text, str(path)), str(path), helpers_allowed=True)

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
        key = registry_key(registry)
        helper = self._helpers.get(key) or self._store
        if helper is not None:
            with self._lock:
                if key not in self._from_helpers:
                    self._from_helpers[key] = run_helper_get(helper, server_key(registry), self._source)
                found = self._from_helpers[key]
            if found is not None:
                return found
        return self._by_host.get(key)


def _run_helper(name: str, action: str, stdin: str, source: str) -> subprocess.CompletedProcess[str]:
    program = f"docker-credential-{name}"
    try:
        return subprocess.run([program, action], input=stdin, capture_output=True, text=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise InputError(f"{source}: credential helper {program} is not installed (not on PATH)",
                         hint=f"install {program}, or remove it from credHelpers/credsStore") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"{source}: credential helper {program} gave no answer within {_HELPER_TIMEOUT:g} s",
                         hint="it may wait for a password prompt or a locked keyring; unlock it and retry") from None
    except OSError as error:
        raise InputError(f"{source}: cannot run credential helper {program}: {error.strerror or error}") from None


def _helper_failure(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stdout or done.stderr or "").strip().splitlines()
    return text[0][:200] if text else f"exit status {done.returncode}"


def run_helper_get(name: str, server: str, source: str) -> Credentials | None:
    """`docker-credential-NAME get`: the helper's credentials for `server`, or None if it has none.

    A helper that is not installed has none (configs copied from a desktop name helpers a server
    lacks; the inline `auths` still count); one that runs and fails is an error."""
    program = f"docker-credential-{name}"
    if shutil.which(program) is None:
        return None
    done = _run_helper(name, "get", server, source)
    if done.returncode != 0:
        if "credentials not found" in (done.stdout + done.stderr).lower():
            return None
        raise InputError(f"{source}: {program} get {server} failed: {_helper_failure(done)}")
    if len(done.stdout) > _HELPER_OUTPUT_LIMIT:
        raise InputError(f"{source}: {program} get {server} answered more than {_HELPER_OUTPUT_LIMIT} bytes")
    document = _parse_json(done.stdout, f"{source}: the answer of {program} get {server}")
    if not isinstance(document, dict) or not isinstance(document.get("Username", ""), str) \
            or not isinstance(document.get("Secret", ""), str):
        raise InputError(f"{source}: {program} get {server}: expected JSON with Username and Secret strings")
    username, secret = document.get("Username", ""), document.get("Secret", "")
    if not secret:
        return None
    if username == "<token>":
        raise InputError(f"{source}: {program} holds an identity token for {server}, which aosctl cannot use",
                         hint="log in with a user name and password or access token instead")
    return Credentials(username, secret)


def _load_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read docker config: {error}") from None
    document = _parse_json(text, str(path)) if text.strip() else {}
    if not isinstance(document, dict):
        raise InputError(f"{path}: expected a JSON object with an 'auths' map")
    return document


def _write_document(path: Path, document: dict[str, Any]) -> None:
    """Replace config.json atomically, readable by its owner only (it may hold passwords)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=".config.json.")
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(document, file, indent="\t")
            file.write("\n")
        os.chmod(partial, 0o600)
        os.replace(partial, path)
    except OSError as error:
        raise InputError(f"{path}: cannot write docker config: {error.strerror or error}") from None


def _helper_of(document: dict[str, Any], registry: str, path: Path) -> str | None:
    config = DockerConfig.from_json(document, str(path), helpers_allowed=True) if document else DockerConfig({})
    return config._helpers.get(registry_key(registry)) or config._store


def store_credentials(registry: str, credentials: Credentials, path: Path | None = None) -> str:
    """Save credentials as `docker login` does: in the registry's helper when config.json names
    one (an empty `auths` entry marks it), else base64 in `auths`. Returns where they went."""
    path = default_config_path() if path is None else path
    document = _load_document(path)
    key = server_key(registry)
    helper = _helper_of(document, registry, path)
    auths = document.setdefault("auths", {})
    if helper is not None:
        payload = json.dumps({"ServerURL": key, "Username": credentials.username, "Secret": credentials.password})
        done = _run_helper(helper, "store", payload, str(path))
        if done.returncode != 0:
            raise InputError(f"{path}: docker-credential-{helper} store {key} failed: {_helper_failure(done)}")
        auths[key] = {}
        where = f"docker-credential-{helper}"
    else:
        pair = f"{credentials.username}:{credentials.password}".encode()
        auths[key] = {"auth": base64.b64encode(pair).decode("ascii")}
        where = str(path)
    _write_document(path, document)
    return where


def erase_credentials(registry: str, path: Path | None = None) -> bool:
    """Forget a registry's credentials as `docker logout` does; False when there were none."""
    path = default_config_path() if path is None else path
    document = _load_document(path)
    key = server_key(registry)
    helper = _helper_of(document, registry, path)
    removed = False
    if helper is not None:
        done = _run_helper(helper, "erase", key, str(path))
        if done.returncode == 0:
            removed = True
        elif "credentials not found" not in (done.stdout + done.stderr).lower():
            raise InputError(f"{path}: docker-credential-{helper} erase {key} failed: {_helper_failure(done)}")
    auths = document.get("auths")
    if isinstance(auths, dict):
        for entry in [k for k in auths if registry_key(k) == registry_key(registry)]:
            del auths[entry]
            removed = True
    if removed:
        _write_document(path, document)
    return removed


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
        return parse_json(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
