"""The normalized service description: one versionless shape that both config dialects map to.

Everything is in canonical units: bytes, DMIPS, kbit/s, counts, and ISO 8601 durations with
integer components. Builders, the runtime and the operator read services only through it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Quotas(_Frozen):
    cpu_dmips: int | None = None
    ram: int | None = None
    pids: int | None = None
    no_file: int | None = None
    tmp: int | None = None
    state: int | None = None
    storage: int | None = None
    upload_speed_kbits: int | None = None
    download_speed_kbits: int | None = None
    upload_bytes: int | None = None
    download_bytes: int | None = None


class RequestedResources(_Frozen):
    cpu_dmips: int | None = None
    ram: int | None = None
    storage: int | None = None
    state: int | None = None


class RunParameters(_Frozen):
    start_interval: str | None = None
    start_burst: int | None = None
    restart_interval: str | None = None


class AlertRule(_Frozen):
    min_timeout: str | None = None
    min_threshold: float | None = None
    max_threshold: float | None = None


class Instances(_Frozen):
    min_instances: int = 1
    priority: int = 0
    labels: tuple[str, ...] = ()


class StateFile(_Frozen):
    filename: str = "state.dat"
    required: bool = False


class LayerRequirement(_Frozen):
    uid: str
    min_version: str | None = None
    max_version: str | None = None


class DeviceAccess(_Frozen):
    name: str
    permissions: str


class Dependency(_Frozen):
    id: str | None = None
    codename: str | None = None
    type: str | None = None
    versions: str
    include_pre_release: bool = False
    condition: str = "completed"


class Platform(_Frozen):
    os: str = "linux"
    architecture: str
    variant: str | None = None

    def label(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


class Image(_Frozen):
    """What one architecture's image runs and where its files come from."""

    platform: Platform
    source_folder: str = Field(description="Root filesystem tree, relative to the config's base directory")
    source_key: str = Field("build.source_folder", exclude=True, description="The config key that named the folder")
    command: tuple[str, ...] = ()
    working_dir: str | None = None
    env: tuple[str, ...] = ()


class ServiceDescription(_Frozen):
    dialect: Literal[1, 2]
    service_id: str | None = Field(None, description="AosCloud service UID (v1 publish.service_uid, v2 identity.id)")
    name: str | None = Field(None, description="Code name (v2 identity.codename)")
    title: str | None = None
    version: str
    author: str | None = None
    company: str | None = None
    images: tuple[Image, ...]
    symlinks: Literal["raise", "copy", "delete"] = "copy"
    hostname: str | None = None
    exposed_ports: tuple[str, ...] = ()
    state: StateFile | None = None
    instances: Instances = Instances()
    run_parameters: RunParameters | None = None
    runners: tuple[str, ...] = ("runc", "crun")
    offline_ttl: str | None = None
    download_ttl: str | None = None
    skip_resource_limits: bool = False
    balancing_policy: Literal["enabled", "disabled"] = "enabled"
    base_layer_is_node_rootfs: bool = True
    quotas: Quotas = Quotas()
    requested_resources: RequestedResources | None = None
    alert_rules: dict[str, AlertRule] = {}
    allowed_connections: tuple[str, ...] = ()
    devices: tuple[DeviceAccess, ...] = ()
    resources: tuple[str, ...] = ()
    permissions: dict[str, dict[str, str]] = {}
    sysctl: dict[str, str] = {}
    layers: tuple[LayerRequirement, ...] = ()
    dependencies: tuple[Dependency, ...] = ()

    def image_for(self, architecture: str | None = None) -> Image:
        """The image for an architecture; the only one when there is one and none is asked for."""
        if architecture is None:
            if len(self.images) == 1:
                return self.images[0]
            raise LookupError(
                "the service has images for "
                + ", ".join(image.platform.architecture for image in self.images)
                + "; choose one"
            )
        for image in self.images:
            if image.platform.architecture == architecture:
                return image
        raise LookupError(
            f"the service has no image for {architecture}; it has "
            + ", ".join(image.platform.architecture for image in self.images)
        )
