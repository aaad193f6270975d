"""Read the two JSON blobs a package carries for the runtime: the OCI image config and the Aos
service config. Pure: data in, typed values out; every problem is a PackageError naming the blob
and the field.

Keys are matched case-insensitively, as AosEdge's Go and C++ readers do (`cpuDmipsLimit` and
`cpuDMIPSLimit` are the same key).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aos_operator import values
from aos_operator.errors import PackageError
from aos_operator.runtime.permissions import parse_permissions

# AosEdge's systemd drop-in defaults (reference §3.9).
DEFAULT_START_INTERVAL = 5.0
DEFAULT_START_BURST = 3
DEFAULT_RESTART_INTERVAL = 1.0
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9  # a Go time.Duration, what AosEdge parses durations into
PID_MAX_LIMIT = 1 << 22  # the kernel's PID_MAX_LIMIT on 64-bit: pids.max refuses more
_LARGEST_SPEED = (2**63 - 1) // 1000  # kbit/s: the CNI bandwidth plugin takes bit/s as an integer

_NUMBER = r"(\d+(?:[.,]\d+)?)"
_ISO_DURATION_RE = re.compile(
    rf"P(?:{_NUMBER}Y)?(?:{_NUMBER}M)?(?:{_NUMBER}W)?(?:{_NUMBER}D)?"
    rf"(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?$"
)
_ISO_UNITS = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)
_GO_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class ImageConfig:
    """The fields of an OCI image config that AosEdge uses (User, Volumes, StopSignal are ignored)."""

    os: str
    architecture: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    working_dir: str
    env: tuple[str, ...]
    exposed_ports: tuple[str, ...] = ()  # `ExposedPorts` keys: "8080/tcp", "53/udp", "9000-9010/tcp", "8080"

    @property
    def args(self) -> tuple[str, ...]:
        return self.entrypoint + self.cmd


@dataclass(frozen=True)
class Quotas:
    """`quotas` of the service config: DMIPS, bytes and counts; None when absent."""

    cpu_dmips_limit: int | None = None
    cpu_percent_limit: int | None = None  # legacy `cpuLimit` (percent), used only without cpuDmipsLimit
    ram_limit: int | None = None
    pids_limit: int | None = None
    no_file_limit: int | None = None
    tmp_limit: int | None = None
    state_limit: int | None = None
    storage_limit: int | None = None
    upload_speed: int | None = None  # kbit/s
    download_speed: int | None = None  # kbit/s
    upload_limit: int | None = None  # bytes per period
    download_limit: int | None = None  # bytes per period


@dataclass(frozen=True)
class RunParameters:
    """The restart policy: systemd's StartLimitIntervalSec, StartLimitBurst and RestartSec."""

    start_interval: float = DEFAULT_START_INTERVAL
    start_burst: int = DEFAULT_START_BURST
    restart_interval: float = DEFAULT_RESTART_INTERVAL


@dataclass(frozen=True)
class ServiceDevice:
    """`devices[]` of the service config: an alias from the node config and cgroup access letters."""

    name: str
    permissions: str  # a subset of "rwm"


@dataclass(frozen=True)
class AlertRule:
    """One rule of `alertRules`: cpu, ram and partitions in percent of the node's total, download
    and upload in points (bytes this traffic period), as AosEdge reads them."""

    parameter: str  # cpu, ram, download, upload, or a partition name (storage, state)
    min_timeout: float  # seconds
    min_threshold: float
    max_threshold: float
    percent: bool


@dataclass(frozen=True)
class ServiceConfig:
    """The parts of the Aos service config that decide how an instance runs on a node."""

    hostname: str | None = None
    sysctl: Mapping[str, str] = field(default_factory=dict)
    quotas: Quotas = field(default_factory=Quotas)
    run_parameters: RunParameters = field(default_factory=RunParameters)
    skip_resource_limits: bool = False
    allowed_connections: tuple[str, ...] = ()  # "<serviceID>/<port or range>[/<proto>]"
    devices: tuple[ServiceDevice, ...] = ()  # host devices by node-config alias, with cgroup access letters
    resources: tuple[str, ...] = ()  # node-config resource aliases
    permissions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # {server: {function: r|w|rw}}
    offline_ttl: float = 0.0  # seconds; 0: may run offline forever
    alert_rules: tuple[AlertRule, ...] = ()


def _iso_duration_seconds(text: str) -> float | None:
    match = _ISO_DURATION_RE.fullmatch(text)
    if not match or not any(match.groups()) or text.endswith("T"):
        return None
    parts = zip(match.groups(), _ISO_UNITS, strict=True)
    return sum(float(number.replace(",", ".")) * unit for number, unit in parts if number)


def _go_duration_seconds(text: str) -> float | None:
    if not text or _GO_DURATION_PART_RE.sub("", text):
        return None
    return sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_DURATION_PART_RE.findall(text))


def parse_duration(value: Any, where: str) -> float:
    """Seconds from an ISO 8601 duration (`PT10S`), a Go duration (`1m30s`) or a number of seconds,
    the forms AosEdge's Go reader accepts."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        seconds = _iso_duration_seconds(text)
        if seconds is None:
            seconds = _go_duration_seconds(text)
    if seconds is None:
        raise PackageError(f"{where}: {value!r} is not a duration", hint="use ISO 8601, e.g. PT1S, PT10S, PT1M")
    if not math.isfinite(seconds):
        raise PackageError(f"{where}: {value!r} is not a finite duration", hint="use ISO 8601, e.g. PT1S, PT10S, PT1M")
    if seconds > MAX_DURATION_SECONDS:
        raise PackageError(f"{where}: {value!r} is beyond the longest duration AosEdge takes (Go's, about 292 years)")
    if seconds < 0:
        raise PackageError(f"{where}: a duration cannot be negative, got {value!r}")
    return seconds


class _Fields:
    """Case-insensitive view of one JSON object, with typed getters that name the field on error."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise PackageError(f"{where}: expected a JSON object, got {type(data).__name__}")
        self.where = where
        self._items = {str(key).lower(): (str(key), value) for key, value in data.items()}

    def raw(self, key: str) -> tuple[str, Any] | None:
        found = self._items.get(key.lower())
        if found is None or found[1] is None:
            return None
        return found

    def path(self, key: str) -> str:
        found = self._items.get(key.lower())
        return f"{self.where}.{found[0] if found else key}"

    def string(self, key: str) -> str | None:
        found = self.raw(key)
        if found is None:
            return None
        if not isinstance(found[1], str):
            raise PackageError(f"{self.path(key)}: expected a string, got {found[1]!r}")
        return found[1]

    def strings(self, key: str) -> tuple[str, ...]:
        found = self.raw(key)
        if found is None:
            return ()
        if not isinstance(found[1], list) or not all(isinstance(item, str) for item in found[1]):
            raise PackageError(f"{self.path(key)}: expected a list of strings, got {found[1]!r:.80}")
        return tuple(found[1])

    def arguments(self, key: str) -> tuple[str, ...]:
        """`strings` for the process's argv: exec refuses a NUL, but only after the container is made."""
        found = self.strings(key)
        nul = next((index for index, item in enumerate(found) if "\0" in item), None)
        if nul is not None:
            raise PackageError(f"{self.path(key)}[{nul}]: holds a NUL byte")
        return found

    def unsigned(self, key: str, *, most: int = values.LARGEST_LIMIT,
                 most_is: str = "the largest limit Linux takes") -> int | None:
        found = self.raw(key)
        if found is None:
            return None
        value = found[1]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PackageError(f"{self.path(key)}: expected an integer >= 0, got {value!r:.40}")
        if value > most:
            shown = f"{value}" if value < 10**15 else f"{value:.4g}"
            raise PackageError(f"{self.path(key)}: {shown} is beyond {most_is} ({most})")
        return value

    def limit(self, key: str, **bound: Any) -> int | None:
        """A quota whose 0 would be a limit of nothing (or, to some readers, no limit): refused."""
        value = self.unsigned(key, **bound)
        if value == 0:
            raise PackageError(f"{self.path(key)}: 0 is not a usable limit; remove the key for no limit")
        return value

    def boolean(self, key: str) -> bool:
        found = self.raw(key)
        if found is None:
            return False
        if not isinstance(found[1], bool):
            raise PackageError(f"{self.path(key)}: expected true or false, got {found[1]!r}")
        return found[1]

    def object(self, key: str) -> _Fields | None:
        found = self.raw(key)
        return None if found is None else _Fields(found[1], self.path(key))


def _keys(fields: _Fields, key: str) -> tuple[str, ...]:
    """The keys of an object-valued field (a list of strings is read the same way); checked later."""
    found = fields.raw(key)
    if found is None:
        return ()
    value = found[1]
    if isinstance(value, Mapping):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(item, str) and len(item) <= 256 for item in value):
        raise PackageError(f"{fields.path(key)}: expected an object with string keys, got {value!r:.200}")
    return tuple(value)


def _devices(fields: _Fields) -> tuple[ServiceDevice, ...]:
    """`devices: [{name, permissions}]`; the letters are the devices cgroup's r, w, m."""
    found = fields.raw("devices")
    if found is None:
        return ()
    where = fields.path("devices")
    if not isinstance(found[1], list) or len(found[1]) > 256:
        raise PackageError(f"{where}: expected a list of at most 256 {{name, permissions}} objects")
    devices = []
    for number, item in enumerate(found[1]):
        entry = _Fields(item, f"{where}[{number}]")
        name, permissions = entry.string("name"), entry.string("permissions")
        if not name or len(name) > 500:
            raise PackageError(f"{entry.path('name')}: expected the name of a device of the node config")
        if not permissions or len(permissions) > 3 or set(permissions) - set("rwm") or len(set(permissions)) != len(permissions):
            raise PackageError(f"{entry.path('permissions')}: expected cgroup access letters r, w, m, got {permissions!r:.20}")
        devices.append(ServiceDevice(name, permissions))
    return tuple(devices)


def _resources(fields: _Fields) -> tuple[str, ...]:
    names = fields.strings("resources")
    if len(names) > 256 or any(not name or len(name) > 500 for name in names):
        raise PackageError(f"{fields.path('resources')}: expected at most 256 resource names")
    return names


_MAX_THRESHOLD = float(2**63)
_PERCENT_RULES = ("cpu", "ram")
_POINT_RULES = ("download", "upload")


def _threshold(rule: _Fields, key: str) -> float:
    found = rule.raw(key)
    if found is None:
        return 0.0
    value = found[1]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= _MAX_THRESHOLD:
        raise PackageError(f"{rule.path(key)}: expected a number >= 0, got {value!r:.100}")
    return float(value)


def _alert_rule(rule: _Fields, parameter: str, percent: bool) -> AlertRule:
    timeout = rule.raw("minTimeout")
    return AlertRule(
        parameter=parameter,
        min_timeout=0.0 if timeout is None else parse_duration(timeout[1], rule.path("minTimeout")),
        min_threshold=_threshold(rule, "minThreshold"),
        max_threshold=_threshold(rule, "maxThreshold"),
        percent=percent,
    )


def parse_alert_rules(fields: _Fields) -> tuple[AlertRule, ...]:
    """`alertRules`: {cpu, ram, download, upload: rule, partitions: [rule with name]} (aos_common's shape)."""
    rules = fields.object("alertRules")
    if rules is None:
        return ()
    found = []
    for parameter in _PERCENT_RULES + _POINT_RULES:
        rule = rules.object(parameter)
        if rule is not None:
            found.append(_alert_rule(rule, parameter, parameter in _PERCENT_RULES))
    partitions = rules.raw("partitions")
    if partitions is not None:
        if not isinstance(partitions[1], list) or len(partitions[1]) > 16:
            raise PackageError(f"{rules.path('partitions')}: expected a list of at most 16 rules")
        seen = {rule.parameter for rule in found}
        for number, item in enumerate(partitions[1]):
            rule = _Fields(item, f"{rules.path('partitions')}[{number}]")
            name = rule.string("name")
            if not name or len(name) > 64 or name in seen:
                raise PackageError(f"{rule.path('name')}: expected a partition name (storage, state) used once, "
                                   f"got {name!r:.80}")
            seen.add(name)
            found.append(_alert_rule(rule, name, True))
    return tuple(found)


def parse_image_config(data: Any, where: str) -> ImageConfig:
    """The image config as AosEdge reads it; `os` must be linux."""
    top = _Fields(data, where)
    os_name = top.string("os") or ""
    if os_name.lower() != "linux":
        raise PackageError(f"{top.path('os')}: must be linux, got {os_name!r}",
                           hint="AosEdge runs Linux images only; rebuild the package with os: linux")
    config = top.object("config") or _Fields({}, top.path("config"))
    image = ImageConfig(
        os=os_name,
        architecture=top.string("architecture") or "",
        entrypoint=config.arguments("Entrypoint"),
        cmd=config.arguments("Cmd"),
        working_dir=config.string("WorkingDir") or "",
        env=config.strings("Env"),
        exposed_ports=_keys(config, "ExposedPorts"),
    )
    if not image.args:
        raise PackageError(f"{config.where}: neither Entrypoint nor Cmd is set: nothing to run",
                           hint="set cmd in the service's config.yaml")
    if image.working_dir and (problem := values.working_dir_problem(image.working_dir)):
        raise PackageError(f"{config.path('WorkingDir')}: {problem}; nothing was installed")
    for entry in image.env:
        if "=" not in entry or not entry.split("=", 1)[0].strip():
            raise PackageError(f"{config.path('Env')}: {entry!r} is not NAME=value")
        if problem := values.env_entry_problem(entry):
            raise PackageError(f"{config.path('Env')}: {problem}")
    return image


def parse_service_config(data: Any, where: str) -> ServiceConfig:
    """The Aos service config (reference §2.4); unknown keys are ignored as on AosEdge devices."""
    top = _Fields(data, where)
    hostname = top.string("hostname")
    if hostname is not None and (problem := values.hostname_problem(hostname)):
        raise PackageError(f"{top.path('hostname')}: {problem}")
    sysctl = top.raw("sysctl")
    if sysctl is not None and (not isinstance(sysctl[1], Mapping)
                               or not all(isinstance(v, str) for v in sysctl[1].values())):
        raise PackageError(f"{top.path('sysctl')}: expected an object of string values, got {sysctl[1]!r}")
    for key, value in (sysctl[1] if sysctl else {}).items():
        if problem := values.sysctl_problem(str(key), value):
            raise PackageError(f"{top.path('sysctl')}: {problem}")
    quotas = top.object("quotas") or _Fields({}, top.path("quotas"))
    run = top.object("runParameters") or _Fields({}, top.path("runParameters"))
    start_interval = run.raw("startInterval")
    restart_interval = run.raw("restartInterval")
    start_burst = run.unsigned("startBurst")
    return ServiceConfig(
        hostname=hostname,
        sysctl=dict(sysctl[1]) if sysctl else {},
        quotas=Quotas(
            cpu_dmips_limit=quotas.limit("cpuDmipsLimit"),
            cpu_percent_limit=quotas.limit("cpuLimit"),
            ram_limit=quotas.limit("ramLimit"),
            pids_limit=quotas.limit("pidsLimit", most=PID_MAX_LIMIT, most_is="the kernel's most PIDs"),
            no_file_limit=quotas.limit("noFileLimit"),
            tmp_limit=quotas.limit("tmpLimit"),
            state_limit=quotas.unsigned("stateLimit"),
            storage_limit=quotas.unsigned("storageLimit"),
            upload_speed=quotas.unsigned("uploadSpeed", most=_LARGEST_SPEED, most_is="the largest rate tc takes"),
            download_speed=quotas.unsigned("downloadSpeed", most=_LARGEST_SPEED, most_is="the largest rate tc takes"),
            upload_limit=quotas.unsigned("uploadLimit"),
            download_limit=quotas.unsigned("downloadLimit"),
        ),
        run_parameters=RunParameters(
            start_interval=DEFAULT_START_INTERVAL if start_interval is None
            else parse_duration(start_interval[1], run.path("startInterval")),
            start_burst=DEFAULT_START_BURST if start_burst is None else start_burst,
            restart_interval=DEFAULT_RESTART_INTERVAL if restart_interval is None
            else parse_duration(restart_interval[1], run.path("restartInterval")),
        ),
        skip_resource_limits=top.boolean("skipResourceLimits"),
        allowed_connections=_keys(top, "allowedConnections"),
        devices=_devices(top),
        resources=_resources(top),
        permissions=parse_permissions((top.raw("permissions") or (None, None))[1], top.path("permissions")),
        offline_ttl=0.0 if (ttl := top.raw("offlineTTL")) is None else parse_duration(ttl[1], top.path("offlineTTL")),
        alert_rules=parse_alert_rules(top),
    )
