"""Install an AosEdge service package on the node: verify it, keep its configs, unpack its layer.

The package is a directory as devices receive it (reference §2.1-2.3): `manifest.json` (an OCI
image manifest with a top-level `aosService` descriptor) and `blobs/sha256/<hex>`. Every blob's
size and digest is checked before anything is written; a mismatch names the digest and nothing is
installed. Installed packages live in the store by manifest digest; their layers are shared.

Aos layers (`layers[1..]`, aos_layers.py says which are accepted) are verified like every blob
and unpacked once into the same content-addressed store as service layers, with the same
hostile-archive checks and whiteout conversion; a package that uses a layer already unpacked
for another package shares it. A layer stays while an installed package's manifest lists it
(uses are recomputed from the manifests, never counted), so `uninstall` and the GC delete it
with the last package that needs it. A refused install removes the layers it unpacked. An Aos
layer already unpacked here may be absent from the package directory: the agent does not pull
it again (`check_manifest` and `pull_skips` are its pull hooks).

The package directory is input: `manifest.json` and the JSON blobs are read only up to a size
bound, blobs must be regular files (opened without following a symlink, so a blob cannot be a
link to /dev/zero or a host file), and the image config's WorkingDir must be a directory of the
service layer (resolved inside the layer, never outside).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aos_operator import values
from aos_operator.bounded import MAX_JSON_BYTES, open_regular, parse_json
from aos_operator.digests import digest_hex, is_digest, sha256_digest
from aos_operator.errors import InputError, PackageError
from aos_operator.runtime.aos_layers import check_aos_layers, check_diff_ids, check_layer_count
from aos_operator.runtime.files import write_atomically
from aos_operator.runtime.layers import (
    DEFAULT_MAX_LAYER_BYTES,
    UNCOMPRESSED_SIZE_ANNOTATION,
    LayerStore,
    UnpackLimit,
)
from aos_operator.runtime.package_gc import GcPolicy, StoredPackage, choose_garbage
from aos_operator.runtime.paths import is_dir_in_root
from aos_operator.runtime.service_config import ImageConfig, ServiceConfig, parse_image_config, parse_service_config

MANIFEST = "manifest.json"
_PACKAGES_KEPT = 64  # packages PackageStore.get remembers


@dataclass(frozen=True)
class Descriptor:
    digest: str
    size: int
    media_type: str
    uncompressed_size: int | None = None  # from the layer annotation, when the package declares it


@dataclass(frozen=True)
class InstalledPackage:
    """A verified, unpacked package on this node: what `Runtime.start` runs."""

    digest: str  # of manifest.json
    image_config: ImageConfig
    service_config: ServiceConfig
    layer_digest: str
    layer_path: Path
    # the Aos layers (manifest layers[1..]) in manifest order, unpacked in the shared layer store
    aos_layer_digests: tuple[str, ...] = ()
    aos_layer_paths: tuple[Path, ...] = ()


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise PackageError(f"{where}: expected a descriptor object, got {value!r}")
    digest, size = value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not is_digest(digest):
        raise PackageError(f"{where}.digest: {digest!r} is not a sha256:<64 hex> digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise PackageError(f"{where}.size: expected an integer >= 0, got {size!r}")
    annotations = value.get("annotations") or {}
    declared = annotations.get(UNCOMPRESSED_SIZE_ANNOTATION) if isinstance(annotations, dict) else None
    uncompressed: int | None = None
    if declared is not None:
        if not isinstance(declared, str) or not declared.isascii() or not declared.isdigit() or len(declared) > 19:
            raise PackageError(f"{where}.annotations[{UNCOMPRESSED_SIZE_ANNOTATION!r}]: expected a decimal "
                               f"number of bytes, got {declared!r}")
        uncompressed = int(declared)
    return Descriptor(digest, size, str(value.get("mediaType", "")), uncompressed)


def _open_regular(path: Path) -> int:
    """A file descriptor of `path`, which must be a regular file and not a symlink."""
    try:
        return open_regular(path, follow=False)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        raise PackageError(f"{path}: not a regular file", hint="a package holds regular files only") from None


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        fd = _open_regular(path)
    except OSError as error:
        raise PackageError(f"{path}: cannot read {what}: {error.strerror}"
                           + (" (a symlink)" if error.errno == errno.ELOOP else "")) from None
    with os.fdopen(fd, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        data = stream.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise PackageError(f"{path}: {what} is larger than {limit} bytes ({max(size, len(data))} bytes); "
                           "nothing was installed", hint="the package is corrupt or hostile")
    return data


def _file_digest(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with os.fdopen(_open_regular(path), "rb") as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size


class _PackageDir:
    """A package directory being read: manifest, descriptors, verified blobs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        manifest_path = directory / MANIFEST
        if not directory.is_dir():
            raise InputError(f"{directory}: not a directory", hint="pass an unpacked service package directory")
        if not manifest_path.is_file():
            raise InputError(f"{manifest_path}: cannot read: no such regular file",
                             hint="a service package directory holds manifest.json and blobs/sha256/")
        self.manifest_bytes = _read_bounded(manifest_path, MAX_JSON_BYTES, "the manifest")
        try:
            manifest = parse_json(self.manifest_bytes)
        except (ValueError, UnicodeDecodeError) as error:
            raise PackageError(f"{manifest_path}: not valid JSON: {error}") from None
        if not isinstance(manifest, dict):
            raise PackageError(f"{manifest_path}: expected a JSON object")
        if manifest.get("schemaVersion") != 2:
            raise PackageError(f"{manifest_path}: schemaVersion: expected 2, got {manifest.get('schemaVersion')!r}")
        self.digest = sha256_digest(self.manifest_bytes)
        self.config = _descriptor(manifest.get("config"), f"{manifest_path}: config")
        self.service = (None if manifest.get("aosService") is None
                        else _descriptor(manifest["aosService"], f"{manifest_path}: aosService"))
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers:
            raise PackageError(f"{manifest_path}: layers: expected at least one layer (the service rootfs)")
        check_layer_count(len(layers), str(manifest_path))  # before each is parsed: a bounded list
        self.layers = [_descriptor(layer, f"{manifest_path}: layers[{i}]") for i, layer in enumerate(layers)]
        check_aos_layers(self.layers, str(manifest_path))

    def blob_path(self, descriptor: Descriptor) -> Path:
        return self.directory / "blobs" / "sha256" / digest_hex(descriptor.digest)

    def verify(self, descriptor: Descriptor, role: str) -> Path:
        path = self.blob_path(descriptor)
        try:
            actual_size = os.lstat(path).st_size
        except OSError:
            raise PackageError(f"{role} blob {descriptor.digest}: missing ({path})",
                               hint="the package is incomplete; fetch or build it again") from None
        if actual_size != descriptor.size:
            raise PackageError(f"{role} blob {descriptor.digest}: size {actual_size} bytes, manifest says "
                               f"{descriptor.size}; nothing was installed", hint="the package is corrupt or altered")
        try:
            actual_digest, _ = _file_digest(path)
        except OSError as error:
            raise PackageError(f"{role} blob {descriptor.digest}: cannot read {path}: {error.strerror}"
                               + (" (a symlink; blobs must be regular files)" if error.errno == errno.ELOOP else ""),
                               hint="the package is corrupt or hostile") from None
        if actual_digest != descriptor.digest:
            raise PackageError(f"{role} blob {descriptor.digest}: content has digest {actual_digest}; "
                               "nothing was installed", hint="the package is corrupt or altered")
        return path

    def json_blob(self, path: Path, descriptor: Descriptor, role: str) -> Any:
        try:
            return parse_json(_read_bounded(path, MAX_JSON_BYTES, f"the {role} blob"))
        except (ValueError, UnicodeDecodeError) as error:
            raise PackageError(f"{role} blob {descriptor.digest}: not valid JSON: {error}") from None


class PackageStore:
    """Installed packages under `root`: `packages/<hex>.json` (manifest), `blobs/` (configs), `layers/`,
    and `uses/<hex>` (the service a package was used for; its mtime is when, for the GC)."""

    def __init__(self, root: Path, max_layer_bytes: int | None = None) -> None:
        self.root = root
        self.max_layer_bytes = max_layer_bytes
        self.layers = LayerStore(root / "layers")
        self._blobs = root / "blobs" / "sha256"
        self._manifests = root / "packages"
        self._uses = root / "uses"
        # get() of a package read before: (manifest's inode and mtime, package), newest last
        self._read: dict[str, tuple[tuple[int, int], InstalledPackage]] = {}

    def install(self, package_dir: Path) -> InstalledPackage:
        package = _PackageDir(Path(package_dir))
        # Verify every blob before writing anything.
        config_path = package.verify(package.config, "image config")
        service_path = package.verify(package.service, "service config") if package.service else None
        layer = package.layers[0]
        layer_blob = package.verify(layer, "rootfs layer")
        aos_blobs = [None if self.layers.has(aos_layer.digest) and not package.blob_path(aos_layer).exists()
                     else package.verify(aos_layer, f"Aos layer (layers[{index}])")
                     for index, aos_layer in enumerate(package.layers[1:], start=1)]
        # Parse both configs now, so a bad one is refused at install time rather than at start.
        image_config_data = package.json_blob(config_path, package.config, "image config")
        check_diff_ids(image_config_data, len(package.layers), f"image config {package.config.digest}")
        image_config = parse_image_config(image_config_data, f"image config {package.config.digest}")
        service_data = ({} if service_path is None or package.service is None
                        else package.json_blob(service_path, package.service, "service config"))
        service_where = f"service config {package.service.digest}" if package.service else "service config"
        parse_service_config(service_data, service_where)

        unpacked: list[str] = []  # layers unpacked for this package only: removed when it is refused
        try:
            layer_path = self._unpack(layer, layer_blob, f"rootfs layer {layer.digest}", unpacked)
            check_working_dir(image_config.working_dir, layer_path, f"image config {package.config.digest}")
            for index, (aos_layer, blob) in enumerate(zip(package.layers[1:], aos_blobs, strict=True), start=1):
                self._unpack(aos_layer, blob, f"Aos layer {aos_layer.digest} (layers[{index}] of {package.digest})",
                             unpacked)
        except BaseException:
            for digest in unpacked:  # nothing half-installed
                if not self._referenced_by_installed(digest):
                    self.layers.remove(digest)
            raise
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._manifests.mkdir(parents=True, exist_ok=True)
        for descriptor, path in ((package.config, config_path), (package.service, service_path)):
            if descriptor is not None and path is not None and not self._blob(descriptor.digest).exists():
                write_atomically(self._blob(descriptor.digest), _read_bounded(path, MAX_JSON_BYTES, "a config blob"))
        write_atomically(self._manifests / f"{digest_hex(package.digest)}.json", package.manifest_bytes)
        return self.get(package.digest)

    def check_manifest(self, manifest: Any, where: str) -> None:
        """Refuse, before its blobs are fetched, a manifest whose layer list or configs `install` would
        refuse, or a layer blob too large to unpack within the device's maximum."""
        layers = manifest.get("layers") if isinstance(manifest, dict) else None
        if not isinstance(layers, list) or not layers:
            raise PackageError(f"{where}: layers: expected at least one layer (the service rootfs)")
        for field in ("config", "aosService"):
            if field == "config" or manifest.get(field) is not None:
                config = _descriptor(manifest.get(field), f"{where}: {field}")
                if config.size > MAX_JSON_BYTES:
                    raise PackageError(f"{where}: {field}: a config of {config.size} bytes (at most {MAX_JSON_BYTES}); "
                                       "nothing was pulled", hint="the package is corrupt or hostile")
        check_layer_count(len(layers), where)
        descriptors = [_descriptor(layer, f"{where}: layers[{i}]") for i, layer in enumerate(layers)]
        check_aos_layers(descriptors, where)
        maximum = DEFAULT_MAX_LAYER_BYTES if self.max_layer_bytes is None else self.max_layer_bytes
        # gzip stores incompressible data with a few bytes per 16 KiB block: beyond this it cannot fit
        largest_blob = maximum + maximum // 1000 + (1 << 20)
        for index, layer in enumerate(descriptors):
            if layer.size > largest_blob:
                raise PackageError(f"{where}: layers[{index}] ({layer.digest}): a blob of {layer.size} bytes cannot "
                                   f"unpack within the device's maximum unpacked layer size ({maximum} bytes); "
                                   "nothing was pulled", hint="raise the maximum (--max-layer-size) if it is genuine")

    def pull_skips(self, field: str, digest: str) -> bool:
        """Whether a pull may leave out the blob of the manifest's `field` (e.g. "layers[2]"): one that
        `install` never reads (a descriptor of another field), or an Aos layer this node has unpacked."""
        if field not in ("config", "aosService") and not field.startswith("layers["):
            return True
        return field.startswith("layers[") and field != "layers[0]" and is_digest(digest) and self.layers.has(digest)

    def _unpack(self, layer: Descriptor, blob: Path | None, where: str, unpacked: list[str]) -> Path:
        """The layer unpacked in the shared store: once per digest, whichever package brought it."""
        limit = UnpackLimit(declared_bytes=layer.uncompressed_size) if self.max_layer_bytes is None else \
            UnpackLimit(self.max_layer_bytes, layer.uncompressed_size)
        if self.layers.has(layer.digest):
            return self.layers.path(layer.digest)
        if blob is None:  # it was unpacked when the package was checked, and removed since
            raise PackageError(f"{where}: the blob is not in the package and the layer is no longer unpacked; "
                               "nothing was installed", hint="pull the package again")
        path = self.layers.ensure(layer.digest, blob, where, limit)
        unpacked.append(layer.digest)
        return path

    def _referenced_by_installed(self, digest: str) -> bool:
        for other in self.digests():
            try:
                if digest in _referenced(parse_json((self._manifests / f"{digest_hex(other)}.json").read_bytes())):
                    return True
            except (OSError, ValueError):
                return True  # unreadable: keep what it might reference
        return False

    def _blob(self, digest: str) -> Path:
        return self._blobs / digest_hex(digest)

    def get(self, digest: str) -> InstalledPackage:
        """An installed package by manifest digest; PackageError when it is not installed."""
        if not is_digest(digest):
            raise PackageError(f"{digest!r} is not a sha256:<64 hex> package digest")
        manifest_path = self._manifests / f"{digest_hex(digest)}.json"
        try:
            manifest_stat = os.stat(manifest_path)
        except FileNotFoundError:
            raise PackageError(f"package {digest} is not installed", hint="install it first") from None
        # Every file of a package is named by its digest and never rewritten: the same manifest file
        # gives the same package, and only its layers can have gone (checked below all the same).
        known = self._read.get(digest)
        if known is not None and known[0] == (manifest_stat.st_ino, manifest_stat.st_mtime_ns):
            self._check_layers(digest, (known[1].layer_digest, *known[1].aos_layer_digests))
            return known[1]
        try:
            manifest = parse_json(manifest_path.read_bytes())
        except FileNotFoundError:
            raise PackageError(f"package {digest} is not installed", hint="install it first") from None
        config = _descriptor(manifest["config"], f"{manifest_path}: config")
        service = manifest.get("aosService")
        layer = _descriptor(manifest["layers"][0], f"{manifest_path}: layers[0]")
        image_config = parse_image_config(parse_json(self._blob(config.digest).read_bytes()),
                                          f"image config {config.digest}")
        if service is None:
            service_config = parse_service_config({}, "service config")
        else:
            service_digest = _descriptor(service, f"{manifest_path}: aosService").digest
            service_config = parse_service_config(parse_json(self._blob(service_digest).read_bytes()),
                                                  f"service config {service_digest}")
        aos_layers = [_descriptor(value, f"{manifest_path}: layers[{index}]").digest
                      for index, value in enumerate(manifest["layers"][1:], start=1)]
        self._check_layers(digest, (layer.digest, *aos_layers))
        installed = InstalledPackage(digest, image_config, service_config, layer.digest,
                                     self.layers.path(layer.digest), tuple(aos_layers),
                                     tuple(self.layers.path(d) for d in aos_layers))
        self._read.pop(digest, None)
        self._read[digest] = ((manifest_stat.st_ino, manifest_stat.st_mtime_ns), installed)
        while len(self._read) > _PACKAGES_KEPT:
            del self._read[next(iter(self._read))]
        return installed

    def _check_layers(self, digest: str, layers: Iterable[str]) -> None:
        for layer_digest in layers:
            if not self.layers.has(layer_digest):
                raise PackageError(f"package {digest}: its layer {layer_digest} is missing from {self.layers.root}",
                                   hint="install the package again")

    def has(self, digest: str) -> bool:
        return is_digest(digest) and (self._manifests / f"{digest_hex(digest)}.json").exists()

    def digests(self) -> list[str]:
        if not self._manifests.is_dir():
            return []
        return sorted("sha256:" + path.stem for path in self._manifests.glob("*.json"))

    def uninstall(self, digest: str) -> None:
        """Remove a package, and its blobs and layers when no other installed package uses them."""
        package = self.get(digest)
        manifest = parse_json((self._manifests / f"{digest_hex(digest)}.json").read_bytes())
        (self._manifests / f"{digest_hex(digest)}.json").unlink()
        self._read.pop(digest, None)
        still_used: set[str] = set()
        for other in self.digests():
            other_manifest = parse_json((self._manifests / f"{digest_hex(other)}.json").read_bytes())
            still_used.update(_referenced(other_manifest))
        for blob_digest in _referenced(manifest) - still_used:
            self._blob(blob_digest).unlink(missing_ok=True)
        for layer_digest in (package.layer_digest, *package.aos_layer_digests):
            if layer_digest not in still_used:
                self.layers.remove(layer_digest)


    # --- garbage collection (package_gc decides; this applies) ----------------------------------

    def note_use(self, digest: str, service_id: str) -> None:
        """Remember that `service_id` uses the package now (install or start)."""
        if not self.has(digest):
            return
        self._uses.mkdir(parents=True, exist_ok=True)
        write_atomically(self._uses / digest_hex(digest), service_id.encode()[:200])

    def stored(self) -> list[StoredPackage]:
        found = []
        for digest in self.digests():
            hexdigest = digest_hex(digest)
            manifest_path = self._manifests / f"{hexdigest}.json"
            use = self._uses / hexdigest
            try:
                service: str | None = use.read_text(errors="replace").strip() or None
                last_used = use.stat().st_mtime
            except OSError:
                service, last_used = None, _mtime(manifest_path)
            try:
                manifest = parse_json(manifest_path.read_bytes())
                descriptors = [manifest.get("config"), manifest.get("aosService"), *manifest.get("layers", [])]
                size = sum(d["size"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("size"), int))
            except (OSError, ValueError, AttributeError):
                size = 0
            found.append(StoredPackage(digest, service, last_used, size))
        return found

    def collect(self, needed: Iterable[str], policy: GcPolicy) -> list[str]:
        """Delete what `policy` says may go (never a digest in `needed`), then layers and blobs no
        package references; returns the packages deleted."""
        needed = set(needed)
        removed = []
        for digest in choose_garbage(self.stored(), needed, policy):
            if digest in needed:  # defence in depth: the chooser must never pick these
                continue
            self.uninstall(digest)
            (self._uses / digest_hex(digest)).unlink(missing_ok=True)
            removed.append(digest)
        self._remove_orphans()
        return removed

    def _remove_orphans(self) -> None:
        referenced: set[str] = set()
        for digest in self.digests():
            try:
                referenced.update(_referenced(parse_json((self._manifests / f"{digest_hex(digest)}.json").read_bytes())))
            except (OSError, ValueError):
                return  # a manifest we cannot read: delete nothing it might reference
        hexes = {digest_hex(digest) for digest in referenced}
        for directory in (self.layers.root, self._blobs):
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                if _HEX.fullmatch(entry.name) and entry.name not in hexes:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)


_HEX = re.compile(r"[0-9a-f]{64}")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def check_working_dir(working_dir: str, layer_path: Path, where: str) -> None:
    """The WorkingDir must be a directory the service layer contains (AosEdge fails to start a
    service without it); it is looked up inside the layer only, links resolved within it."""
    if working_dir in ("", "/"):
        return
    if problem := values.working_dir_problem(working_dir):
        raise PackageError(f"{where}: WorkingDir {problem}")
    if not is_dir_in_root(layer_path, working_dir):
        raise PackageError(f"{where}: WorkingDir {working_dir!r}: the service layer has no such directory "
                           f"({layer_path}); AosEdge devices fail to start such a service",
                           hint="add the directory to the service's src/ tree, or change workingDir")


def check_package_working_dir(package: InstalledPackage) -> None:
    check_working_dir(package.image_config.working_dir, package.layer_path, f"package {package.digest}")


def _referenced(manifest: dict[str, Any]) -> set[str]:
    descriptors = [manifest.get("config"), manifest.get("aosService"), *manifest.get("layers", [])]
    return {d["digest"] for d in descriptors if isinstance(d, dict) and "digest" in d}
