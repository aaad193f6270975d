"""config.yaml schema version 2 (`schemaVersion: 2`): publisher, publish and a list of items.

aos-signer 2.x checks this dialect with lax pydantic models that ignore unknown keys; these
models use the same types so that both accept the same documents, keep unknown keys (they
become warnings), and add the value checks an AosEdge device needs (sizes, ports, versions).
Keys that schema version 1 has and version 2 lost (runners, devices, sysctl, layers, ...) are
accepted as extensions, as the reference suggests.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator

from aos_operator.service import units
from aos_operator.service.fields import RUNNERS, DeviceMode, SemVerText, V2Size, V2Speed

IdentityType = Literal[
    "component", "service", "layer", "subject", "oem", "sp", "fleet", "node", "node-subject", "runtime"
]
ENCRYPTED_MEDIA_TYPES = (
    "application/vnd.aos.image.layer.enc.v1.aes256gcm+tar",
    "application/vnd.aos.image.layer.enc.v1.aes256gcm+tar+gzip",
    "application/vnd.aos.image.layer.enc.v1.aes256gcm+tar+gz",
)


class _Model(BaseModel):
    # Unknown keys are kept so that they can be reported as warnings; AosEdge ignores them.
    model_config = ConfigDict(extra="allow", frozen=True)


def _exposed_port(value: int | str) -> int | str:
    units.parse_exposed_port(value)
    return value


def _connection(value: str) -> str:
    return units.parse_connection(value, dialect=2)


def _runner(value: str) -> str:
    if value not in RUNNERS:
        raise ValueError(f"unsupported runner {value!r}; use one of {', '.join(RUNNERS)}")
    return value


NonNegative = Annotated[int, Field(ge=0)]


class Publisher(_Model):
    author: str | None = Field(None, description="Author of the bundle")
    company: str | None = Field(None, description="Company that publishes the bundle")


class Publish(_Model):
    tlsKey: str = Field(description="PKCS#12 file with the certificate and key for the upload connection")
    signKey: str | None = Field(None, description="PKCS#12 file that signs the bundle (default: tlsKey)")
    domain: str | None = Field(None, description="AosCloud domain (default: from the certificate)")


class Identity(_Model):
    id: UUID | None = Field(None, description="AosCloud UUID of the item")
    type: IdentityType | None = Field(None, description="Item type; services use `service`")
    codename: str | None = Field(None, description="Item code name, e.g. hello-world")
    title: str | None = None
    description: str | None = None
    urn: str | None = None


class OsInfo(_Model):
    os: str = Field(description="Operating system; AosEdge devices run linux only")
    version: str | None = None
    features: list[str] | None = None


class ArchInfo(_Model):
    architecture: str = Field(description="OCI architecture: amd64, arm64, arm, ...")
    variant: str | None = Field(None, description="OCI variant, e.g. v7 for arm")


class Encryption(_Model):
    algorithm: Literal["AES256-GCM"] = "AES256-GCM"
    keyFile: str | None = Field(None, description="32-byte key that encrypts the image")

    @model_validator(mode="before")
    @classmethod
    def _no_mode(cls, values: Any) -> Any:
        if isinstance(values, dict) and "mode" in values:
            raise ValueError("`mode` is no longer supported: remove it; a keyFile turns encryption on")
        return values


class Image(_Model):
    sourceFolder: str | None = Field(None, description="Image folder inside the item folder")
    path: str | None = Field(None, description="Path of a prebuilt image inside the item folder")
    mediaType: str | None = None
    osInfo: OsInfo = Field(OsInfo(os="Linux"))
    archInfo: ArchInfo
    env: list[str] | None = Field(None, description="Environment of this image, NAME=value")
    workingDir: str | None = None
    cmd: str | None = Field(None, description="Command line of this image, split like a shell")
    encryption: Encryption | None = None

    @model_validator(mode="after")
    def _media_type_matches_encryption(self) -> Image:
        if not self.mediaType or self.mediaType.strip().lower() in ENCRYPTED_MEDIA_TYPES:
            return self
        if self.encryption is not None and self.encryption.keyFile:
            raise ValueError(f"mediaType {self.mediaType!r} must be an encrypted media type when keyFile is set")
        if "aes256gcm" in self.mediaType.lower():
            raise ValueError(f"mediaType {self.mediaType!r} is not a supported encrypted media type")
        return self


class RunParameters(_Model):
    startInterval: timedelta | None = Field(None, description="Window for counting starts, default PT5S")
    startBurst: int | None = Field(None, description="Starts allowed within startInterval, default 3")
    restartInterval: timedelta | None = Field(None, description="Wait before a restart, default PT1S")


class ResourceAccess(_Model):
    name: str = Field(description="Resource or device alias from the unit config")
    # aos-signer 2.1's Literal omits "r" although "r" is its default; "r" is accepted here.
    mode: Literal["r", "w", "rw"] = "r"


class PercentRule(_Model):
    # Required but nullable, exactly as aos-signer 2.1 declares them.
    minTimeout: timedelta | None
    minThreshold: Annotated[float, Field(ge=0, le=100)] | None
    maxThreshold: Annotated[float, Field(ge=0, le=100)] | None


class PointRule(_Model):
    minTimeout: timedelta | None
    minThreshold: int | None
    maxThreshold: int | None


class AlertRules(_Model):
    ram: PercentRule | None = None
    cpu: PercentRule | None = None
    storage: PercentRule | None = None
    upload: PointRule | None = None
    download: PointRule | None = None


class Quotas(_Model):
    cpuLimit: NonNegative | None = Field(None, description="CPU limit in DMIPS")
    ramLimit: V2Size | None = Field(None, description="RAM limit: bytes or a size such as 512MiB")
    storageLimit: V2Size | None = Field(None, description="Persistent storage (/storage) limit")
    stateLimit: V2Size | None = Field(None, description="State file limit")
    tmpLimit: V2Size | None = Field(None, description="/tmp size (a tmpfs)")
    uploadSpeedLimit: V2Speed | None = Field(None, description="Upload bandwidth in bits/s, or e.g. 10K, 1Mb, 128KB")
    downloadSpeedLimit: V2Speed | None = Field(None, description="Download bandwidth in bits/s")
    uploadLimit: V2Size | None = Field(None, description="Upload volume per day (extension)")
    downloadLimit: V2Size | None = Field(None, description="Download volume per day (extension)")
    noFileLimit: NonNegative | None = Field(None, description="Open files limit (RLIMIT_NOFILE)")
    pidsLimit: NonNegative | None = Field(None, description="Processes and threads limit")


class Instances(_Model):
    minInstances: int = Field(1, ge=1, le=100, description="Instances per unit")
    priority: int = Field(0, ge=0, description="0 is the lowest")
    labels: list[str] | None = Field(None, description="Node labels the instances require")


class State(_Model):
    filename: str = "state.dat"
    required: bool = False


class RequestedResources(_Model):
    cpu: NonNegative | None = None
    ram: V2Size | None = None
    storage: V2Size | None = None
    state: V2Size | None = None


class DeviceAccess(_Model):
    name: str
    mode: DeviceMode


class LayerRef(_Model):
    uid: str
    minVersion: SemVerText | None = None
    maxVersion: SemVerText | None = None


LegacyLayerRef = Annotated[str, Strict(), Field(max_length=255, description="Legacy: a layer named by its UID")]


def _default_runtimes() -> list[Identity]:
    return [Identity(codename="runc", type="runtime"), Identity(codename="crun", type="runtime")]


class Configuration(_Model):
    state: State | None = None
    env: list[str] | None = Field(None, description="Environment, NAME=value")
    workingDir: str | None = Field(None, description="Working directory (default /)")
    instances: Instances | None = None
    cmd: str | None = Field(None, description="Command line, split like a shell")
    skipResourceLimits: bool = Field(False, description="No limits; pre-release versions only")
    balancingPolicy: Literal["enabled", "disabled"] = "enabled"
    baseLayerIsNodeRootfs: bool | None = Field(True, description="The node's rootfs is the bottom layer")
    hostname: str | None = None
    exposedPorts: list[Annotated[int | str, AfterValidator(_exposed_port)]] | None = Field(
        None, description='Inbound ports: 8080, "53/udp", "8089-8090/tcp"'
    )
    runtimes: list[Identity] = Field(default_factory=_default_runtimes, description="Runtimes, default runc and crun")
    runParameters: RunParameters | None = None
    offlineTTL: timedelta | None = Field(None, description="Stop after this long offline (ISO 8601)")
    resources: list[ResourceAccess] | None = None
    allowedConnections: list[Annotated[str, AfterValidator(_connection)]] | None = Field(
        None, description='Outbound connections: "<service>/<port or first:last>/<tcp|udp>"'
    )
    quotas: Quotas | None = None
    alertRules: AlertRules | None = None
    permissions: dict[str, dict[str, Literal["r", "rw", "w"]]] | None = None
    # Extensions: schema-version-1 keys that aos-signer 2.x ignores and AosEdge devices read.
    runners: list[Annotated[str, AfterValidator(_runner)]] | None = Field(None, description="Extension: runners")
    devices: list[DeviceAccess] | None = Field(None, description="Extension: host devices")
    sysctl: dict[str, str] | None = Field(None, description="Extension: kernel parameters")
    requestedResources: RequestedResources | None = Field(None, description="Extension: reservation")
    # the legacy plain-string form (`- some-layer`) of AosEdge's demo services, as in version 1
    layers: list[LayerRef | LegacyLayerRef] | None = Field(None, description="Extension: required Aos layers")
    downloadTTL: timedelta | None = Field(None, description="Extension: download TTL")


class Dependency(_Model):
    identity: Identity
    versions: str = Field(description='Version range, e.g. ">=1.0.0,<2.0.0"')
    includePreRelease: bool = False
    condition: Literal["started", "healthy", "completed", "before", "after"] = "completed"


class Item(_Model):
    identity: Identity
    version: SemVerText = Field(description="Item version, SemVer 2.0.0")
    sourceFolder: str | None = Field(None, description="Item folder (default: identity.codename)")
    images: list[Image] = Field(min_length=1, description="One image per architecture")
    configuration: Configuration | None = None
    dependencies: list[Dependency] | None = None


class ConfigV2(_Model):
    """A schema-version-2 config.yaml (bundle config)."""

    schemaVersion: Literal[2] = 2
    publisher: Publisher | None = None
    publish: Publish | None = None
    items: list[Item] = Field(min_length=1)
