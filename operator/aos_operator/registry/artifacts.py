"""Artifacts that sit beside a package in its repository: manifests looked up by a tag that may
not exist, small blobs read into memory, and the OCI 1.1 referrers API.

Separate from `client` so that callers that attach or read signatures do not widen the
package client; every call goes through the same transport (auth, retries, TLS).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from aos_operator.bounded import parse_json
from aos_operator.errors import RegistryError
from aos_operator.registry.auth import repository_scope
from aos_operator.registry.client import PulledManifest, RegistryClient
from aos_operator.registry.manifest import MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES, OCI_INDEX, Descriptor
from aos_operator.registry.reference import Reference, parse_reference
from aos_operator.registry.transport import discard, read_body

# Registries answer these for an API they do not implement (Distribution 2.x: 404).
_UNSUPPORTED = frozenset({400, 404, 405, 501})


def manifest_if_present(client: RegistryClient, reference: str | Reference) -> PulledManifest | None:
    """The manifest at `reference`, or None when the registry says it has none (HTTP 404)."""
    ref = parse_reference(reference)
    response = client.transport.request(
        "HEAD",
        ref.api_host,
        f"/v2/{ref.repository}/manifests/{ref.manifest_reference}",
        what=f"look up {ref}",
        scopes=[repository_scope(ref.repository)],
        headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
    )
    discard(response)
    if response.status == 404:
        return None
    return client.pull_manifest(ref)  # any other answer: the full request says what went wrong


class _MemorySink:
    """Collects a small, already size-bounded blob in memory."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.data: bytes | None = None

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def restart(self) -> None:
        self.parts.clear()

    def commit(self) -> None:
        self.data = b"".join(self.parts)

    def abort(self) -> None:
        self.parts.clear()


def small_blob(client: RegistryClient, repository: str | Reference, digest: str, size: int) -> bytes:
    """A blob of known digest and size (the caller bounds it), verified, in memory."""
    sink = _MemorySink()
    client.pull_blob_into(repository, digest, size, sink)
    assert sink.data is not None
    return sink.data


@dataclass(frozen=True)
class Referrers:
    """What the referrers API said: None in `descriptors` means the registry does not have it."""

    descriptors: list[Descriptor] | None

    @property
    def supported(self) -> bool:
        return self.descriptors is not None


def referrers(client: RegistryClient, repository: str | Reference, digest: str, artifact_type: str) -> Referrers:
    """Manifests whose `subject` is `digest`, of `artifact_type` (OCI distribution 1.1)."""
    ref = parse_reference(repository)
    what = f"list referrers of {ref.repository_name}@{digest}"
    response = client.transport.request(
        "GET",
        ref.api_host,
        f"/v2/{ref.repository}/referrers/{digest}?{urlencode({'artifactType': artifact_type})}",
        what=what,
        scopes=[repository_scope(ref.repository)],
        headers={"Accept": OCI_INDEX},
    )
    if response.status in _UNSUPPORTED:
        discard(response)
        return Referrers(None)
    if response.status != 200:
        discard(response)
        raise RegistryError(f"{what}: the registry answered HTTP {response.status}")
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    body = read_body(response, MAX_MANIFEST_BYTES, what)
    if content_type != OCI_INDEX:
        return Referrers(None)  # not the API: some registries serve a page for unknown paths
    try:
        manifests = parse_json(body).get("manifests") or []
    except (ValueError, AttributeError):
        raise RegistryError(f"{what}: the registry's referrers answer is not an OCI index") from None
    found = []
    for index, item in enumerate(manifests if isinstance(manifests, list) else []):
        if not isinstance(item, dict) or item.get("artifactType") != artifact_type:
            continue  # the filter is optional for registries; apply it here
        digest_value, size = item.get("digest"), item.get("size")
        if isinstance(digest_value, str) and isinstance(size, int) and not isinstance(size, bool):
            found.append(Descriptor(str(item.get("mediaType", "")), digest_value, size, f"manifests[{index}]"))
    return Referrers(found)
