"""Signatures in the registry: attach one where cosign looks for it, read them all back, and
check a package against a verification policy before any of its layers is fetched.

Attach: the payload for the manifest digest is signed and appended to the `sha256-<hex>.sig`
manifest of the package's repository (kept signatures stay; the same key signing the same
digest again changes nothing). When the registry implements the OCI 1.1 referrers API the
signature is also pushed as a referrer of the package; Distribution 2.x does not, and then the
tag alone carries it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from aos_operator.errors import RegistryError, SignatureError
from aos_operator.registry import BytesBlob, RegistryClient
from aos_operator.registry.artifacts import manifest_if_present, referrers, small_blob
from aos_operator.registry.manifest import OCI_MANIFEST, Descriptor
from aos_operator.registry.reference import Reference, parse_reference
from aos_operator.trust.cosign import (
    MAX_SIGNATURES,
    SIGNATURE_ARTIFACT_TYPE,
    SignatureLayer,
    parse_signature_manifest,
    payload,
    signature_layer,
    signature_manifest,
    signature_tag,
)
from aos_operator.trust.keys import SigningKey
from aos_operator.trust.verify import FoundSignature, Verdict, VerificationPolicy, check_signatures

log = logging.getLogger("aos_operator.trust")
MAX_REFERRERS = 16


@dataclass(frozen=True)
class Attached:
    """Where a signature went: the tag, and the referrer manifest's digest if one was pushed."""

    tag: str
    referrer: str | None
    already_signed: bool


class _RegistryPayload:
    """A payload blob already in the repository; read only if the registry lost it."""

    def __init__(self, client: RegistryClient, ref: Reference, descriptor: Descriptor) -> None:
        self.client, self.ref, self.descriptor = client, ref, descriptor

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size

    def open(self) -> BinaryIO:
        return io.BytesIO(small_blob(self.client, self.ref, self.digest, self.size))


def attach_signature(
    client: RegistryClient, reference: str | Reference, digest: str, manifest_size: int, key: SigningKey,
    *, manifest_media_type: str = OCI_MANIFEST,
) -> Attached:
    """Sign manifest `digest` of `reference`'s repository with `key` and store the signature."""
    ref = parse_reference(reference)
    repository = Reference(ref.registry, ref.repository)
    tag_ref = Reference(ref.registry, ref.repository, tag=signature_tag(digest))
    data = payload(repository.repository_name, digest)
    layers: list[SignatureLayer] = []
    sources: dict[str, object] = {}
    existing = manifest_if_present(client, tag_ref)
    if existing is not None:
        for layer in parse_signature_manifest(existing.data, str(tag_ref)):
            if layer.payload.size == len(data) and key.public.verifies(layer.signature, data):
                return Attached(str(tag_ref), None, already_signed=True)
            layers.append(layer)
            sources[layer.payload.digest] = _RegistryPayload(client, repository, layer.payload)
    if len(layers) >= MAX_SIGNATURES:
        raise SignatureError(f"{tag_ref}: already holds {len(layers)} signatures; no more are read", hint="remove old ones")
    mine = signature_layer(data, key.sign(data))
    blob = BytesBlob(data)
    layers.append(mine)
    sources[blob.digest] = blob
    manifest, config = signature_manifest(layers)
    client.push(tag_ref, manifest, OCI_MANIFEST, {**sources, BytesBlob(config).digest: BytesBlob(config)})  # type: ignore[dict-item]
    referrer = None
    if referrers(client, repository, digest, SIGNATURE_ARTIFACT_TYPE).supported:
        subject = Descriptor(manifest_media_type, digest, manifest_size, "subject")
        single, single_config = signature_manifest([mine], subject=subject)
        referrer = client.push(
            repository, single, OCI_MANIFEST, {blob.digest: blob, BytesBlob(single_config).digest: BytesBlob(single_config)}
        )
    return Attached(str(tag_ref), referrer, already_signed=False)


def _layers_of(client: RegistryClient, repository: Reference, manifest: bytes, where: str) -> Iterable[FoundSignature]:
    for layer in parse_signature_manifest(manifest, where):
        yield FoundSignature(layer, small_blob(client, repository, layer.payload.digest, layer.payload.size), where)


def fetch_signatures(client: RegistryClient, reference: str | Reference, digest: str) -> list[FoundSignature]:
    """Every cosign signature of `digest` in the repository: the `.sig` tag, then referrers."""
    ref = parse_reference(reference)
    repository = Reference(ref.registry, ref.repository)
    tag_ref = Reference(ref.registry, ref.repository, tag=signature_tag(digest))
    found: list[FoundSignature] = []
    tagged = manifest_if_present(client, tag_ref)
    if tagged is not None:
        found.extend(_layers_of(client, repository, tagged.data, str(tag_ref)))
    listed = referrers(client, repository, digest, SIGNATURE_ARTIFACT_TYPE)
    for descriptor in (listed.descriptors or [])[:MAX_REFERRERS]:
        where = f"{repository}@{descriptor.digest}"
        found.extend(_layers_of(client, repository, client.pull_manifest(where).data, where))
    return found


def verify_package(client: RegistryClient, reference: str | Reference, digest: str, policy: VerificationPolicy) -> Verdict | None:
    """Check `digest` against `policy`; None when the policy is off. Reads only signature
    artifacts, never the package's layers. A registry that cannot be reached raises
    RegistryError (worth retrying); a verdict against the package raises SignatureError."""
    if not policy.required:
        return None
    ref = parse_reference(reference)
    package = f"{ref.repository_name}@{digest}"
    try:
        signatures = fetch_signatures(client, ref, digest)
    except SignatureError as error:
        raise SignatureError(f"{package}: {error.message}", hint=error.hint) from None
    except RegistryError:
        raise
    verdict = check_signatures(signatures, digest, policy.keys, package)
    log.info("%s: signature by %s (%s) verified", package, verdict.key.key_id, verdict.where)
    return verdict
