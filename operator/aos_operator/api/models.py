"""Kubernetes resources of the project, group `aosedge.io`, version `v1alpha1`, as pydantic models.

The models are the single source of the CRD schemas (`api.crds` generates them) and the typed
view that the controller and the agent use to read and write objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "aosedge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_SERVICE = f"{GROUP}/service"
LABEL_DEVICE = f"{GROUP}/device"
LABEL_INDEX = f"{GROUP}/index"
FINALIZER_OPERATOR = f"{GROUP}/instances"
FINALIZER_AGENT = f"{GROUP}/agent"


class _Schema(BaseModel):
    """Field names are the JSON names; unknown fields from newer writers are tolerated."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# --- shared -------------------------------------------------------------------------------------


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(_Schema):
    """A metav1.Condition: the state of one aspect of the object."""

    type: str = Field(description="Condition type in CamelCase, e.g. Ready, Reconciling, Stalled, ConfigValid")
    status: ConditionStatus = Field(description="True, False or Unknown")
    reason: str = Field(description="Machine-readable reason in CamelCase, e.g. InvalidConfig")
    message: str = Field("", description="Human-readable details")
    lastTransitionTime: datetime = Field(description="When the status last changed")
    observedGeneration: int | None = Field(None, description="The .metadata.generation the condition was set for")


class LabelSelectorRequirement(_Schema):
    key: str = Field(description="Label key")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="In, NotIn, Exists, DoesNotExist")
    values: list[str] | None = Field(None, description="Values for In and NotIn")


class LabelSelector(_Schema):
    """A label selector, as in Deployments: both parts must match; empty selects everything."""

    matchLabels: dict[str, str] | None = Field(None, description="Labels that must be equal")
    matchExpressions: list[LabelSelectorRequirement] | None = Field(None, description="Set-based requirements")


# --- AosService -----------------------------------------------------------------------------------


class KeyToPath(_Schema):
    key: str = Field(description="Key in the ConfigMap")
    path: str = Field(description="Path of the file in the service's root filesystem, e.g. usr/bin/app.py")
    mode: int | None = Field(None, ge=0, le=0o7777, description="File mode bits (default 0644; 0755 for scripts)")


class ConfigMapSource(_Schema):
    name: str = Field(description="Name of a ConfigMap in the AosService's namespace")
    items: list[KeyToPath] | None = Field(
        None, description="Keys to put where; without items, every key becomes a file of that name at the root"
    )


class ImageSource(_Schema):
    reference: str = Field(
        description="An existing OCI image whose first layer is the service's root filesystem, "
        "e.g. registry.example.com/team/app@sha256:...; the layer is reused by digest"
    )


class AosServiceSource(_Schema):
    """Where the service's `src/` tree comes from: ConfigMaps or the layer of an existing image."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.configMaps) && has(self.image))",
                    "message": "set either configMaps or image, not both",
                }
            ]
        }
    )

    configMaps: list[ConfigMapSource] | None = Field(None, description="Files from ConfigMaps, mapped to paths")
    image: ImageSource | None = Field(None, description="The root filesystem layer of an existing OCI image")


IntOrPercent = int | str  # a count, or a percentage such as "25%"
_INT_OR_PERCENT = {"x-kubernetes-int-or-string": True}


class RollingUpdate(_Schema):
    maxUnavailable: IntOrPercent = Field(
        "25%", description="Devices (count, or percent of the selected devices, rounded down, at least 1) that may be "
        "without an available instance at once during a rollout; default 25% as in Deployments",
        json_schema_extra=_INT_OR_PERCENT,
    )
    minReadySeconds: int = Field(
        0, ge=0, le=86400, description="An updated instance counts as available once it has run this long without a restart"
    )


class CanaryStep(_Schema):
    devices: IntOrPercent = Field(
        description="Devices on the new revision once this step is reached (count, or percent of the selected "
        "devices, rounded up, at least 1)",
        json_schema_extra=_INT_OR_PERCENT,
    )
    pauseSeconds: int | None = Field(
        None, ge=0, le=30 * 86400,
        description="How long to wait once the step's devices are available; unset: until `aosctl rollout resume`",
    )


class Canary(_Schema):
    steps: list[CanaryStep] = Field(
        max_length=20, description="Steps in order; after the last one the rest of the devices follow the rolling rule"
    )


class RolloutStrategy(_Schema):
    """How a new revision reaches the devices; see README, Rollouts."""

    rollingUpdate: RollingUpdate | None = Field(None, description="Batch size and readiness (defaults apply when unset)")
    canary: Canary | None = Field(None, description="Steps of a few devices, each followed by a pause, before the rest")
    failureThreshold: IntOrPercent = Field(
        0, description="Updated instances (count, or percent rounded down) that may end Failed (CrashLoop, OOMKilled, "
        "StartError, OfflineTimeout) before the rollout is aborted and rolled back; default 0",
        json_schema_extra=_INT_OR_PERCENT,
    )
    progressDeadlineSeconds: int = Field(
        600, ge=1, le=30 * 86400,
        description="Abort and roll back when no updated device became available for this long (pauses not counted)",
    )


class AosServiceSpec(_Schema):
    config: dict[str, Any] = Field(
        description="The service's config.yaml as an object, schema version 1 or 2; validated by the operator",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    source: AosServiceSource | None = Field(None, description="Where the service's files come from")
    selector: LabelSelector | None = Field(None, description="AosDevices to run on (their labels mirror their Node's)")
    instancesPerDevice: int | None = Field(
        None, ge=0, le=1000, description="Instances on each device (default: the config's instances.minInstances)"
    )
    subject: str = Field("default", description="AosEdge subject the instances run for (AOS_SUBJECT_ID)")
    item: str | None = Field(None, description="For a schema-version-2 config with several services: the codename")
    suspend: bool = Field(False, description="Stop reconciling; running instances are left as they are")
    strategy: RolloutStrategy | None = Field(None, description="How a new revision is rolled out (default: rolling, 25%)")
    paused: bool = Field(False, description="Hold the rollout: no further device is updated (`aosctl rollout pause`)")
    revisionHistoryLimit: int = Field(10, ge=1, le=50, description="Revisions kept in status.revisions")


class ImageStatus(_Schema):
    architecture: str | None = Field(None, description="OCI architecture of the image")
    ref: str = Field(description="Where the package was pushed, repository:tag@digest")
    digest: str = Field(description="Manifest digest, sha256:...")


class Revision(_Schema):
    """One built package of the service: what a rollout or a rollback dispatches, by digest."""

    revision: int = Field(ge=1, description="Increasing number, 1 for the first build")
    digest: str = Field(description="Manifest digest of the first (or only) architecture")
    images: list[ImageStatus] = Field(description="The packages, one per architecture")
    sourceDigest: str = Field(description="Content digest of the config and source it was built from")
    version: str | None = Field(None, description="Service version from the config")
    createdAt: datetime = Field(description="When it was built")
    rolledOutAt: datetime | None = Field(None, description="When its last rollout started")
    result: str | None = Field(None, description="Progressing, Paused, Complete, RolledBack or Superseded")
    message: str | None = None


class RolloutStatus(_Schema):
    """The rollout in progress or last finished; the planner's memory between passes."""

    revision: int | None = Field(None, description="The revision being rolled out")
    stableRevision: int | None = Field(None, description="The last revision that completed: where a rollback goes")
    phase: str | None = Field(None, description="Progressing, Paused, Complete, RolledBack or Failed")
    step: int | None = Field(None, description="Canary step being worked on (0-based); the step count when past them")
    stepReachedAt: datetime | None = Field(None, description="When the current canary step's devices were available")
    lastProgressAt: datetime | None = Field(None, description="When an updated device last became available")
    updatedDevices: int | None = Field(None, description="Devices assigned the revision")
    availableDevices: int | None = Field(None, description="Devices assigned the revision with every instance available")
    totalDevices: int | None = Field(None, description="Devices the service runs on")
    failedRevision: int | None = Field(None, description="The revision that was rolled back")
    message: str | None = None
    progress: str | None = Field(None, description="updated/total devices, for kubectl")


class AosServiceStatus(_Schema):
    observedGeneration: int | None = Field(None, description="The generation the status describes")
    conditions: list[Condition] | None = None
    image: ImageStatus | None = Field(None, description="The package of the first (or only) architecture")
    images: list[ImageStatus] | None = Field(None, description="The packages, one per architecture")
    sourceDigest: str | None = Field(None, description="Content digest of config and source the image was built from")
    serviceId: str | None = Field(None, description="AOS_SERVICE_ID of the instances")
    version: str | None = Field(None, description="Service version from the config")
    readyRatio: str | None = Field(None, description="Ready of desired instances as kubectl shows it, e.g. 2/3")
    desired: int | None = Field(None, description="Instances that should exist")
    ready: int | None = Field(None, description="Instances running the current image")
    updated: int | None = Field(None, description="Instances with the current image, running or not")
    failed: int | None = Field(None, description="Instances that failed")
    revisions: list[Revision] | None = Field(None, description="Recent revisions, oldest first (revisionHistoryLimit)")
    rollout: RolloutStatus | None = None


# --- AosDevice ------------------------------------------------------------------------------------


class AosDeviceSpec(_Schema):
    unschedulable: bool = Field(False, description="No new instances are placed on the device (like a cordon)")


class HostResource(_Schema):
    name: str = Field(description="Resource alias services ask for, e.g. system-dbus")


class DeviceShares(_Schema):
    """A host device of the node config and how many instances may still use it."""

    name: str = Field(description="Alias services ask for in devices[].name")
    sharedCount: int = Field(0, ge=0, description="Instances that may use it at once; 0: any number")
    used: int = Field(0, ge=0, description="Instances on the device holding a share")
    free: int | None = Field(None, ge=0, description="Shares left; unset when sharedCount is 0 (unlimited)")


class AosDeviceStatus(_Schema):
    nodeName: str | None = Field(None, description="The Kubernetes Node the agent runs on")
    architecture: str | None = Field(None, description="OCI architecture, e.g. amd64, arm64")
    os: str | None = Field(None, description="Operating system, e.g. linux")
    kernelVersion: str | None = None
    cpuCores: int | None = Field(None, description="Number of CPU cores")
    dmips: int | None = Field(None, description="Total DMIPS of the device, for cpuDmipsLimit")
    memoryBytes: int | None = Field(None, description="Physical memory in bytes")
    runners: list[str] | None = Field(None, description="Runners available, e.g. runc")
    resources: list[str] | None = Field(None, description="Host resources offered to services (node config names)")
    hostDevices: list[str] | None = Field(None, description="Host devices offered to services (node config names)")
    devices: list[DeviceShares] | None = Field(None, description="Host devices with their shares")
    agentVersion: str | None = None
    lastHeartbeat: datetime | None = Field(None, description="When the agent last wrote this status: every beat "
                                           "without a Lease; with one (its liveness), on a change and every "
                                           "--status-report seconds")
    instances: int | None = Field(None, description="Instances the agent runs")
    conditions: list[Condition] | None = None


# --- AosServiceInstance -----------------------------------------------------------------------------


class InstanceImage(_Schema):
    reference: str = Field(description="Package to pull, repository@sha256:...")
    digest: str = Field(description="Manifest digest")
    architecture: str | None = None


class InstanceReservation(_Schema):
    cpuDmips: int = Field(0, ge=0, description="DMIPS reserved on the device")
    ramBytes: int = Field(0, ge=0, description="Memory reserved on the device, bytes")
    devices: list[str] | None = Field(None, description="Host devices it holds a share of")


class AosServiceInstanceSpec(_Schema):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.service == oldSelf.service", "message": "service is immutable"},
                {"rule": "self.device == oldSelf.device", "message": "device is immutable"},
                {"rule": "self.index == oldSelf.index", "message": "index is immutable"},
            ]
        }
    )

    service: str = Field(description="Name of the owning AosService")
    device: str = Field(description="Name of the AosDevice that runs the instance")
    index: int = Field(ge=0, description="Instance index (AOS_INSTANCE_INDEX)")
    serviceId: str = Field(description="AOS_SERVICE_ID")
    subject: str = Field(description="AOS_SUBJECT_ID")
    instanceId: str = Field(description="AOS_INSTANCE_ID, deterministic from service, subject and index")
    version: str | None = Field(None, description="Service version")
    image: InstanceImage = Field(description="The package the agent pulls by digest")
    reserved: InstanceReservation | None = Field(
        None, description="What placement reserved on the device for this instance (none with skipResourceLimits)")


class InstancePhase(str, Enum):
    pending = "Pending"
    pulling = "Pulling"
    starting = "Starting"
    running = "Running"
    failed = "Failed"
    stopped = "Stopped"


class AosServiceInstanceStatus(_Schema):
    phase: InstancePhase | None = Field(None, description="Pending, Pulling, Starting, Running, Failed or Stopped")
    reason: str | None = Field(None, description="Why, e.g. OOMKilled, CrashLoop, PullFailed")
    message: str | None = None
    exitCode: int | None = Field(None, description="Exit code of the last run")
    restarts: int | None = Field(None, description="Restarts by the restart policy")
    startTime: datetime | None = Field(None, description="When the current run started")
    imageDigest: str | None = Field(None, description="The package digest the agent runs")
    cpuMillicores: int | None = Field(None, description="CPU use, thousandths of a core")
    ramBytes: int | None = Field(None, description="Memory use in bytes")
    ip: str | None = Field(None, description="The instance's address on its provider network (none without a network)")
    conditions: list[Condition] | None = Field(
        None, description="QuotaAlert: True while an alert rule of the service is over its threshold")
    observedGeneration: int | None = None
    lastUpdate: datetime | None = None


# --- AosLayer -------------------------------------------------------------------------------------


class AosLayerSpec(_Schema):
    """An Aos layer: files that services listing its uid in `layers` get under their own layer."""

    uid: str = Field(
        min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The layer's UID, as services name it in their config's layers[].uid",
    )
    version: str = Field(
        min_length=1, max_length=128, description="SemVer 2.0.0 version, matched against layers[].minVersion/maxVersion"
    )
    source: AosServiceSource = Field(
        description="The layer's files: ConfigMaps mapped to paths, or the first layer of an existing OCI image"
    )


class AosLayerStatus(_Schema):
    observedGeneration: int | None = Field(None, description="The generation the status describes")
    conditions: list[Condition] | None = None
    uid: str | None = Field(None, description="The uid the pushed layer carries")
    version: str | None = Field(None, description="The version the pushed layer carries")
    ref: str | None = Field(None, description="Where the layer was pushed, repository:tag@manifest digest")
    digest: str | None = Field(None, description="Digest of the layer blob (gzip tar), what service manifests list")
    diffId: str | None = Field(None, description="Digest of the uncompressed tar (image config rootfs.diff_ids)")
    size: int | None = Field(None, description="Size of the layer blob in bytes")
    uncompressedSize: int | None = Field(None, description="Size of the uncompressed tar, when the operator built it")
    sourceDigest: str | None = Field(None, description="Content digest of the spec and files the layer was built from")


# --- resource catalogue ---------------------------------------------------------------------------


class Kind(BaseModel):
    """What the CRD generator and the clients need to know about one kind."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    namespaced: bool
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    printer_columns: tuple[dict[str, Any], ...]
    categories: tuple[str, ...] = ("aosedge",)


def _condition_column(name: str, condition: str, field: str = "status", priority: int = 0) -> dict[str, Any]:
    column = {"name": name, "type": "string", "jsonPath": f'.status.conditions[?(@.type=="{condition}")].{field}'}
    if priority:
        column["priority"] = priority
    return column


AOS_SERVICE = Kind(
    kind="AosService",
    plural="aosservices",
    singular="aosservice",
    short_names=("aossvc",),
    namespaced=True,
    spec=AosServiceSpec,
    status=AosServiceStatus,
    description="An AosEdge service that should run on the devices its selector picks",
    printer_columns=(
        {"name": "Ready", "type": "string", "jsonPath": ".status.readyRatio", "description": "Ready/desired"},
        {"name": "Up-To-Date", "type": "integer", "jsonPath": ".status.updated", "description": "Current image"},
        {"name": "Digest", "type": "string", "jsonPath": ".status.image.digest"},
        {"name": "Revision", "type": "integer", "jsonPath": ".status.rollout.revision"},
        {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase"},
        {"name": "Devices", "type": "string", "jsonPath": ".status.rollout.progress", "description": "Updated/total"},
        _condition_column("Status", "Ready", "reason"),
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        _condition_column("Message", "Ready", "message", priority=1),
    ),
)
AOS_DEVICE = Kind(
    kind="AosDevice",
    plural="aosdevices",
    singular="aosdevice",
    short_names=("aosdev",),
    namespaced=False,
    spec=AosDeviceSpec,
    status=AosDeviceStatus,
    description="An edge device (one per node with an agent), registered and heart-beaten by its agent",
    printer_columns=(
        _condition_column("Ready", "Ready"),
        {"name": "Arch", "type": "string", "jsonPath": ".status.architecture"},
        {"name": "Cores", "type": "integer", "jsonPath": ".status.cpuCores"},
        {"name": "DMIPS", "type": "integer", "jsonPath": ".status.dmips"},
        {"name": "Instances", "type": "integer", "jsonPath": ".status.instances"},
        {"name": "Reported", "type": "date", "jsonPath": ".status.lastHeartbeat"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)


def device_ready(body: Mapping[str, Any]) -> bool:
    """Whether an AosDevice (as the API returns it) has Ready=True: what placement, the agent and
    the liveness check look at."""
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


AOS_SERVICE_INSTANCE = Kind(
    kind="AosServiceInstance",
    plural="aosserviceinstances",
    singular="aosserviceinstance",
    short_names=("aosinst",),
    namespaced=True,
    spec=AosServiceInstanceSpec,
    status=AosServiceInstanceStatus,
    description="One instance of an AosService on one device, like a Pod of a Deployment",
    printer_columns=(
        {"name": "Service", "type": "string", "jsonPath": ".spec.service"},
        {"name": "Device", "type": "string", "jsonPath": ".spec.device"},
        {"name": "Index", "type": "integer", "jsonPath": ".spec.index"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "IP", "type": "string", "jsonPath": ".status.ip", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)
AOS_LAYER = Kind(
    kind="AosLayer",
    plural="aoslayers",
    singular="aoslayer",
    short_names=("aoslayer", "aoslyr"),
    namespaced=True,
    spec=AosLayerSpec,
    status=AosLayerStatus,
    description="An Aos layer (uid, version, files) that AosServices in the namespace list in their layers",
    printer_columns=(
        {"name": "UID", "type": "string", "jsonPath": ".spec.uid"},
        {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
        {"name": "Digest", "type": "string", "jsonPath": ".status.digest"},
        {"name": "Size", "type": "integer", "jsonPath": ".status.size"},
        _condition_column("Status", "Ready", "reason"),
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        _condition_column("Message", "Ready", "message", priority=1),
    ),
)
KINDS = (AOS_SERVICE, AOS_DEVICE, AOS_SERVICE_INSTANCE, AOS_LAYER)
