"""config.yaml schema version 1 (no `schemaVersion` key): publisher, build, publish, configuration.

Strictness follows aos-signer 1.17's JSON schemas: unknown keys are rejected where those
schemas reject them (everywhere except `build`, `state`, `devices[]` and alert rules), and
types are JSON types. Checks that span several fields live in `normalize`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

from aos_operator.service import units
from aos_operator.service.fields import (
    RUNNERS,
    DeviceMode,
    IsoDuration,
    JBool,
    JStr,
    Str255,
    Str10000,
    V1Size,
    V1Speed,
    bounded_int,
    bounded_str,
)


# JSON Schema "number": an integer or a float, never a boolean.
StrictNumber = Annotated[int, Strict()] | Annotated[float, Strict()]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=False, frozen=True)


def _runner_name(value: Any) -> Any:
    if value not in RUNNERS:
        raise ValueError(f"unsupported runner {value!r}; use one of {', '.join(RUNNERS)}")
    return value


def _semver(value: str) -> str:
    units.parse_semver(value)
    return value


def _connection(value: str) -> str:
    return units.parse_connection(value, dialect=1)


def _exposed_port(value: int | float | str) -> int | str:
    if isinstance(value, float):
        raise ValueError(f"{value!r} is not a port; use {units.PORT_HELP}")
    units.parse_exposed_port(value)
    return value


class Publisher(_Closed):
    """Who wrote the service; both keys are required when the section is present."""

    author: Str255 = Field(description="Author of the service: name, e-mail, ...")
    company: Str255 = Field(description="Company or division that publishes the service")


class Build(_Open):
    """How aos-signer packs the service (unknown keys are allowed here, as aos-signer allows them)."""

    os: Str255 = Field(description="Operating system of the service; AosEdge devices run `linux` only")
    arch: Str255 = Field(description="CPU architecture: amd64 (also x86, x86_64), arm64 (aarch64), arm")
    sign_key: Str255 = Field(None, description="PEM key that signs the upload bundle")
    sign_certificate: Str255 = Field(None, description="PEM certificate of `sign_key`")
    sign_pkcs12: Str255 = Field(None, description="Passwordless PKCS#12 file that signs the upload bundle")
    remove_non_regular_files: JBool = Field(None, description="Legacy; see `symlinks`")
    symlinks: Literal["raise", "copy", "delete"] = Field(
        "copy", description="What to do with symlinks in the source folder: raise an error, copy them, delete them"
    )
    source_folder: Str255 = Field("src", description="Folder holding the service's root filesystem tree")
    package_folder: Str255 = Field(".", description="Folder where aos-signer writes the bundle")


class Publish(_Closed):
    """Where and as what the service is published."""

    url: Str255 = Field(None, description="AosCloud address (default aoscloud.io)")
    service_uid: Str255 = Field(description="Service UID given by AosCloud; becomes AOS_SERVICE_ID")
    tls_key: Str255 = Field(None, description="PEM key for the upload connection (default: sign_key)")
    tls_certificate: Str255 = Field(None, description="PEM certificate for the upload connection")
    tls_pkcs12: Str255 = Field(None, description="PKCS#12 file for the upload connection")
    version: Annotated[Str255, AfterValidator(_semver)] = Field(description="Service version, SemVer 2.0.0")


class State(_Open):
    filename: bounded_str(5000) = Field("state.dat", description="Default state file, in meta/")  # type: ignore[valid-type]
    required: JBool = Field(False, description="Whether the service uses a state file")


class LayerRef(_Closed):
    uid: Str255 = Field(description="UID of the required Aos layer")
    minVersion: Annotated[Str255, AfterValidator(_semver)] = Field(
        None, description="Lowest layer version accepted (inclusive), SemVer"
    )
    maxVersion: Annotated[Str255, AfterValidator(_semver)] = Field(
        None, description="Highest layer version (exclusive), SemVer"
    )


LegacyLayerRef = Annotated[str, Strict(), Field(max_length=255, description="Legacy: a layer named by its UID")]


class RunParameters(_Closed):
    startInterval: IsoDuration = Field(None, description="Window for counting starts (ISO 8601), default PT5S")
    startBurst: bounded_int(0, 1_000_000_000) = Field(  # type: ignore[valid-type]
        None, description="Starts allowed within startInterval before giving up, default 3"
    )
    restartInterval: IsoDuration = Field(None, description="Wait before a restart (ISO 8601), default PT1S")


class Instances(_Closed):
    minInstances: bounded_int(1, 1000) = Field(None, description="Instances per unit")  # type: ignore[valid-type]
    priority: bounded_int(0, 1_000_000_000) = Field(None, description="0 is the lowest")  # type: ignore[valid-type]
    labels: list[JStr] | None = Field(None, description="Node labels the instances require")


class RequestedResources(_Closed):
    cpu: bounded_int(1) = Field(None, description="CPU to reserve, in DMIPS")  # type: ignore[valid-type]
    ram: V1Size = Field(None, description="RAM to reserve")
    storage: V1Size = Field(None, description="Storage to reserve")
    state: V1Size = Field(None, description="State to reserve")


class Quotas(_Closed):
    cpu: bounded_int(1) = Field(None, description="CPU limit in DMIPS")  # type: ignore[valid-type]
    mem: V1Size = Field(None, description="RAM limit (at least 6 MB for runc and crun)")
    state: V1Size = Field(None, description="State file size limit")
    storage: V1Size = Field(None, description="Persistent storage (/storage) size limit")
    temp: V1Size = Field(None, description="/tmp size (a tmpfs)")
    upload_speed: V1Speed = Field(None, description="Upload bandwidth; Kb = kilobits, KB = kilobytes")
    download_speed: V1Speed = Field(None, description="Download bandwidth; Kb = kilobits, KB = kilobytes")
    upload: V1Size = Field(None, description="Upload volume per day")
    download: V1Size = Field(None, description="Download volume per day")


class AlertRule(_Open):
    minTime: IsoDuration = Field(None, description="How long a threshold must hold (ISO 8601)")
    minThreshold: bounded_int(0, 1_000_000_000) = Field(None)  # type: ignore[valid-type]
    maxThreshold: bounded_int(0, 1_000_000_000) = Field(None)  # type: ignore[valid-type]


class Alerts(_Closed):
    ram: AlertRule = Field(None)
    cpu: AlertRule = Field(None)
    mem: AlertRule = Field(None)
    state: AlertRule = Field(None)
    upload_speed: AlertRule = Field(None)
    download_speed: AlertRule = Field(None)
    upload: AlertRule = Field(None)
    download: AlertRule = Field(None)
    storage: AlertRule = Field(None)
    temp: AlertRule = Field(None)


class Device(_Open):
    name: bounded_str(500) = Field(description="Device alias from the unit config: camera0, mic0, ...")  # type: ignore[valid-type]
    mode: DeviceMode = Field(description="Access: letters r, w, m")


Permission = Literal["r", "w", "rw"]


class Configuration(_Closed):
    """How the service runs: command, environment, quotas, resources, ..."""

    state: State = Field(None, description="Default state file")
    layers: list[LayerRef | LegacyLayerRef] | None = Field(None, description="Aos layers the service needs")
    env: list[JStr] | None = Field(None, description="Environment, NAME=value")
    cmd: JStr | list[JStr] = Field(None, description="Command: one string (split like a shell) or an argv list")
    runParameters: RunParameters | None = None
    instances: Instances | None = None
    runner: Annotated[Str10000, AfterValidator(lambda v: _runner_name(v) if v else v)] = Field(
        None, description="Legacy single runner: runc, crun, runx, xrun"
    )
    runners: list[Annotated[JStr | StrictNumber, AfterValidator(_runner_name)]] | None = Field(
        None, description="Runners the service may use; default runc and crun"
    )
    offlineTTL: IsoDuration = Field(None, description="Stop the service after this long offline (ISO 8601)")
    downloadTTL: IsoDuration = Field(None, description="Give up a download after this long (ISO 8601)")
    isResourceLimits: JBool = Field(None, description="false: no limits (pre-release versions only)")
    workingDir: Str10000 = Field(None, description="Working directory of the process (default /)")
    hostname: Str10000 = Field(None, description="Container hostname")
    balancingPolicy: Annotated[Str10000, AfterValidator(lambda v: _balancing(v))] = Field(
        None, description="enabled (default) or disabled: may the instances move between nodes"
    )
    requestedResources: RequestedResources | None = None
    quotas: Quotas | None = None
    alerts: Alerts | None = None
    exposedPorts: list[Annotated[JStr | StrictNumber, AfterValidator(_exposed_port)]] | None = Field(
        None, description='Inbound ports: 8080, "53/udp", "8089-8090/tcp"'
    )
    allowedConnections: list[Annotated[JStr, AfterValidator(_connection)]] | None = Field(
        None, description='Outbound connections: "<service UUID>/<port or range>/<tcp|udp>"'
    )
    devices: list[Device] | None = Field(None, description="Host devices the service uses")
    resources: list[JStr] | None = Field(None, description="Host resources the service uses: system-dbus, ...")
    permissions: dict[JStr, dict[JStr, Permission]] | None = Field(
        None, description="Functional-server permissions: {server: {function: r|w|rw}}"
    )


def _balancing(value: str) -> str:
    if value not in ("enabled", "disabled"):
        raise ValueError(f"{value!r} is not a balancing policy; use enabled or disabled")
    return value


class ConfigV1(_Closed):
    """A schema-version-1 config.yaml."""

    publisher: Publisher = Field(None, description="Author and company")
    build: Build
    publish: Publish
    configuration: Configuration
