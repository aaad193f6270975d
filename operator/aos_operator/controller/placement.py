"""Placement: which AosServiceInstances should exist for a service, and what to change to get there.

Pure: it reads views of the service, the devices and the existing instances and returns a plan.
A device gets instances when it matches the selector, is Ready and schedulable, has the
architecture of one of the service's images and a runner the service accepts, and has the DMIPS
and memory the instance reserves free (AosEdge's CM budget: requestedResources clamped to the
quotas, else half of each quota; `skipResourceLimits` reserves nothing, and the quotas still
apply on the device), offers every resource the service asks for and a free share of every
host device (AosEdge's sharedCount, counted over the instances of all services on the device;
a device that offers none of them is reported as `NoDeviceFits`). A device that
stops being Ready keeps its instances (it may be offline for a while: edge autonomy); a device
that leaves the selector or is deleted loses them.

`ReservationBook` is the one piece with state: per device, what the instances of every service
reserve, kept up to date from instance events so that a pass does not walk the whole fleet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aos_operator.api import naming
from aos_operator.api.models import (
    API_VERSION,
    FINALIZER_OPERATOR,
    LABEL_DEVICE,
    LABEL_INDEX,
    LABEL_SERVICE,
    LabelSelector,
    device_ready,
)
from aos_operator.api.selectors import matches, selector_key

# AosEdge's rule: a device that declares no runners accepts services that allow runc or crun.
DEFAULT_DEVICE_RUNNERS = ("runc", "crun")
# AosEdge's default node resourceRatios: without requestedResources an instance reserves half its quota.
DEFAULT_RESOURCE_RATIO = 0.5


@dataclass(frozen=True)
class Reservation:
    cpu_dmips: int = 0
    ram: int = 0
    devices: tuple[str, ...] = ()  # a share of each host device named (a sum keeps repeats: a count)

    def __add__(self, other: Reservation) -> Reservation:
        return Reservation(self.cpu_dmips + other.cpu_dmips, self.ram + other.ram, self.devices + other.devices)

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"cpuDmips": self.cpu_dmips, "ramBytes": self.ram}
        if self.devices:
            spec["devices"] = list(self.devices)
        return spec

    @classmethod
    def from_spec(cls, data: Mapping[str, Any] | None) -> Reservation:
        data = data or {}
        devices = data.get("devices") or ()
        return cls(int(data.get("cpuDmips") or 0), int(data.get("ramBytes") or 0),
                   tuple(str(name) for name in devices if isinstance(name, str)) if isinstance(devices, list) else ())


@dataclass
class _Sum:
    instances: int = 0
    cpu_dmips: int = 0
    ram: int = 0
    shares: Counter[str] = field(default_factory=Counter)
    _total: Reservation | None = None  # the sum as a Reservation, made when first asked for

    def add(self, part: Reservation, sign: int) -> None:
        self.instances += sign
        self.cpu_dmips += sign * part.cpu_dmips
        self.ram += sign * part.ram
        if part.devices:
            self.shares.update({name: sign * count for name, count in Counter(part.devices).items()})
        self._total = None

    def total(self) -> Reservation:
        if self._total is None:
            self._total = Reservation(self.cpu_dmips, self.ram, tuple(sorted((+self.shares).elements())))
        return self._total


@dataclass
class ReservationBook:
    """What the instances of each service reserve on each device, from instance events: an
    instance counts while it has a device and no deletionTimestamp."""

    _instances: dict[tuple[str, str], tuple[tuple[str, str], str, Reservation]] = field(default_factory=dict)
    _devices: dict[str, _Sum] = field(default_factory=dict)
    _services: dict[tuple[str, str], dict[str, _Sum]] = field(default_factory=dict)

    def update(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """An AosServiceInstance event (body None: deleted)."""
        key = (namespace, name)
        old = self._instances.pop(key, None)
        if old is not None:
            self._count(*old, -1)
        spec = (body or {}).get("spec") or {}
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp") or not spec.get("device"):
            return
        new = ((namespace, str(spec.get("service") or "")), str(spec["device"]), Reservation.from_spec(spec.get("reserved")))
        self._instances[key] = new
        self._count(*new, 1)

    def _count(self, service: tuple[str, str], device: str, part: Reservation, sign: int) -> None:
        for sums, owner in ((self._devices, None), (self._services.setdefault(service, {}), service)):
            total = sums.setdefault(device, _Sum())
            total.add(part, sign)
            if total.instances == 0:
                del sums[device]
                if owner is not None and not sums:
                    del self._services[owner]

    def elsewhere(self, namespace: str, service: str) -> Mapping[str, Reservation]:
        """Per device, what the instances of every other service reserve there."""
        return _Elsewhere(self, (namespace, service))

    def _others(self, device: str, service: tuple[str, str]) -> Reservation | None:
        total = self._devices.get(device)
        if total is None:
            return None
        mine = self._services.get(service, {}).get(device)  # as of now, like the total
        if mine is None:  # most devices: the whole sum, made once per change of it
            return total.total()
        if total.instances - mine.instances <= 0:
            return None
        shares = total.shares - mine.shares  # Counter subtraction keeps the positive counts
        return Reservation(total.cpu_dmips - mine.cpu_dmips, total.ram - mine.ram, tuple(sorted(shares.elements())))


class _Elsewhere(Mapping[str, Reservation]):
    """ReservationBook.elsewhere for one pass: worked out for the devices the pass asks about (its
    selected ones), each once, not for the whole fleet in every pass (2 % of the operator's CPU at
    200 devices)."""

    def __init__(self, book: ReservationBook, service: tuple[str, str]) -> None:
        self._book, self._service = book, service
        self._read: dict[str, Reservation | None] = {}

    def __getitem__(self, device: str) -> Reservation:
        if device not in self._read:
            self._read[device] = self._book._others(device, self._service)
        found = self._read[device]
        if found is None:
            raise KeyError(device)
        return found

    def __iter__(self) -> Iterator[str]:
        return (device for device in list(self._book._devices) if device in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def reservation(quota_cpu: int | None, quota_ram: int | None, requested_cpu: int | None, requested_ram: int | None,
                skip_resource_limits: bool, devices: Iterable[str] = ()) -> Reservation:
    """What one instance reserves on its device, as AosEdge's CM computes it: CPU and RAM, and a
    share of each host device it uses (also with skipResourceLimits, which is about CPU and RAM)."""
    shares = tuple(sorted(set(devices)))
    if skip_resource_limits:
        return Reservation(devices=shares)

    def one(quota: int | None, requested: int | None) -> int:
        if requested is not None:
            return min(requested, quota) if quota else requested
        return int(quota * DEFAULT_RESOURCE_RATIO) if quota else 0

    return Reservation(one(quota_cpu, requested_cpu), one(quota_ram, requested_ram), shares)


@dataclass(frozen=True)
class DeviceView:
    name: str
    labels: Mapping[str, str]
    ready: bool
    architecture: str | None
    runners: tuple[str, ...] = ()
    unschedulable: bool = False
    dmips: int | None = None  # capacity; None: not reported, not checked
    memory: int | None = None
    resources: tuple[str, ...] = ()  # node-config resources offered
    devices: tuple[tuple[str, int], ...] = ()  # node-config host devices offered: (name, sharedCount; 0 any number)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> DeviceView:
        status = body.get("status") or {}
        return cls(
            name=body["metadata"]["name"],
            labels=dict(body["metadata"].get("labels") or {}),
            ready=device_ready(body),
            architecture=status.get("architecture"),
            runners=tuple(status.get("runners") or ()),
            unschedulable=bool((body.get("spec") or {}).get("unschedulable")),
            dmips=status.get("dmips"),
            memory=status.get("memoryBytes"),
            resources=tuple(sorted(str(name) for name in status.get("resources") or () if isinstance(name, str))),
            devices=_offered_devices(status),
        )

    def fingerprint(self) -> tuple[Any, ...]:
        """What placement depends on; heartbeats that change nothing else do not matter."""
        return (tuple(sorted(self.labels.items())), self.ready, self.architecture, self.runners, self.unschedulable,
                self.dmips, self.memory, self.resources, self.devices)

    def fits(self, used: Reservation) -> bool:
        return ((self.dmips is None or used.cpu_dmips <= self.dmips)
                and (self.memory is None or used.ram <= self.memory)
                and not self.short_shares(used))

    def short_budgets(self, used: Reservation, more: Reservation) -> list[str]:
        """The CPU and RAM this device has too little of left for `more` on top of `used`."""
        short = []
        if self.dmips is not None and used.cpu_dmips + more.cpu_dmips > self.dmips:
            short.append(f"CPU ({used.cpu_dmips} of {self.dmips} DMIPS reserved, an instance reserves {more.cpu_dmips})")
        if self.memory is not None and used.ram + more.ram > self.memory:
            short.append(f"RAM ({used.ram / 2**20:.0f} of {self.memory / 2**20:.0f} MiB reserved, an instance "
                         f"reserves {more.ram / 2**20:.0f})")
        return short

    def short_shares(self, used: Reservation) -> list[str]:
        """Devices of `used` this device does not offer, or not that many times."""
        if not used.devices:
            return []
        offered = dict(self.devices)
        short = []
        for name, count in sorted(Counter(used.devices).items()):
            if name not in offered:
                short.append(name)
            elif offered[name] and count > offered[name]:
                short.append(f"{name} (sharedCount {offered[name]}, all in use)")
        return short

    def missing(self, service: ServiceView) -> list[str]:
        """What the service asks for that this device does not offer at all."""
        offered = {name for name, _ in self.devices}
        return ([f"device {name}" for name in service.reservation.devices if name not in offered]
                + [f"resource {name}" for name in service.resources if name not in self.resources])


def _offered_devices(status: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """(name, sharedCount) from `devices`; an agent that reports only `hostDevices` names: unlimited."""
    found: dict[str, int] = {}
    for entry in status.get("devices") or ():
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            count = entry.get("sharedCount")
            found[entry["name"]] = count if isinstance(count, int) and count >= 0 else 0
    if not found:
        found = {name: 0 for name in status.get("hostDevices") or () if isinstance(name, str)}
    return tuple(sorted(found.items()))


@dataclass(frozen=True)
class InstanceView:
    name: str
    device: str
    index: int
    digest: str | None
    deleting: bool
    phase: str | None = None
    running_digest: str | None = None
    reason: str | None = None
    start_time: datetime | None = None
    reserved: Reservation = Reservation()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> InstanceView:
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        return cls(
            name=body["metadata"]["name"],
            device=spec.get("device", ""),
            index=int(spec.get("index", 0)),
            digest=(spec.get("image") or {}).get("digest"),
            deleting=bool(body["metadata"].get("deletionTimestamp")),
            phase=status.get("phase"),
            running_digest=status.get("imageDigest"),
            reason=status.get("reason"),
            start_time=_time(status.get("startTime")),
            reserved=Reservation.from_spec(spec.get("reserved")),
        )


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None  # a bad time from an agent only delays availability


@dataclass(frozen=True)
class PackageRef:
    repository: str  # registry/repository, no tag
    digest: str
    architecture: str

    @property
    def reference(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    uid: str
    service_id: str
    subject: str
    version: str
    instances_per_device: int
    runners: tuple[str, ...]
    selector: LabelSelector | None
    packages: Mapping[str, PackageRef]  # by architecture
    reservation: Reservation = Reservation()  # per instance
    resources: tuple[str, ...] = ()  # node-config resources every device must offer


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (name, merge patch)
    delete: list[str] = field(default_factory=list)
    desired: int = 0

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


class SelectionMemo:
    """The devices each selector matches, for one snapshot of the fleet. The snapshot is replaced,
    never changed, when a device's placement facts change (handlers._DeviceSnapshot); a pass
    matched its selector against every device, 2 % of the operator's CPU at 200 devices."""

    LIMIT = 1024  # selectors kept per snapshot

    def __init__(self) -> None:
        self._fleet: Mapping[str, DeviceView] | None = None
        self._selected: dict[Hashable, list[DeviceView]] = {}

    def select(self, selector: LabelSelector | None, devices: Mapping[str, DeviceView]) -> list[DeviceView]:
        if devices is not self._fleet:
            self._fleet, self._selected = devices, {}
        key = selector_key(selector)
        found = self._selected.get(key)
        if found is None:
            if len(self._selected) >= self.LIMIT:
                self._selected.clear()
            found = self._selected[key] = [device for device in devices.values() if matches(selector, device.labels)]
        return found


def runners_compatible(service_runners: Iterable[str], device_runners: Iterable[str]) -> bool:
    offered = tuple(device_runners) or DEFAULT_DEVICE_RUNNERS
    wanted = tuple(service_runners) or DEFAULT_DEVICE_RUNNERS
    return bool(set(offered) & set(wanted))


def eligible(service: ServiceView, device: DeviceView) -> bool:
    """May the device get new instances of the service?"""
    return (
        device.ready
        and not device.unschedulable
        and device.architecture in service.packages
        and matches(service.selector, device.labels)
        and runners_compatible(service.runners, device.runners)
        and not device.missing(service)
    )


def keeps(service: ServiceView, device: DeviceView) -> bool:
    """May the device keep the instances it has? Not being Ready or schedulable is no reason to drop them."""
    return device.architecture in service.packages and matches(service.selector, device.labels)


def instance_body(service: ServiceView, device: str, index: int, package: PackageRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AosServiceInstance",
        "metadata": {
            "name": naming.instance_name(service.name, device, index),
            "namespace": service.namespace,
            "labels": {
                LABEL_SERVICE: naming.label_value(service.name),
                LABEL_DEVICE: naming.label_value(device),
                LABEL_INDEX: str(index),
            },
            "finalizers": [FINALIZER_OPERATOR],
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "AosService",
                    "name": service.name,
                    "uid": service.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": instance_spec(service, device, index, package),
    }


def instance_spec(service: ServiceView, device: str, index: int, package: PackageRef) -> dict[str, Any]:
    return {
        "service": service.name,
        "device": device,
        "index": index,
        "serviceId": service.service_id,
        "subject": service.subject,
        "instanceId": naming.instance_id(service.service_id, service.subject, index),
        "version": service.version,
        "image": {"reference": package.reference, "digest": package.digest, "architecture": package.architecture},
        "reserved": service.reservation.to_spec(),
    }


def _reserved(elsewhere: Mapping[str, Reservation] | None, device: str) -> Reservation:
    # Not `elsewhere or {}`: the truth of a Mapping is its length, which walks every device.
    return elsewhere.get(device, Reservation()) if elsewhere is not None else Reservation()


def wanted_keys(service: ServiceView, devices: Iterable[DeviceView], instances: Iterable[InstanceView],
                reserved_elsewhere: Mapping[str, Reservation] | None = None) -> set[tuple[str, int]]:
    """(device, index) of every instance that should exist. `reserved_elsewhere`: per device,
    what the instances of other services reserve there; a new instance goes only where its own
    reservation still fits (the ones a device keeps count first)."""
    by_device = {device.name: device for device in devices}
    existing = {(instance.device, instance.index): instance for instance in instances}
    hosting = {key[0] for key in existing}
    wanted: set[tuple[str, int]] = set()
    for device in sorted(by_device.values(), key=lambda device: device.name):
        if not (eligible(service, device) or (device.name in hosting and keeps(service, device))):
            continue
        used = _reserved(reserved_elsewhere, device.name)
        for index in range(service.instances_per_device):  # the ones it keeps count first
            if (device.name, index) in existing:
                used = used + existing[(device.name, index)].reserved
        for index in range(service.instances_per_device):
            key = (device.name, index)
            if key not in existing:
                if not eligible(service, device):
                    continue  # a device that may only keep its instances gets no new ones
                if not device.fits(used + service.reservation):
                    continue  # no room left for what the instance reserves
                used = used + service.reservation
            wanted.add(key)
    return wanted


def no_device_fits(service: ServiceView, devices: Iterable[DeviceView], instances: Iterable[InstanceView],
                   reserved_elsewhere: Mapping[str, Reservation] | None = None,
                   wanted: set[tuple[str, int]] | None = None) -> dict[str, list[str]]:
    """Per device that would otherwise take instances of the service (Ready, schedulable,
    selected, architecture and runner), why it got fewer than it should: the host devices and
    resources it lacks, the devices whose every share is taken, or the CPU or RAM that other
    instances have reserved. Empty when nothing stopped an instance. `wanted`: wanted_keys of
    the same inputs, when the caller has it."""
    if not service.reservation.devices and not service.resources and not service.reservation.cpu_dmips \
            and not service.reservation.ram:
        return {}
    devices, instances = list(devices), list(instances)
    if wanted is None:
        wanted = wanted_keys(service, devices, instances, reserved_elsewhere)
    existing = {(instance.device, instance.index): instance for instance in instances}
    found: dict[str, list[str]] = {}
    for device in devices:
        if not (device.ready and not device.unschedulable and device.architecture in service.packages
                and runners_compatible(service.runners, device.runners) and matches(service.selector, device.labels)):
            continue
        keys = [key for key in wanted if key[0] == device.name]
        if len(keys) >= service.instances_per_device:
            continue
        if missing := device.missing(service):
            found[device.name] = missing
            continue
        used = _reserved(reserved_elsewhere, device.name)
        for key in keys:
            used = used + (existing[key].reserved if key in existing else service.reservation)
        if short := device.short_shares(used + Reservation(devices=service.reservation.devices)):
            found[device.name] = [f"device {name}" for name in short]
        elif budgets := device.short_budgets(used, service.reservation):
            found[device.name] = budgets
    return found


def describe_misfits(misfits: Mapping[str, list[str]], limit: int = 10) -> str:
    """`edge-1: device camera0, resource vis; edge-2: ...` for the NoDeviceFits condition."""
    parts = [f"{name}: {', '.join(items)}" for name, items in sorted(misfits.items())[:limit]]
    more = f"; and {len(misfits) - limit} more device(s)" if len(misfits) > limit else ""
    return "; ".join(parts) + more


PackageChoice = Callable[[DeviceView], "PackageRef | None"]


def plan(service: ServiceView, devices: Iterable[DeviceView], instances: Iterable[InstanceView],
         package_for: PackageChoice | None = None,
         reserved_elsewhere: Mapping[str, Reservation] | None = None,
         wanted: set[tuple[str, int]] | None = None) -> Plan:
    """What to create, update and delete. `package_for` picks a device's package (the rollout
    planner's revision); None from it leaves the device's instances on what they have.
    `wanted`: wanted_keys of the same inputs, when the caller has it."""
    devices, instances = list(devices), list(instances)
    by_device = {device.name: device for device in devices}
    existing = {(instance.device, instance.index): instance for instance in instances}
    result = Plan()
    if wanted is None:
        wanted = wanted_keys(service, devices, instances, reserved_elsewhere)
    result.desired = len(wanted)
    for key in sorted(wanted):
        device = by_device[key[0]]
        default = service.packages[device.architecture]  # type: ignore[index]
        chosen = package_for(device) if package_for else default
        current = existing.get(key)
        if chosen is None and current is not None:
            continue
        package = chosen or default
        if current is None:
            result.create.append(instance_body(service, key[0], key[1], package))
        elif current.deleting:
            continue  # being removed; it is recreated once it is gone
        elif current.digest != package.digest:
            result.update.append((current.name, {"spec": instance_spec(service, key[0], key[1], package)}))
    for key, instance in sorted(existing.items()):
        if key not in wanted and not instance.deleting:
            result.delete.append(instance.name)
    return result
