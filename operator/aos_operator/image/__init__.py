"""The image room: deterministic rootfs layers, the AosEdge service package, and a blob store.

Public API: `build_package` (source tree + image config + service config -> package archive
and/or OCI layout), `open_package` (read a package back, verified), `BlobStore`.
"""

from aos_operator.image.deflate import DEFAULT_LEVEL
from aos_operator.image.oci import (
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_AOS_SERVICE_CONFIG,
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Manifest,
)
from aos_operator.image.package import BuildResult, build_package
from aos_operator.image.progress import Progress, ProgressCallback
from aos_operator.image.reader import Package, open_package
from aos_operator.image.store import BlobStore, StoredBlob

__all__ = [
    "ANNOTATION_REF_NAME",
    "DEFAULT_LEVEL",
    "MEDIA_TYPE_AOS_SERVICE_CONFIG",
    "MEDIA_TYPE_IMAGE_CONFIG",
    "MEDIA_TYPE_INDEX",
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_MANIFEST",
    "BlobStore",
    "BuildResult",
    "Descriptor",
    "Manifest",
    "Package",
    "Progress",
    "ProgressCallback",
    "StoredBlob",
    "build_package",
    "open_package",
]
