"""The JSON documents of a service package: media types, descriptors, the manifest and the index.

The manifest is an OCI image manifest with one extra top-level descriptor, `aosService`,
pointing at the Aos service config blob (AosEdge's service-config era). The service config
stays out of `layers`, so standard OCI tools still read the image.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.digests import canonical_json, is_digest
from aos_operator.errors import InputError, PackageError

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_AOS_SERVICE_CONFIG = "application/vnd.aos.service.config.v1+json"
# An Aos layer in a service manifest's layers[1..] (AosEdge's layer packages use this type).
MEDIA_TYPE_AOS_LAYER = "application/vnd.aos.image.layer.v1.tar+gzip"
ANNOTATION_LAYER_UID = "io.aosedge.layer.uid"
ANNOTATION_LAYER_VERSION = "io.aosedge.layer.version"
ANNOTATION_LAYER_UNCOMPRESSED_SIZE = "io.aosedge.layer.uncompressed-size"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
OCI_LAYOUT_FILE = "oci-layout"
OCI_LAYOUT_CONTENT = canonical_json({"imageLayoutVersion": "1.0.0"})

# The tag grammar of the OCI distribution spec, which is what registries and skopeo accept.
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # used with fullmatch


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs; hashable, unlike a dict

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            document["annotations"] = dict(self.annotations)
        return document

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    @classmethod
    def from_json(cls, value: Any, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise PackageError(f"{where}: expected a descriptor object, got {type(value).__name__}")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise PackageError(f"{where}.mediaType: missing or not a string")
        if not isinstance(digest, str) or not is_digest(digest):
            raise PackageError(f"{where}.digest: {digest!r} is not a sha256:<hex> digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PackageError(f"{where}.size: {size!r} is not a byte count")
        annotations = value.get("annotations")
        if annotations is None:
            return cls(media_type, digest, size)
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise PackageError(f"{where}.annotations: expected an object of strings")
        return cls(media_type, digest, size, tuple(sorted(annotations.items())))


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    aos_service: Descriptor | None

    @property
    def descriptors(self) -> tuple[Descriptor, ...]:
        extra = (self.aos_service,) if self.aos_service else ()
        return (self.config, *self.layers, *extra)


def check_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag):
        raise InputError(
            f"tag {tag!r} is not a valid OCI tag",
            hint="use letters, digits, '_', '.', '-' (not first), at most 128 characters",
        )
    return tag


def manifest_json(config: Descriptor, layers: list[Descriptor], aos_service: Descriptor) -> bytes:
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
            "aosService": aos_service.to_json(),
        }
    )


def index_json(manifest: Descriptor, tag: str | None) -> bytes:
    entry = manifest.to_json()
    if tag is not None:
        entry["annotations"] = {ANNOTATION_REF_NAME: tag}
    return canonical_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [entry]})


def load_json(data: bytes, where: str) -> Any:
    try:
        return parse_json(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackageError(f"{where}: not valid JSON: {error}") from error


def parse_manifest(data: bytes, where: str) -> Manifest:
    document = load_json(data, where)
    if not isinstance(document, dict):
        raise PackageError(f"{where}: expected a JSON object")
    if document.get("schemaVersion") != 2:
        raise PackageError(f"{where}.schemaVersion: {document.get('schemaVersion')!r}, expected 2")
    config = Descriptor.from_json(document.get("config"), f"{where}.config")
    layers_value = document.get("layers")
    if not isinstance(layers_value, list) or not layers_value:
        raise PackageError(f"{where}.layers: a package needs at least one layer (the service rootfs)")
    layers = tuple(Descriptor.from_json(layer, f"{where}.layers[{i}]") for i, layer in enumerate(layers_value))
    aos_value = document.get("aosService")
    aos_service = Descriptor.from_json(aos_value, f"{where}.aosService") if aos_value is not None else None
    return Manifest(config, layers, aos_service)
