"""cosign's signature format, as data: the simple-signing payload and the signature manifest.

Pure: bytes in, bytes out; no keys are read and no registry is called here.

- The payload is the JSON cosign signs: the manifest digest under `critical.image`, the
  repository under `critical.identity`, and a fixed type; compact, in cosign's field order.
- A package's signatures live in the same repository under the tag `sha256-<hex>.sig`: an OCI
  image manifest whose layers are payloads (`application/vnd.dev.cosign.simplesigning.v1+json`),
  each carrying its base64 signature in the `dev.cosignproject.cosign/signature` annotation.
  More signatures append layers. With OCI 1.1 referrers the same manifest, with a `subject`
  and the artifact type `application/vnd.dev.cosign.artifact.sig.v1+json`, is pushed by digest.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.digests import canonical_json, digest_hex, is_digest, sha256_digest
from aos_operator.errors import SignatureError
from aos_operator.registry.manifest import OCI_MANIFEST, Descriptor

SIGNATURE_TYPE = "cosign container image signature"
PAYLOAD_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MAX_PAYLOAD_BYTES = 64 * 1024  # a payload is a few hundred bytes; optional claims add a little
MAX_SIGNATURES = 64  # layers of one signature manifest that are looked at
_MAX_SIGNATURE_CHARS = 1024  # base64 of a DER ECDSA P-256 signature is about 96


def signature_tag(digest: str) -> str:
    """Where cosign keeps the signatures of `digest`: `sha256-<hex>.sig`."""
    return f"sha256-{digest_hex(digest)}.sig"


def payload(repository: str, digest: str, optional: dict[str, str] | None = None) -> bytes:
    """The simple-signing payload for a manifest digest, byte for byte as cosign writes it."""
    if not is_digest(digest):
        raise SignatureError(f"cannot sign {digest!r}: not a sha256 digest")
    document = {
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": optional or None,
    }
    # Go's encoding/json: struct order (already alphabetical here), compact, HTML characters escaped.
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def signed_digest(data: bytes, where: str) -> str:
    """The manifest digest a payload vouches for; refuses anything that is not cosign's payload."""
    try:
        document = parse_json(data)
        critical = document["critical"]
        kind = critical["type"]
        digest = critical["image"]["docker-manifest-digest"]
    except (ValueError, KeyError, TypeError):
        raise SignatureError(f"{where}: the signed payload is not a cosign simple-signing document") from None
    if kind != SIGNATURE_TYPE:
        raise SignatureError(f"{where}: the signed payload is of type {kind!r}, not {SIGNATURE_TYPE!r}")
    if not is_digest(digest):
        raise SignatureError(f"{where}: the signed payload names {digest!r}, not a sha256 digest")
    return digest


@dataclass(frozen=True)
class SignatureLayer:
    """One signature in a signature manifest: the payload's descriptor and the raw signature."""

    payload: Descriptor
    signature: bytes
    annotations: dict[str, str]

    def descriptor_json(self) -> dict[str, Any]:
        return {
            "mediaType": PAYLOAD_MEDIA_TYPE,
            "size": self.payload.size,
            "digest": self.payload.digest,
            "annotations": self.annotations,
        }


def signature_layer(payload_bytes: bytes, signature: bytes) -> SignatureLayer:
    descriptor = Descriptor(PAYLOAD_MEDIA_TYPE, sha256_digest(payload_bytes), len(payload_bytes), "layers")
    annotations = {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
    return SignatureLayer(descriptor, signature, annotations)


def config_for(layers: list[SignatureLayer]) -> bytes:
    """The image config of a signature manifest, in the shape cosign's library gives it."""
    document = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer.payload.digest for layer in layers]},
        "config": {},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def signature_manifest(
    layers: list[SignatureLayer], *, subject: Descriptor | None = None
) -> tuple[bytes, bytes]:
    """(manifest, config) for a list of signatures; with `subject`, the OCI 1.1 referrer form."""
    config = config_for(layers)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": SIGNATURE_ARTIFACT_TYPE if subject else OCI_CONFIG,
            "size": len(config),
            "digest": sha256_digest(config),
        },
        "layers": [layer.descriptor_json() for layer in layers],
    }
    if subject is not None:
        document["subject"] = {"mediaType": subject.media_type, "size": subject.size, "digest": subject.digest}
        document["artifactType"] = SIGNATURE_ARTIFACT_TYPE
    return canonical_json(document), config


def parse_signature_manifest(data: bytes, where: str) -> list[SignatureLayer]:
    """The signatures a signature manifest lists; layers that are not cosign signatures are
    skipped (cosign tolerates other attachments), malformed ones are refused."""
    try:
        document = parse_json(data)
    except (ValueError, UnicodeDecodeError):
        raise SignatureError(f"{where}: the signature manifest is not JSON") from None
    layers = document.get("layers") if isinstance(document, dict) else None
    if not isinstance(layers, list):
        raise SignatureError(f"{where}: the signature manifest has no layers list")
    found: list[SignatureLayer] = []
    for index, layer in enumerate(layers[:MAX_SIGNATURES]):
        if not isinstance(layer, dict) or layer.get("mediaType") != PAYLOAD_MEDIA_TYPE:
            continue
        annotations = layer.get("annotations")
        encoded = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(encoded, str) or len(encoded) > _MAX_SIGNATURE_CHARS:
            continue  # no usable signature on this layer (e.g. keyless, bundle-only)
        if not is_digest(digest) or isinstance(size, bool) or not isinstance(size, int):
            raise SignatureError(f"{where}: layers[{index}] has no valid digest and size")
        if not 0 < size <= MAX_PAYLOAD_BYTES:
            raise SignatureError(f"{where}: layers[{index}] declares a {size}-byte payload (limit {MAX_PAYLOAD_BYTES})")
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError(f"{where}: layers[{index}] signature annotation is not base64") from None
        text_annotations = {k: v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)}
        found.append(SignatureLayer(Descriptor(PAYLOAD_MEDIA_TYPE, digest, size, f"layers[{index}]"), signature, text_annotations))
    return found
