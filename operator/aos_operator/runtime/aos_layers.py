"""Which Aos layers (a service manifest's `layers[1..]`) a device accepts. Pure.

AosEdge services name shared layers (a Python library, a runtime) that the device stacks under
the service layer. The format contract with the build side: each is a descriptor of media type
`application/vnd.aos.image.layer.v1.tar+gzip` (AosEdge's own tests also use the plain-tar
type, which is accepted as well; the unpacker reads both), listed in the order the service's
config lists them, with the annotations `io.aosedge.layer.uid` and `io.aosedge.layer.version`.

Refused, naming the manifest and the index: another media type (encrypted AosEdge layers
included: this device has no key to decrypt them), more than `MAX_AOS_LAYERS` layers (every
layer is one overlay lower directory, and the mount options of one overlay fit in a page), a
digest listed twice, an Aos layer equal to the service layer, and an image config whose
`rootfs.diff_ids` does not have one entry per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aos_operator.errors import PackageError

AOS_LAYER_MEDIA_TYPE = "application/vnd.aos.image.layer.v1.tar+gzip"
AOS_LAYER_MEDIA_TYPES = (AOS_LAYER_MEDIA_TYPE, "application/vnd.aos.image.layer.v1.tar")
LAYER_UID_ANNOTATION = "io.aosedge.layer.uid"
LAYER_VERSION_ANNOTATION = "io.aosedge.layer.version"
MAX_AOS_LAYERS = 16
_ENCRYPTED_PREFIX = "application/vnd.aos.image.layer.enc."


class _Layer(Protocol):
    @property
    def digest(self) -> str: ...

    @property
    def media_type(self) -> str: ...


def check_layer_count(count: int, where: str) -> None:
    """`count` manifest layers: the service layer and at most MAX_AOS_LAYERS Aos layers."""
    if count - 1 > MAX_AOS_LAYERS:
        raise PackageError(f"{where}: layers[1:]: {count - 1} Aos layers, at most {MAX_AOS_LAYERS} "
                           "are stacked; nothing was installed",
                           hint="merge some of the service's layers into one")


def check_aos_layers(layers: Sequence[_Layer], where: str) -> None:
    """Refuse the manifest's `layers[1..]` (`layers` is the whole list) unless every one is an
    accepted, distinct Aos layer."""
    check_layer_count(len(layers), where)
    aos_layers = layers[1:]
    seen = {layers[0].digest: 0} if layers else {}
    for index, layer in enumerate(aos_layers, start=1):
        if layer.media_type not in AOS_LAYER_MEDIA_TYPES:
            why = ("an encrypted AosEdge layer, which this device cannot decrypt"
                   if layer.media_type.startswith(_ENCRYPTED_PREFIX) else "not an Aos layer")
            raise PackageError(f"{where}: layers[{index}] ({layer.digest}): mediaType {layer.media_type!r} is {why}; "
                               f"expected {AOS_LAYER_MEDIA_TYPE!r}; nothing was installed",
                               hint="build the layer as an Aos layer package (plain gzip tar)")
        if layer.digest in seen:
            first = seen[layer.digest]
            role = "the service layer, layers[0]" if first == 0 else f"layers[{first}]"
            raise PackageError(f"{where}: layers[{index}] ({layer.digest}) is the same blob as {role}; "
                               "nothing was installed", hint="list each Aos layer once")
        seen[layer.digest] = index


def check_diff_ids(image_config: Any, layer_count: int, where: str) -> None:
    """When the image config lists `rootfs.diff_ids`, it must list one per manifest layer."""
    rootfs = image_config.get("rootfs") if isinstance(image_config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if diff_ids is None:
        return
    if not isinstance(diff_ids, list) or len(diff_ids) != layer_count:
        count = len(diff_ids) if isinstance(diff_ids, list) else repr(diff_ids)
        raise PackageError(f"{where}: rootfs.diff_ids lists {count} layer(s), the manifest {layer_count}; "
                           "nothing was installed", hint="the package is corrupt or was assembled by hand; build it again")
