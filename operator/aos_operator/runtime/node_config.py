"""The node config of a device (`--node-config FILE`): the host devices and resources it offers
to services, in the node shape of AosEdge's unit config (reference aos-device-features §2, §3):

    devices:   [{name, hostDevices: ["/dev/video0", "/dev/media0:/dev/media-link0"], groups, sharedCount}]
    resources: [{name, groups, mounts: [{destination, type, source, options}], env: ["K=V"],
                 hosts: [{ip, hostname}]}]

The file is hostile input read by a root process: every problem is a ConfigError naming the
file, the line and the field. Host devices must be character or block nodes (or directories of
them) under the device root (/dev), without a link out of it; groups must exist in the host's
group database; mount sources and destinations are clean absolute paths. `sharedCount` 0 (or
absent) means any number of instances may share the device, as in AosEdge.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aos_operator import values
from aos_operator.bounded import open_regular
from aos_operator.errors import ConfigError, InputError, Issue
from aos_operator.service.yamlfile import LoadedYaml, decode, load_yaml_text, render_path

MAX_FILE_BYTES = 256 * 1024
MAX_ITEMS = 256  # devices, resources, and the lists inside each
MAX_NODES_PER_DIRECTORY = 1024  # device nodes a directory entry may map
DEV_ROOT = "/dev"
# Destinations the runtime owns: a resource may not cover them.
RESERVED_DESTINATIONS = ("/", "/proc", "/sys", "/dev", "/storage", "/state.dat", "/etc/hosts", "/etc/resolv.conf")
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
_OPTION_RE = re.compile(r"[A-Za-z0-9_=.:/+-]{1,128}")
_MOUNT_TYPE_RE = re.compile(r"[a-z0-9_.-]{1,32}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NodeDevice(_Strict):
    name: str = Field(description="Alias services ask for in `devices[].name`, e.g. camera0")
    hostDevices: list[str] = Field(min_length=1, max_length=MAX_ITEMS,
                                   description="Host device nodes or directories of them, `path` or `path:containerPath`")
    groups: list[str] = Field(default_factory=list, max_length=MAX_ITEMS,
                              description="Host groups an instance using the device joins")
    sharedCount: int = Field(0, ge=0, le=1_000_000, description="Instances that may use it at once; 0: any number")


class ResourceMount(_Strict):
    destination: str
    source: str
    type: str = "bind"
    options: list[str] = Field(default_factory=list, max_length=32)


class HostEntry(_Strict):
    ip: str
    hostname: str


class NodeResource(_Strict):
    name: str = Field(description="Alias services ask for in `resources`, e.g. system-dbus")
    groups: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    mounts: list[ResourceMount] = Field(default_factory=list, max_length=MAX_ITEMS)
    env: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    hosts: list[HostEntry] = Field(default_factory=list, max_length=MAX_ITEMS)


class NodeConfig(_Strict):
    """One node entry of an AosEdge unit config; the keys placement uses elsewhere are accepted
    and not used here."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    devices: list[NodeDevice] = Field(default_factory=list, max_length=MAX_ITEMS)
    resources: list[NodeResource] = Field(default_factory=list, max_length=MAX_ITEMS)
    # AosEdge unit-config node keys that are not this file's business (labels come from the Node).
    nodeType: str | None = None
    nodeId: str | None = None
    priority: int | None = None
    labels: list[str] | None = None
    alertRules: dict[str, Any] | None = None
    resourceRatios: dict[str, Any] | None = None

    def device(self, name: str) -> NodeDevice | None:
        return next((device for device in self.devices if device.name == name), None)

    def resource(self, name: str) -> NodeResource | None:
        return next((resource for resource in self.resources if resource.name == name), None)


EMPTY = NodeConfig()


def split_host_device(entry: str) -> tuple[str, str]:
    """`/dev/a` -> (/dev/a, /dev/a); `/dev/a:/dev/b` -> (/dev/a, /dev/b)."""
    host, _, container = entry.partition(":")
    return host, container or host


def _clean_absolute_problem(path: str) -> str | None:
    if len(path) > 4096 or "\0" in path or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return f"{path!r:.80} is not a path: too long, or with NUL or control characters"
    if not path.startswith("/"):
        return f"{path!r:.80} is not an absolute path"
    parts = path.split("/")[1:] if path != "/" else []
    if "" in parts or "." in parts or ".." in parts:
        return f"{path!r:.80} is not a clean path (no '//', '.', '..' or trailing '/')"
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def host_groups(group_file: Path) -> dict[str, int]:
    """Name -> GID of an /etc/group style file (a missing file has no groups)."""
    found: dict[str, int] = {}
    try:
        text = group_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return found
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] and fields[2].isdigit():
            found.setdefault(fields[0], int(fields[2]))
    return found


def host_device_problem(host: str, dev_root: str) -> str | None:
    """Why `host` cannot be offered: outside the device root, a link out of it, missing, or
    neither a device node nor a directory holding some."""
    if problem := _clean_absolute_problem(host):
        return problem
    if not _under(host, dev_root):
        return f"{host!r} is not under {dev_root}"
    real = os.path.realpath(host)
    if not _under(real, os.path.realpath(dev_root)):
        return f"{host!r} leads to {real!r}, outside {dev_root}"
    try:
        info = os.stat(real)
    except OSError as error:
        return f"{host!r} does not exist ({error.strerror})"
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        return None
    if stat.S_ISDIR(info.st_mode):
        try:
            nodes = device_nodes_under(real)
        except ValueError as error:
            return f"{host!r}: {error}"
        return None if nodes else f"{host!r} is a directory without character or block device nodes"
    return f"{host!r} is not a character or block device node"


def device_nodes_under(directory: str) -> list[str]:
    """Device nodes in a directory tree, sorted; links are not followed (AosEdge skips non-devices)."""
    found: list[str] = []
    for current, subdirectories, files in os.walk(directory, followlinks=False):
        subdirectories.sort()
        for name in sorted(files):
            path = os.path.join(current, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                found.append(path)
                if len(found) > MAX_NODES_PER_DIRECTORY:
                    raise ValueError(f"more than {MAX_NODES_PER_DIRECTORY} device nodes")
    return found


@dataclass
class _Checker:
    file: str
    loaded: LoadedYaml | None
    dev_root: str
    groups: Mapping[str, int]
    issues: list[Issue]

    def add(self, path: tuple[str | int, ...], message: str) -> None:
        line = self.loaded.line_of(path) if self.loaded else None
        self.issues.append(Issue(self.file, line, render_path(path), message))

    def names(self, kind: str, items: Iterable[Any]) -> None:
        seen: set[str] = set()
        for number, item in enumerate(items):
            if not _NAME_RE.fullmatch(item.name):
                self.add((kind, number, "name"), f"{item.name!r:.80} is not a name: letters, digits, '.', '_', '-', "
                                                 "at most 128 characters")
            elif item.name in seen:
                self.add((kind, number, "name"), f"{item.name!r} is declared twice")
            seen.add(item.name)

    def group_names(self, where: tuple[str | int, ...], names: Iterable[str]) -> None:
        for number, name in enumerate(names):
            if name not in self.groups:
                self.add((*where, number), f"group {name!r:.80} does not exist on this host; create it or remove it")

    def device(self, number: int, device: NodeDevice) -> None:
        destinations: set[str] = set()
        for index, entry in enumerate(device.hostDevices):
            where = ("devices", number, "hostDevices", index)
            if entry.count(":") > 1:
                self.add(where, f"{entry!r:.120} is not PATH or PATH:CONTAINER_PATH")
                continue
            host, container = split_host_device(entry)
            if problem := host_device_problem(host, self.dev_root):
                self.add(where, problem)
            if container == host:
                pass  # checked as the host path
            elif problem := _clean_absolute_problem(container):
                self.add(where, f"container path: {problem}")
            elif not _under(container, "/dev") or container == "/dev":
                self.add(where, f"container path {container!r:.80} is not under /dev")
            elif container in destinations:
                self.add(where, f"container path {container!r} is given twice")
            destinations.add(container)
        self.group_names(("devices", number, "groups"), device.groups)

    def resource(self, number: int, resource: NodeResource) -> None:
        self.group_names(("resources", number, "groups"), resource.groups)
        for index, mount in enumerate(resource.mounts):
            where = ("resources", number, "mounts", index)
            if problem := _clean_absolute_problem(mount.destination):
                self.add((*where, "destination"), problem)
            elif any(_under(mount.destination, reserved) if reserved != "/" else mount.destination == "/"
                     for reserved in RESERVED_DESTINATIONS):
                self.add((*where, "destination"), f"{mount.destination!r} is the runtime's own; choose another place")
            if not _MOUNT_TYPE_RE.fullmatch(mount.type):
                self.add((*where, "type"), f"{mount.type!r:.40} is not a file system type")
            if mount.type == "bind":
                if problem := _clean_absolute_problem(mount.source):
                    self.add((*where, "source"), problem)
                elif not os.path.lexists(mount.source):
                    self.add((*where, "source"), f"{mount.source!r} does not exist on this host")
            elif "\0" in mount.source or not mount.source or len(mount.source) > 4096:
                self.add((*where, "source"), "must be 1 to 4096 characters without NUL")
            for option_number, option in enumerate(mount.options):
                if not _OPTION_RE.fullmatch(option):
                    self.add((*where, "options", option_number), f"{option!r:.80} is not a mount option")
        for index, entry in enumerate(resource.env):
            if problem := values.env_entry_problem(entry):
                self.add(("resources", number, "env", index), problem)
        for index, host in enumerate(resource.hosts):
            try:
                ipaddress.ip_address(host.ip)
            except ValueError:
                self.add(("resources", number, "hosts", index, "ip"), f"{host.ip!r:.80} is not an IP address")
            if problem := values.hostname_problem(host.hostname):
                self.add(("resources", number, "hosts", index, "hostname"), problem)


def _pydantic_issues(error: ValidationError, file: str, loaded: LoadedYaml | None) -> list[Issue]:
    issues = []
    for item in error.errors():
        path = tuple(item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; see the node config format in the README"
        line = loaded.line_of(path) if loaded else None
        issues.append(Issue(file, line, render_path(path), message))
    return issues


def parse_node_config(data: Any, file: str, *, loaded: LoadedYaml | None = None, dev_root: str = DEV_ROOT,
                      group_file: Path = Path("/etc/group")) -> NodeConfig:
    """Check a node config document (already parsed); raises ConfigError with every problem."""
    if data is None:
        return EMPTY
    if not isinstance(data, Mapping):
        raise ConfigError([Issue(file, 1, "", "a node config is a mapping with `devices` and `resources` lists")])
    data = dict(data)
    for resource in data.get("resources") or ():  # AosEdge's protocols name it `envs`
        if isinstance(resource, dict) and "envs" in resource and "env" not in resource:
            resource["env"] = resource.pop("envs")
    try:
        config = NodeConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_pydantic_issues(error, file, loaded)) from None
    checker = _Checker(file, loaded, dev_root, host_groups(group_file), [])
    checker.names("devices", config.devices)
    checker.names("resources", config.resources)
    for number, device in enumerate(config.devices):
        checker.device(number, device)
    for number, resource in enumerate(config.resources):
        checker.resource(number, resource)
    if checker.issues:
        raise ConfigError(checker.issues)
    return config


def load_node_config(path: str | Path, *, dev_root: str = DEV_ROOT, group_file: Path = Path("/etc/group")) -> NodeConfig:
    """Read and check a node config file (YAML or JSON)."""
    file = str(path)
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise InputError(f"{file}: cannot read the node config: {error.strerror}",
                         hint="pass --node-config with a readable YAML file") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(f"{file}: a node config may be at most {MAX_FILE_BYTES} bytes")
    loaded, issues = load_yaml_text(decode(raw, file), file)
    if errors := [issue for issue in issues if issue.severity == "error"]:
        raise ConfigError(errors)
    return parse_node_config(loaded.data, file, loaded=loaded, dev_root=dev_root, group_file=group_file)
