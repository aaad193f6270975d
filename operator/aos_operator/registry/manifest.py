"""Manifests as the registry sees them: media types, and the blobs a manifest refers to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.digests import is_digest
from aos_operator.errors import PackageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
AOS_SERVICE_CONFIG = "application/vnd.aos.service.config.v1+json"

MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
# Registries cap manifests at a few MiB; anything larger is not a manifest.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Descriptors that point at other manifests, not at blobs of this one.
_NOT_BLOB_FIELDS = frozenset({"subject", "manifests"})


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor; `field` says where in the manifest it was found (for messages)."""

    media_type: str
    digest: str
    size: int
    field: str = ""


def parse_manifest(data: bytes, source: str) -> dict[str, Any]:
    """Decode manifest JSON; `source` names it in errors (a file, a reference)."""
    try:
        document = parse_json(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PackageError(f"{source}: manifest is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise PackageError(f"{source}: manifest must be a JSON object")
    return document


def is_index(document: dict[str, Any], media_type: str | None = None) -> bool:
    return media_type in INDEX_MEDIA_TYPES or document.get("mediaType") in INDEX_MEDIA_TYPES or "manifests" in document


def referenced_blobs(document: dict[str, Any], source: str) -> list[Descriptor]:
    """Every blob descriptor at the top level of an image manifest: config, layers, aosService, ...

    Generic on purpose: any top-level descriptor or list of descriptors counts, so extra
    fields such as AosEdge's `aosService` are carried along without naming them here.
    Duplicates (same digest) are listed once.
    """
    if is_index(document):
        raise PackageError(
            f"{source}: is an image index, not an image manifest",
            hint="push or pull the platform's image manifest by its digest",
        )
    found: dict[str, Descriptor] = {}
    for name, value in document.items():
        if name in _NOT_BLOB_FIELDS:
            continue
        candidates = (
            [(f"{name}[{i}]", item) for i, item in enumerate(value)] if isinstance(value, list) else [(name, value)]
        )
        for where, item in candidates:
            if isinstance(item, dict) and "digest" in item:
                descriptor = _descriptor(item, where, source)
                found.setdefault(descriptor.digest, descriptor)
    return list(found.values())


def _descriptor(item: dict[str, Any], where: str, source: str) -> Descriptor:
    digest, size, media_type = item.get("digest"), item.get("size"), item.get("mediaType", "")
    if not isinstance(digest, str) or not is_digest(digest):
        raise PackageError(
            f"{source}: {where}.digest {digest!r} is not a sha256 digest",
            hint="descriptors carry digests as sha256:<64 lowercase hex>",
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise PackageError(f"{source}: {where}.size {size!r} must be a non-negative integer")
    if not isinstance(media_type, str):
        raise PackageError(f"{source}: {where}.mediaType must be a string")
    return Descriptor(media_type=media_type, digest=digest, size=size, field=where)
