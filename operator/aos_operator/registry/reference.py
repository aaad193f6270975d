"""Image references (`registry/repository[:tag][@digest]`): parsing, normalization, display."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from aos_operator.digests import is_digest
from aos_operator.errors import InputError

DOCKER_HUB = "docker.io"
# Docker Hub's API lives on another host than the name people write.
_DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?$")
_REPOSITORY_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A parsed reference. `tag` and `digest` are both optional; a digest wins when both are set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse like docker does: the first path part is a registry if it has '.', ':' or is localhost."""
        if not isinstance(text, str) or not text or text != text.strip():
            raise InputError(
                f"image reference {text!r} is empty or has surrounding spaces",
                hint="write it as registry/repository:tag or registry/repository@sha256:<hex>",
            )
        remainder, digest = text, None
        if "@" in remainder:
            remainder, digest = remainder.split("@", 1)
            if not is_digest(digest):
                raise InputError(
                    f"image reference {text!r}: {digest!r} is not a sha256 digest",
                    hint="digests are written sha256:<64 lowercase hex digits>",
                )
        first, slash, rest = remainder.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            registry, path = first, rest
        else:
            registry, path = DOCKER_HUB, remainder
        tag = None
        last_slash = path.rfind("/")
        colon = path.rfind(":")
        if colon > last_slash:
            path, tag = path[:colon], path[colon + 1 :]
            if not _TAG_RE.fullmatch(tag):
                raise InputError(
                    f"image reference {text!r}: tag {tag!r} is not valid",
                    hint="a tag is 1-128 characters of letters, digits, '_', '.', '-' and cannot start with '.' or '-'",
                )
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        if not _HOST_RE.fullmatch(registry):
            raise InputError(f"image reference {text!r}: {registry!r} is not a valid registry host[:port]")
        if len(path) > _REPOSITORY_MAX or not _REPOSITORY_RE.fullmatch(path):
            raise InputError(
                f"image reference {text!r}: repository {path!r} is not valid",
                hint="repository names are lowercase letters and digits, separated by '/', '.', '_', '__' or '-'",
            )
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the /v2/ API."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_reference(self) -> str:
        """What goes after /manifests/: the digest if known, else the tag, else `latest`."""
        return self.digest or self.tag or "latest"

    @property
    def repository_name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.repository_name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(reference: str | Reference) -> Reference:
    return reference if isinstance(reference, Reference) else Reference.parse(reference)
