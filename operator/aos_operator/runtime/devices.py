"""Host devices and resources of one instance, as AosEdge's service manager grants them
(`setDevices`, `setResources`; reference aos-device-features §2, §3).

Two steps. `resolve_grants` reads the host: it looks each device and resource the service asks
for up in the node config, stats the device nodes (a directory maps every node under it), and
resolves the groups to GIDs; an unknown name or a missing node is refused. `apply_grants` is
pure and is what the spec builder calls: `linux.devices`, one devices-cgroup allow rule per node
with the service's access letters, `additionalGids`, the resource mounts (bind by default, one
with the same destination replaces the earlier), and the resource env. The resource `hosts`
go into the instance's /etc/hosts (`hosts_lines`).

`check_shares` is AosEdge's ErrNoAvailableDevice: a device with `sharedCount` N is used by at
most N running instances of the node.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.node_config import (
    NodeConfig,
    device_nodes_under,
    host_device_problem,
    host_groups,
    split_host_device,
)
from aos_operator.runtime.service_config import ServiceDevice

NO_AVAILABLE_DEVICE = "NoAvailableDevice"


class DeviceUnavailable(RuntimeFailure):
    """The node cannot give an instance a device or resource it asks for (unknown name, or every
    share in use). The instance is refused; what runs is left alone."""

    reason = NO_AVAILABLE_DEVICE


@dataclass(frozen=True)
class DeviceNode:
    """One node an instance gets: where it appears in the container and what it is on the host."""

    path: str
    type: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int
    access: str

    def spec_entry(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "major": self.major, "minor": self.minor,
                "fileMode": self.file_mode, "uid": self.uid, "gid": self.gid}

    def cgroup_rule(self) -> dict[str, Any]:
        return {"allow": True, "type": self.type, "major": self.major, "minor": self.minor, "access": self.access}


@dataclass(frozen=True)
class HostGrants:
    """Everything an instance gets from the node config, resolved against the host."""

    devices: tuple[DeviceNode, ...] = ()
    gids: tuple[int, ...] = ()
    mounts: tuple[Mapping[str, Any], ...] = ()
    env: tuple[str, ...] = ()
    hosts: tuple[tuple[str, str], ...] = ()
    names: tuple[str, ...] = field(default=())  # the devices and resources granted, for messages

    @property
    def empty(self) -> bool:
        return not (self.devices or self.gids or self.mounts or self.env or self.hosts)


NONE = HostGrants()


def _node(host: str, container: str, access: str) -> DeviceNode:
    info = os.stat(host)  # a link inside the device root is followed, as AosEdge does
    kind = "c" if stat.S_ISCHR(info.st_mode) else "b"
    return DeviceNode(container, kind, os.major(info.st_rdev), os.minor(info.st_rdev),
                      stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, access)


def _device_nodes(entry: str, access: str, dev_root: str) -> list[DeviceNode]:
    host, container = split_host_device(entry)
    if problem := host_device_problem(host, dev_root):
        raise DeviceUnavailable(f"host device {problem}", hint="fix the node config or the host's /dev")
    real = os.path.realpath(host)
    if not os.path.isdir(real):
        return [_node(real, container, access)]
    nodes = []
    for path in device_nodes_under(real):  # the container path gets the directory's prefix replaced
        nodes.append(_node(path, container.rstrip("/") + path[len(real):], access))
    return nodes


def resolve_grants(devices: Sequence[ServiceDevice], resources: Sequence[str], node: NodeConfig, *,
                   group_file: Path = Path("/etc/group"), dev_root: str = "/dev") -> HostGrants:
    """What the instance of a service asking for `devices` and `resources` gets on this node."""
    if not devices and not resources:
        return NONE
    groups = host_groups(group_file)
    nodes: list[DeviceNode] = []
    gids: list[int] = []
    mounts: list[Mapping[str, Any]] = []
    env: list[str] = []
    hosts: list[tuple[str, str]] = []

    def add_groups(names: Iterable[str], owner: str) -> None:
        for name in names:
            if name not in groups:
                raise DeviceUnavailable(f"{owner}: group {name!r} does not exist on this host",
                                        hint="create the group or remove it from the node config")
            if groups[name] not in gids:
                gids.append(groups[name])

    for wanted in devices:
        device = node.device(wanted.name)
        if device is None:
            raise DeviceUnavailable(f"device {wanted.name!r} is not available on this node (its node config offers "
                                    f"{', '.join(d.name for d in node.devices) or 'no devices'})")
        for entry in device.hostDevices:
            for found in _device_nodes(entry, wanted.permissions, dev_root):
                if all(found.path != known.path for known in nodes):  # duplicates are skipped, as in AosEdge
                    nodes.append(found)
        add_groups(device.groups, f"device {device.name}")
    for name in resources:
        resource = node.resource(name)
        if resource is None:
            raise DeviceUnavailable(f"resource {name!r} is not available on this node (its node config offers "
                                    f"{', '.join(r.name for r in node.resources) or 'no resources'})")
        add_groups(resource.groups, f"resource {name}")
        for mount in resource.mounts:
            mounts.append({"destination": mount.destination, "type": mount.type, "source": mount.source,
                           "options": _mount_options(mount.type, mount.options)})
        env.extend(resource.env)
        hosts.extend((entry.ip, entry.hostname) for entry in resource.hosts)
    return HostGrants(tuple(nodes), tuple(gids), tuple(mounts), tuple(env), tuple(hosts),
                      tuple(d.name for d in devices) + tuple(resources))


def _mount_options(kind: str, options: Sequence[str]) -> list[str]:
    result = list(options)
    if kind == "bind" and not {"bind", "rbind"} & set(result):
        result.insert(0, "bind")
    # Hardening beyond AosEdge: no set-ID programs, no device nodes through a resource mount,
    # unless the node config asks for them by name.
    if "suid" not in result and "nosuid" not in result:
        result.append("nosuid")
    if "dev" not in result and "nodev" not in result:
        result.append("nodev")
    return result


def apply_grants(spec: dict[str, Any], grants: HostGrants, add_mount: Any) -> None:
    """Put the grants into a runtime spec (pure). `add_mount` is the spec builder's own
    replace-by-destination helper."""
    if grants.empty:
        return
    linux = spec["linux"]
    if grants.devices:
        linux.setdefault("devices", []).extend(node.spec_entry() for node in grants.devices)
        rules = linux.setdefault("resources", {}).setdefault("devices", [])
        rules.extend(node.cgroup_rule() for node in grants.devices)
    if grants.gids:
        user = spec["process"]["user"]
        extra = [gid for gid in user.get("additionalGids", []) if gid not in grants.gids]
        user["additionalGids"] = extra + list(grants.gids)
    for mount in grants.mounts:
        add_mount(spec, mount)


def hosts_lines(grants: HostGrants) -> str:
    """The /etc/hosts lines the resources add."""
    return "".join(f"{ip}\t{hostname}\n" for ip, hostname in grants.hosts)


def check_shares(wanted: Sequence[ServiceDevice], node: NodeConfig, in_use: Iterable[Sequence[ServiceDevice]],
                 instance: str) -> None:
    """Refuse when a device the instance asks for has every share taken by `in_use` (the device
    lists of the other live instances of the node)."""
    used = Counter(device.name for devices in in_use for device in {d.name: d for d in devices}.values())
    for device in wanted:
        offered = node.device(device.name)
        if offered is None or not offered.sharedCount:
            continue
        if used[device.name] >= offered.sharedCount:
            raise DeviceUnavailable(
                f"instance {instance}: device {device.name!r} has no free share: {used[device.name]} of its "
                f"sharedCount {offered.sharedCount} are in use",
                hint="stop an instance that uses it, or raise sharedCount in the node config")


def share_usage(node: NodeConfig, in_use: Iterable[Sequence[ServiceDevice]]) -> dict[str, int]:
    """Per device of the node config, how many live instances use it."""
    used = Counter(name for devices in in_use for name in {d.name for d in devices})
    return {device.name: used[device.name] for device in node.devices}
