"""The two JSON documents an AosEdge device reads from a package: the OCI image config and the
Aos service config (`aosService` blob), generated from a ServiceDescription.

Key names and units follow what AosEdge's service managers parse (reference §2.3, §2.4): the
whole argv goes in `Cmd` with no `Entrypoint`, quotas are integers in bytes, DMIPS and kbit/s,
durations are ISO 8601 with integer components.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aos_operator import values
from aos_operator.errors import BuildError
from aos_operator.service.description import Image, ServiceDescription

DEFAULT_AUTHOR = "aos-operator"

_QUOTA_KEYS = (
    ("cpu_dmips", "cpuDmipsLimit"),
    ("ram", "ramLimit"),
    ("pids", "pidsLimit"),
    ("no_file", "noFileLimit"),
    ("tmp", "tmpLimit"),
    ("state", "stateLimit"),
    ("storage", "storageLimit"),
    ("upload_speed_kbits", "uploadSpeed"),
    ("download_speed_kbits", "downloadSpeed"),
    ("upload_bytes", "uploadLimit"),
    ("download_bytes", "downloadLimit"),
)


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(service: ServiceDescription, image: Image) -> dict[str, Any]:
    """The OCI image config without `rootfs` and `created`, which the image build fills in."""
    _refuse_unsafe_image(image)
    config: dict[str, Any] = {"Cmd": list(image.command)}
    if image.working_dir:
        config["WorkingDir"] = image.working_dir
    if image.env:
        config["Env"] = list(image.env)
    if service.exposed_ports:
        config["ExposedPorts"] = {port: {} for port in service.exposed_ports}
    document: dict[str, Any] = {
        "architecture": image.platform.architecture,
        "os": image.platform.os,
        "config": config,
    }
    if image.platform.variant:
        document["variant"] = image.platform.variant
    if service.author:
        document["author"] = service.author
    return document


def _refuse_unsafe_image(image: Image) -> None:
    # A description can be made without the validator (the operator, tests): check again what the
    # device would otherwise have to refuse.
    problem = values.first_problem([
        values.working_dir_problem(image.working_dir) if image.working_dir else None,
        *(values.env_entry_problem(entry) for entry in image.env if "=" in entry),
    ])
    if problem:
        raise BuildError(f"image {image.platform.label()}: {problem}", hint="fix the config.yaml and validate it")


def _refuse_unsafe_service(service: ServiceDescription) -> None:
    problem = values.first_problem([
        values.hostname_problem(service.hostname) if service.hostname else None,
        *(values.sysctl_problem(key, value) for key, value in service.sysctl.items()),
    ])
    if problem:
        raise BuildError(f"service config: {problem}", hint="fix the config.yaml and validate it")


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _alert_rules(service: ServiceDescription) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    partitions = []
    for name, rule in service.alert_rules.items():
        body = _drop_none(
            {"minTimeout": rule.min_timeout, "minThreshold": rule.min_threshold, "maxThreshold": rule.max_threshold}
        )
        if name in ("storage", "state"):
            partitions.append({"name": name, **body})
        else:
            rules[name] = body
    if partitions:
        rules["partitions"] = partitions
    return rules


def service_config(service: ServiceDescription, *, created_epoch: int = 0) -> dict[str, Any]:
    """The Aos service config; keys without a value are left out, as the devices treat absence as default."""
    _refuse_unsafe_service(service)
    quotas = {key: getattr(service.quotas, field) for field, key in _QUOTA_KEYS}
    document: dict[str, Any] = {
        "created": rfc3339(created_epoch),
        "author": service.author or service.company or DEFAULT_AUTHOR,
        "skipResourceLimits": service.skip_resource_limits,
        "balancingPolicy": service.balancing_policy,
        "runners": list(service.runners),
        "quotas": _drop_none(quotas),
    }
    if service.hostname:
        document["hostname"] = service.hostname
    if service.run_parameters:
        run = service.run_parameters
        parameters = _drop_none(
            {"startInterval": run.start_interval, "startBurst": run.start_burst, "restartInterval": run.restart_interval}
        )
        if parameters:
            document["runParameters"] = parameters
    if service.sysctl:
        document["sysctl"] = dict(service.sysctl)
    if service.offline_ttl:
        document["offlineTTL"] = service.offline_ttl
    if service.requested_resources:
        requested = service.requested_resources
        resources = _drop_none(
            {"cpu": requested.cpu_dmips, "ram": requested.ram, "storage": requested.storage, "state": requested.state}
        )
        if resources:
            document["requestedResources"] = resources
    if service.allowed_connections:
        document["allowedConnections"] = {connection: {} for connection in service.allowed_connections}
    if service.devices:
        document["devices"] = [{"name": device.name, "permissions": device.permissions} for device in service.devices]
    if service.resources:
        document["resources"] = list(service.resources)
    if service.permissions:
        document["permissions"] = {server: dict(functions) for server, functions in service.permissions.items()}
    alert_rules = _alert_rules(service)
    if alert_rules:
        document["alertRules"] = alert_rules
    return document
