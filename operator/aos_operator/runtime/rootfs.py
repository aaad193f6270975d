"""The root file system of an instance, assembled as AosEdge does (reference §3.7).

A read-only overlay with lower layers only, top first:

1. a generated top layer: a mount point for every mount of the spec, `etc/hosts` and
   `etc/resolv.conf`. Not the working directory: the service layer must contain it (checked at
   install and start, as AosEdge fails to start a service without it), and an empty directory
   here would hide a symlink of the layer;
2. the service layer (unpacked `layers[0]`, shared by all instances of the package);
   then the Aos layers (`layers[1]` ... `layers[n]`, in manifest order, so `layers[1]` overrides
   `layers[2]`; shared by every package that lists them);
3. a generated whiteouts layer hiding every top-level entry of the base except the visible ones
   (default `bin sbin lib lib64 usr`);
4. the base: the node's own root file system `/` (configurable).

The two generated layers depend only on the spec's mount points, the hosts and resolv.conf text
and the base's top-level names. When `templates` (the runtime's `<run_root>/rootfs-templates`) is
on another file system than the base, as /run (a tmpfs) is on a device, they are built once per
distinct content there and shared read-only by every instance with that content, so a start of an
installed package creates no file (measured in benchmarks/run.py); otherwise they are made on a
small tmpfs per instance. Overlayfs refuses a layer that is
an ancestor of another layer on the same file system ("overlapping lowerdir path"), and `/` is
an ancestor of everything on the root file system, including the layer store. When that is the
case, the whiteouts layer and the base are first mounted as their own overlay (the "base view")
and that becomes the bottom layer; otherwise it is one overlay of four layers (plus the Aos layers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime import mounts
from aos_operator.runtime.paths import create_file_in, make_dirs_in

DEFAULT_BASE_VISIBLE = ("bin", "sbin", "lib", "lib64", "usr")
_SCRATCH_OPTIONS = "mode=755,size=16m"
_MOUNT_DATA_BYTES = 4096  # mount(2) copies at most one page of options
TEMPLATES_DIR = "rootfs-templates"  # under the runtime's run root
_CONTENT_FILE = "content.json"  # beside a template's two layers: what they were made from
TEMPLATES_KEPT = 64  # templates kept beyond those in use; more are pruned when a new one is made


@dataclass(frozen=True)
class RootfsPlan:
    run_dir: str
    service_layer: str
    base_path: str = "/"
    base_visible: tuple[str, ...] = DEFAULT_BASE_VISIBLE
    dns_servers: tuple[str, ...] = ()
    hosts: str | None = None  # /etc/hosts and /etc/resolv.conf from the instance network, if it has one
    resolv: str | None = None
    aos_layers: tuple[str, ...] = ()  # [aos layers] unpacked layers[1..], top first, between service and base
    templates: str | None = None  # node-wide directory of the generated layers; None: a tmpfs per instance

    @property
    def rootfs(self) -> Path:
        return Path(self.run_dir) / "rootfs"

    @property
    def scratch(self) -> Path:
        return Path(self.run_dir) / "layers"

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "service_layer": self.service_layer, "base_path": self.base_path,
                "base_visible": list(self.base_visible), "dns_servers": list(self.dns_servers),
                "hosts": self.hosts, "resolv": self.resolv, "aos_layers": list(self.aos_layers),
                "templates": self.templates}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RootfsPlan:
        return cls(data["run_dir"], data["service_layer"], data["base_path"], tuple(data["base_visible"]),
                   tuple(data["dns_servers"]), data.get("hosts"), data.get("resolv"),
                   tuple(data.get("aos_layers", ())), data.get("templates"))


def whiteout_names(base_entries: Iterable[str], visible: Iterable[str]) -> list[str]:
    """Top-level entries of the base to hide."""
    keep = set(visible)
    return sorted(entry for entry in base_entries if entry not in keep)


def _mode_option(options: Sequence[str], default: int) -> int:
    for option in options:
        if option.startswith("mode="):
            return int(option[len("mode="):], 8)
    return default


def mount_points(spec: Mapping[str, Any], source_is_dir: Callable[[str], bool]) -> list[tuple[str, bool, int]]:
    """(path relative to the root, is a directory, mode) for every mount destination.

    The mode comes from a `mode=` option, as AosEdge does: runc gives a tmpfs the mode of the
    directory it is mounted on, so /tmp's mount point must already be 1777.
    """
    points: dict[str, tuple[bool, int]] = {}
    for mount in spec.get("mounts", []):
        destination = mount["destination"].strip("/")
        if not destination:
            continue
        is_dir = mount.get("type") != "bind" or source_is_dir(mount["source"])
        points[destination] = (is_dir, _mode_option(mount.get("options", []), 0o755 if is_dir else 0o644))
    return sorted((path, is_dir, mode) for path, (is_dir, mode) in points.items())


def hosts_file(hostname: str | None) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if hostname:
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_conf(dns_servers: Sequence[str]) -> str:
    return "".join(f"nameserver {server}\n" for server in dns_servers)


def _make_top_layer(top: Path, points: Sequence[tuple[str, bool, int]], hosts: str, resolv: str) -> None:
    # Everything is created under `top` one component at a time, never through a link, so a
    # destination such as /../x or /etc/hosts/x fails cleanly instead of reaching the host.
    top.mkdir(mode=0o755)
    for relative, is_dir, mode in points:
        if relative in ("etc/hosts", "etc/resolv.conf"):
            continue  # written below
        if is_dir:
            os.chmod(make_dirs_in(top, relative), mode)
        else:
            create_file_in(top, relative, mode)
    create_file_in(top, "etc/hosts", 0o644, hosts.encode())
    create_file_in(top, "etc/resolv.conf", 0o644, resolv.encode())


def _make_whiteouts(whiteouts: Path, hidden: Sequence[str]) -> None:
    whiteouts.mkdir(mode=0o755)
    for name in hidden:
        os.mknod(whiteouts / name, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def _make_generated(directory: Path, points: Sequence[tuple[str, bool, int]], hosts: str, resolv: str,
                    hidden: Sequence[str]) -> tuple[Path, Path]:
    top, whiteouts = directory / "top", directory / "whiteouts"
    _make_top_layer(top, points, hosts, resolv)
    _make_whiteouts(whiteouts, hidden)
    return top, whiteouts


def _in_use(templates: Path) -> set[str]:
    """The template names that a mounted overlay of this node lists as a layer."""
    prefix = str(templates).rstrip("/") + "/"
    used = set()
    for line in mounts.mount_table():
        start = line.find(prefix)
        while start >= 0:
            used.add(line[start + len(prefix):].split("/", 1)[0])
            start = line.find(prefix, start + 1)
    return used


def prune_templates(templates: Path, keep: int = 0, spare: str = "") -> None:
    """Remove the templates no mounted overlay uses once more than `keep` exist (and never `spare`);
    with no template left, the directory too."""
    try:
        names = [name for name in os.listdir(templates) if not name.startswith(".")]
    except FileNotFoundError:
        return
    if len(names) <= keep:
        return
    used = _in_use(templates) | {spare}
    for name in names:
        if name not in used:
            shutil.rmtree(templates / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        templates.rmdir()  # only when empty


def _template(templates: Path, points: Sequence[tuple[str, bool, int]], hosts: str, resolv: str,
              hidden: Sequence[str]) -> tuple[Path, Path]:
    """The shared generated layers of this content, made (complete, by one rename) when missing.
    Named by a CRC of the content and checked against the content kept beside them: hashlib would
    load OpenSSL into the supervisor (4 MiB resident) for this alone."""
    content = json.dumps([points, hosts, resolv, list(hidden)]).encode()
    name = f"{zlib.crc32(content):08x}{len(content):x}"
    for slot in (name, *(f"{name}-{n}" for n in range(1, 8))):  # a CRC shared by other content: the next
        entry = templates / slot
        if _holds(entry, content):
            return entry / "top", entry / "whiteouts"
        if not entry.exists():
            break
    else:
        raise RuntimeFailure(f"{templates}: eight templates share the name {name}", hint=f"remove {templates}")
    templates.mkdir(mode=0o700, parents=True, exist_ok=True)
    building = templates / f".{slot}.{uuid.uuid4().hex[:8]}"
    building.mkdir(mode=0o700)
    try:
        _make_generated(building, points, hosts, resolv, hidden)
        (building / _CONTENT_FILE).write_bytes(content)
        os.rename(building, entry)
    except OSError:
        if not _holds(entry, content):  # unless the same was made meanwhile
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    prune_templates(templates, TEMPLATES_KEPT, spare=slot)
    return entry / "top", entry / "whiteouts"


def _holds(entry: Path, content: bytes) -> bool:
    try:
        return (entry / _CONTENT_FILE).read_bytes() == content
    except (FileNotFoundError, NotADirectoryError):
        return False


def _overlapping(layers: Sequence[Path]) -> bool:
    """Whether one layer is an ancestor of another on the same file system (overlayfs refuses that)."""
    resolved = [(os.path.realpath(layer), os.stat(layer).st_dev) for layer in layers]
    for path, device in resolved:
        prefix = path.rstrip("/") + "/"
        if any(other != path and other_device == device and other.startswith(prefix)
               for other, other_device in resolved):
            return True
    return False


def _overlay_options(layers: Sequence[Path]) -> str:
    for layer in layers:
        if any(ch in str(layer) for ch in ":,="):
            raise RuntimeFailure(f"{layer}: overlay layer paths cannot contain ':', ',' or '='",
                                 hint="choose state and run directories without those characters")
    options = "lowerdir=" + ":".join(str(layer) for layer in layers)
    if len(options.encode()) >= _MOUNT_DATA_BYTES:
        raise RuntimeFailure(f"the overlay of {len(layers)} layers needs {len(options.encode())} bytes of mount "
                             f"options, the kernel takes fewer than {_MOUNT_DATA_BYTES}",
                             hint="choose a shorter state directory, or use fewer Aos layers")
    return options


def assemble(plan: RootfsPlan, spec: Mapping[str, Any]) -> Path:
    """Mount the instance's root file system at `plan.rootfs`; returns that path."""
    base = Path(plan.base_path)
    if not base.is_dir():
        raise RuntimeFailure(f"base file system {base}: not a directory", hint="check the runtime's base_path")
    scratch = plan.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    plan.rootfs.mkdir(exist_ok=True)
    points = mount_points(spec, os.path.isdir)
    # the instance network's files when it has one, else loopback's and the configured servers
    hosts = plan.hosts if plan.hosts is not None else hosts_file(spec.get("hostname"))
    resolv = plan.resolv if plan.resolv is not None else resolv_conf(plan.dns_servers)
    hidden = whiteout_names(os.listdir(base), plan.base_visible)
    templates = Path(plan.templates) if plan.templates is not None else None
    # on the base's own file system the whiteouts would lie under the base (overlayfs: ELOOP)
    if templates is not None and os.stat(templates.parent).st_dev != os.stat(base).st_dev:
        top, whiteouts = _template(templates, points, hosts, resolv, hidden)
    else:
        mounts.mount("tmpfs", scratch, "tmpfs", mounts.MS_NOSUID | mounts.MS_NODEV, _SCRATCH_OPTIONS)
        top, whiteouts = _make_generated(scratch, points, hosts, resolv, hidden)
    service = Path(plan.service_layer)
    aos_layers = [Path(layer) for layer in plan.aos_layers]  # [aos layers] AosEdge's order: service, layers[1..n]
    for layer in aos_layers:
        if not layer.is_dir():
            raise RuntimeFailure(f"Aos layer {layer}: not unpacked on this node", hint="install the package again")
    layers = [top, service, *aos_layers, whiteouts, base]
    if _overlapping(layers):
        base_view = scratch / "base"
        base_view.mkdir()
        mounts.mount("overlay", base_view, "overlay", mounts.MS_RDONLY, _overlay_options([whiteouts, base]))
        layers = [top, service, *aos_layers, base_view]
    mounts.mount("overlay", plan.rootfs, "overlay", mounts.MS_RDONLY, _overlay_options(layers))
    return plan.rootfs
