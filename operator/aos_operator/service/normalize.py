"""From a validated config model (either dialect) to ServiceDescription, with the cross-field rules.

The rules that involve several fields (the memory floor of runc, resource limits that only
pre-release versions may skip, signing credentials, layer ranges) are checked here, so every
issue still carries the path of the field it is about.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from aos_operator.service import config_v1 as v1
from aos_operator.service import config_v2 as v2
from aos_operator.service import description as d
from aos_operator import values
from aos_operator.service import units
from aos_operator.service.report import Reporter
from aos_operator.service.yamlfile import Path, render_path

# aos-signer's floor for RAM quotas under runc and crun (moby/moby#41168), in bytes.
MEMORY_LIMIT_MIN = 6_000_000

# config.yaml architecture names -> OCI (GOARCH) names and variants.
ARCHITECTURES: dict[str, tuple[str, str | None]] = {
    "amd64": ("amd64", None),
    "x86_64": ("amd64", None),
    "x86": ("amd64", None),  # AosEdge's demo services say x86 for 64-bit x86 units
    "arm64": ("arm64", None),
    "aarch64": ("arm64", None),
    "arm": ("arm", None),
    "armhf": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv7l": ("arm", "v7"),
    "386": ("386", None),
    "i386": ("386", None),
    "i686": ("386", None),
    "riscv64": ("riscv64", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
}


def platform_of(os_name: str, architecture: str, variant: str | None, report: Reporter, os_path: Path,
                arch_path: Path) -> d.Platform:
    """The OCI platform; an unknown architecture is an error at its own key (a package for a
    platform no device has would be built, and run on the wrong one)."""
    if os_name.lower() != "linux":
        report.error(os_path, f"{os_name!r} is not supported: AosEdge devices run linux services only")
    known = ARCHITECTURES.get(architecture.lower())
    if known is None:
        close = difflib.get_close_matches(architecture.lower(), list(ARCHITECTURES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        report.error(arch_path, f"unknown architecture {architecture!r}{hint}; known: {', '.join(sorted(ARCHITECTURES))}")
        return d.Platform(architecture=architecture.lower(), variant=variant)
    return d.Platform(architecture=known[0], variant=variant or known[1])


def split_command(command: str | Sequence[str] | None, report: Reporter, path: Path) -> tuple[str, ...]:
    if command is None:
        report.warning(path, "no cmd: the service has nothing to run")
        return ()
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as error:
            report.error(path, f"cannot split the command like a shell does ({error}); check the quotes")
            return ()
    else:
        argv = list(command)
    if not argv:
        report.warning(path, "the command is empty: the service has nothing to run")
    return tuple(argv)


def check_source_folder(folder: str, report: Reporter, path: Path) -> bool:
    """A source folder is a relative path that stays inside the service directory (as written:
    the build checks the links on disk). False, with the error reported, when it is not."""
    problem = _folder_problem(folder)
    if problem is None:
        return True
    report.error(
        path,
        f"{folder!r} {problem}; a source folder is a relative path inside the service directory "
        "(the build reads no files outside it): move or copy the files there",
    )
    return False


def check_env(env: Sequence[str], report: Reporter, path: Path) -> tuple[str, ...]:
    for index, entry in enumerate(env):
        if "=" not in entry:
            report.warning(path + (index,), f"{entry!r} is not NAME=value; the device will set it as given")
        elif problem := values.env_entry_problem(entry):
            report.error(path + (index,), problem)
    return tuple(env)


def working_dir(value: str | None, report: Reporter, path: Path) -> str | None:
    if not value:
        return None
    if problem := values.working_dir_problem(value):
        report.error(path, problem)
    return value


def hostname(value: str | None, report: Reporter, path: Path) -> str | None:
    if not value:
        return None
    if problem := values.hostname_problem(value):
        report.error(path, problem)
    return value


def sysctls(settings: dict[str, str] | None, report: Reporter, path: Path) -> dict[str, str]:
    for key, value in (settings or {}).items():
        if problem := values.sysctl_problem(key, value):
            report.error(path + (key,), problem)
    return dict(settings or {})


# Quotas whose 0 has an AosEdge meaning: the speeds and daily traffic limits (0 = no limit, the
# bandwidth plugin and the traffic counter are left out) and storage/state (0 = no volume: the
# CM creates them only for a quota > 0). Any other 0 would be a real limit of nothing (no file can
# be opened, 1 ms of CPU per 100 ms, a tmpfs without size limit), so it is refused.
def nonzero(value: int | None, report: Reporter, path: Path) -> int | None:
    if value == 0:
        report.error(path, "0 is not a usable limit (on a device it means none of this resource, or no limit "
                           "at all); give a value above 0, or remove the key for no limit")
    return value


def zero_means_none(value: int | None, report: Reporter, path: Path, what: str) -> int | None:
    if value == 0:
        report.warning(path, f"0 means {what} (as on AosEdge devices); remove the key to say so")
        return None
    return value


def iso(text: str | None, report: Reporter, path: Path) -> str | None:
    if not text:
        return None
    duration, rounded = units.parse_iso_duration(text)
    if rounded:
        report.warning(path, f"{text!r}: AosEdge devices count whole seconds; rounded up to {duration.iso()}")
    return duration.iso()


def iso_from_timedelta(value: timedelta | None, report: Reporter, path: Path) -> str | None:
    if value is None:
        return None
    try:
        duration, rounded = units.duration_from_timedelta(value)
    except ValueError as error:
        report.error(path, str(error))
        return None
    if rounded:
        report.warning(path, f"AosEdge devices count whole seconds; rounded up to {duration.iso()}")
    return duration.iso()


def _size(value: Any, dialect: int, report: Reporter, path: Path) -> int | None:
    if value is None:
        return None
    if units.is_blank_size(value):
        report.warning(path, "an empty size means no value; remove the key or give a size")
        return None
    return units.parse_size(value, dialect=dialect)


def _speed_kbits(value: Any, dialect: int, report: Reporter, path: Path) -> int | None:
    if value is None:
        return None
    if units.is_blank_size(value):
        report.warning(path, "an empty speed means no value; remove the key or give a speed")
        return None
    return units.bits_to_kbits(units.parse_speed(value, dialect=dialect))


def check_prerelease_for_skip(version: str, report: Reporter, path: Path, key: str) -> None:
    if not units.parse_semver(version).prerelease:
        report.error(
            path,
            f"{key} needs a pre-release version (such as 1.0.0-dev), because released versions must run "
            f"with their limits; the version is {version!r}",
        )


def check_memory_floor(ram: int | None, runner: str | None, report: Reporter, path: Path) -> None:
    # aos-signer applies the floor when the legacy `runner` is unset, runc or crun (not "").
    if ram is not None and runner in (None, "runc", "crun") and ram < MEMORY_LIMIT_MIN:
        report.error(path, f"{ram} bytes is below the {MEMORY_LIMIT_MIN} bytes (6M) that runc and crun need")


def layer_requirements(layers: Sequence[Any], report: Reporter, path: Path) -> tuple[d.LayerRequirement, ...]:
    result: list[d.LayerRequirement] = []
    seen: set[str] = set()
    for index, layer in enumerate(layers):
        where = path + (index,)
        if isinstance(layer, str):
            report.warning(where, f"legacy form: write `- uid: {layer}` (aos-signer 1.17 and later refuse plain strings)")
            requirement = d.LayerRequirement(uid=layer)
        else:
            requirement = d.LayerRequirement(uid=layer.uid, min_version=layer.minVersion, max_version=layer.maxVersion)
        if requirement.uid in seen:
            report.error(where, f"layer {requirement.uid!r} is listed twice; list each layer once")
        seen.add(requirement.uid)
        low, high = requirement.min_version, requirement.max_version
        if low and high and units.parse_semver(low).sort_key() > units.parse_semver(high).sort_key():
            report.error(where, f"minVersion {low} is above maxVersion {high}")
        result.append(requirement)
    return tuple(result)


def run_parameters(run: Any, to_iso: Any, report: Reporter, path: Path) -> d.RunParameters | None:
    """runParameters of either dialect; `to_iso` turns the dialect's duration into ISO 8601."""
    if run is None:
        return None
    return d.RunParameters(
        start_interval=to_iso(run.startInterval, report, path + ("startInterval",)),
        start_burst=run.startBurst,
        restart_interval=to_iso(run.restartInterval, report, path + ("restartInterval",)),
    )


def requested_resources(requested: Any, ram: int | None, dialect: int, report: Reporter, path: Path) -> d.RequestedResources | None:
    if requested is None:
        return None
    return d.RequestedResources(
        cpu_dmips=requested.cpu,
        ram=ram,
        storage=_size(requested.storage, dialect, report, path + ("storage",)),
        state=_size(requested.state, dialect, report, path + ("state",)),
    )


# --- schema version 1 ---------------------------------------------------------------------------

_V1_ALERTS = {
    "ram": "ram",
    "mem": "ram",
    "cpu": "cpu",
    "storage": "storage",
    "state": "state",
    "upload": "upload",
    "upload_speed": "upload",
    "download": "download",
    "download_speed": "download",
}


def _v1_alerts(alerts: v1.Alerts | None, report: Reporter) -> dict[str, d.AlertRule]:
    rules: dict[str, d.AlertRule] = {}
    if alerts is None:
        return rules
    for key, rule in alerts:
        if rule is None:
            continue
        path = ("configuration", "alerts", key)
        target = _V1_ALERTS.get(key)
        if target is None:
            report.warning(path, f"AosEdge devices have no {key!r} alert; it is ignored")
            continue
        if target in rules:
            report.warning(path, f"a second rule for {target!r}; the first one is kept")
            continue
        rules[target] = d.AlertRule(
            min_timeout=iso(rule.minTime, report, path + ("minTime",)),
            min_threshold=rule.minThreshold,
            max_threshold=rule.maxThreshold,
        )
    return rules


def _v1_credentials(config: v1.ConfigV1, report: Reporter) -> None:
    build, publish = config.build, config.publish
    if not build.sign_pkcs12 and not (build.sign_key and build.sign_certificate):
        report.error(
            ("build",),
            "no signing credentials: set sign_pkcs12, or sign_key and sign_certificate "
            "(aos-signer needs them to sign the bundle; `aosctl validate --local` skips this check)",
        )
    if not publish.tls_pkcs12 and not (publish.tls_key and publish.tls_certificate):
        report.error(
            ("publish",),
            "no upload credentials: set tls_pkcs12, or tls_key and tls_certificate "
            "(aos-signer needs them to upload; `aosctl validate --local` skips this check)",
        )


def from_v1(config: v1.ConfigV1, report: Reporter, *, check_upload: bool) -> d.ServiceDescription:
    if check_upload:
        _v1_credentials(config, report)
    conf = config.configuration
    c = ("configuration",)
    if conf.isResourceLimits is False:
        check_prerelease_for_skip(config.publish.version, report, c + ("isResourceLimits",), "isResourceLimits: false")
    quotas = conf.quotas
    ram = _size(quotas.mem, 1, report, c + ("quotas", "mem")) if quotas else None
    check_memory_floor(ram, conf.runner, report, c + ("quotas", "mem"))
    requested = conf.requestedResources
    requested_ram = _size(requested.ram, 1, report, c + ("requestedResources", "ram")) if requested else None
    check_memory_floor(requested_ram, conf.runner, report, c + ("requestedResources", "ram"))
    if quotas and quotas.cpu is not None and quotas.cpu <= 100:
        report.warning(
            c + ("quotas", "cpu"),
            f"quotas.cpu is in DMIPS; {quotas.cpu} DMIPS is a sliver of a CPU. "
            "Old configs meant percent: for N percent of a node write N x node DMIPS / 100",
        )
    if conf.runners is not None:
        runners = tuple(str(runner) for runner in conf.runners)
        if conf.runner and conf.runner not in runners:
            report.warning(c + ("runner",), "ignored: `runners` is set and takes precedence")
    elif conf.runner:
        runners = (conf.runner,)
    else:
        runners = ("runc", "crun")

    check_source_folder(config.build.source_folder, report, ("build", "source_folder"))
    image = d.Image(
        platform=platform_of(config.build.os, config.build.arch, None, report, ("build", "os"), ("build", "arch")),
        source_folder=config.build.source_folder,
        source_key="build.source_folder",
        command=split_command(conf.cmd, report, c + ("cmd",)),
        working_dir=working_dir(conf.workingDir, report, c + ("workingDir",)),
        env=check_env(conf.env or [], report, c + ("env",)),
    )
    instances = conf.instances
    return d.ServiceDescription(
        dialect=1,
        service_id=config.publish.service_uid,
        version=config.publish.version,
        author=config.publisher.author if config.publisher else None,
        company=config.publisher.company if config.publisher else None,
        images=(image,),
        symlinks=config.build.symlinks,
        hostname=hostname(conf.hostname, report, c + ("hostname",)),
        exposed_ports=tuple(units.parse_exposed_port(port).key() for port in conf.exposedPorts or ()),
        state=d.StateFile(filename=conf.state.filename, required=conf.state.required) if conf.state else None,
        instances=d.Instances(
            min_instances=instances.minInstances if instances and instances.minInstances is not None else 1,
            priority=instances.priority if instances and instances.priority is not None else 0,
            labels=tuple(instances.labels or ()) if instances else (),
        ),
        run_parameters=run_parameters(conf.runParameters, iso, report, c + ("runParameters",)),
        runners=runners,
        offline_ttl=iso(conf.offlineTTL, report, c + ("offlineTTL",)),
        download_ttl=iso(conf.downloadTTL, report, c + ("downloadTTL",)),
        skip_resource_limits=conf.isResourceLimits is False,
        balancing_policy=conf.balancingPolicy or "enabled",
        quotas=d.Quotas(
            cpu_dmips=quotas.cpu,
            ram=ram if conf.runner in (None, "runc", "crun") else nonzero(ram, report, c + ("quotas", "mem")),
            tmp=nonzero(_size(quotas.temp, 1, report, c + ("quotas", "temp")), report, c + ("quotas", "temp")),
            state=zero_means_none(_size(quotas.state, 1, report, c + ("quotas", "state")), report,
                                  c + ("quotas", "state"), "no state file"),
            storage=zero_means_none(_size(quotas.storage, 1, report, c + ("quotas", "storage")), report,
                                    c + ("quotas", "storage"), "no /storage"),
            upload_speed_kbits=_speed_kbits(quotas.upload_speed, 1, report, c + ("quotas", "upload_speed")),
            download_speed_kbits=_speed_kbits(quotas.download_speed, 1, report, c + ("quotas", "download_speed")),
            upload_bytes=_size(quotas.upload, 1, report, c + ("quotas", "upload")),
            download_bytes=_size(quotas.download, 1, report, c + ("quotas", "download")),
        )
        if quotas
        else d.Quotas(),
        requested_resources=requested_resources(requested, requested_ram, 1, report, c + ("requestedResources",)),
        alert_rules=_v1_alerts(conf.alerts, report),
        allowed_connections=tuple(conf.allowedConnections or ()),
        devices=tuple(d.DeviceAccess(name=device.name, permissions=device.mode) for device in conf.devices or ()),
        resources=tuple(conf.resources or ()),
        permissions={server: dict(functions) for server, functions in (conf.permissions or {}).items()},
        layers=layer_requirements(conf.layers or (), report, c + ("layers",)),
    )


# --- schema version 2 ---------------------------------------------------------------------------


def item_source_folder(item: v2.Item, image: v2.Image) -> str | None:
    """aos-signer's rule for where an image's files are, relative to the bundle root."""
    architecture = image.archInfo.architecture
    if not any((item.sourceFolder, image.path, image.sourceFolder)):
        if not item.identity.codename:
            return None
        return f"{item.identity.codename}/{architecture}"
    inner = image.path or image.sourceFolder or architecture
    return f"{item.sourceFolder}/{inner}" if item.sourceFolder else inner


def _source_folder_key(item: v2.Item, image: v2.Image, base: Path, where: Path) -> Path:
    """The key a wrong source folder is blamed on: the first of the keys it is made of that is wrong."""
    candidates: list[tuple[str | None, Path]] = [
        (item.sourceFolder, base + ("sourceFolder",)),
        (image.path, where + ("path",)),
        (image.sourceFolder, where + ("sourceFolder",)),
    ]
    if not any(value for value, _ in candidates):
        candidates.append((item.identity.codename, base + ("identity", "codename")))
    candidates.append((image.archInfo.architecture, where + ("archInfo", "architecture")))
    for value, key in candidates:
        if value and not _folder_is_clean(value):
            return key
    return next((key for value, key in candidates if value), where)


def _folder_is_clean(folder: str) -> bool:
    return _folder_problem(folder) is None


def _folder_problem(folder: str) -> str | None:
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in folder):
        return "holds a control character"
    if folder.startswith("/"):
        return "is absolute"
    if ".." in folder.split("/"):
        return "has a `..` component"
    return None


def is_service_item(item: v2.Item) -> bool:
    return item.identity.type in (None, "service")


def _v2_alerts(rules: v2.AlertRules | None, report: Reporter, path: Path) -> dict[str, d.AlertRule]:
    result: dict[str, d.AlertRule] = {}
    if rules is None:
        return result
    for key in ("ram", "cpu", "storage", "upload", "download"):
        rule = getattr(rules, key)
        if rule is None:
            continue
        result[key] = d.AlertRule(
            min_timeout=iso_from_timedelta(rule.minTimeout, report, path + (key, "minTimeout")),
            min_threshold=rule.minThreshold,
            max_threshold=rule.maxThreshold,
        )
    return result


def from_v2_item(config: v2.ConfigV2, index: int, report: Reporter) -> d.ServiceDescription:
    item = config.items[index]
    base: Path = ("items", index)
    conf = item.configuration or v2.Configuration()
    c = base + ("configuration",)
    if conf.skipResourceLimits:
        check_prerelease_for_skip(item.version, report, c + ("skipResourceLimits",), "skipResourceLimits: true")
    images: list[d.Image] = []
    conf_working_dir = working_dir(conf.workingDir, report, c + ("workingDir",))
    seen_architectures: set[str] = set()
    for image_index, image in enumerate(item.images):
        where = base + ("images", image_index)
        folder = item_source_folder(item, image)
        if folder is None:
            report.error(where, "cannot tell where the image's files are: set sourceFolder, or identity.codename")
            folder = ""
        key = _source_folder_key(item, image, base, where)
        check_source_folder(folder, report, key)
        platform = platform_of(image.osInfo.os, image.archInfo.architecture, image.archInfo.variant, report,
                               where + ("osInfo", "os"), where + ("archInfo", "architecture"))
        if platform.label() in seen_architectures:
            report.error(where + ("archInfo",), f"a second image for {platform.label()}; one image per platform")
        seen_architectures.add(platform.label())
        env = list(check_env(conf.env or [], report, c + ("env",)) if image_index == 0 else conf.env or [])
        env += check_env(image.env or [], report, where + ("env",))
        image_working_dir = (working_dir(image.workingDir, report, where + ("workingDir",)) if image.workingDir
                             else conf_working_dir)
        images.append(
            d.Image(
                platform=platform,
                source_folder=folder,
                source_key=render_path(key),
                command=split_command(image.cmd if image.cmd is not None else conf.cmd, report, where + ("cmd",)),
                working_dir=image_working_dir,
                env=tuple(env),
            )
        )
    quotas = conf.quotas or v2.Quotas()
    q = c + ("quotas",)
    ram = _size(quotas.ramLimit, 2, report, q + ("ramLimit",))
    if ram and ram < MEMORY_LIMIT_MIN:
        report.warning(q + ("ramLimit",), f"{ram} bytes is below the {MEMORY_LIMIT_MIN} bytes runc needs to start")
    requested = conf.requestedResources
    instances = conf.instances or v2.Instances()
    runners = conf.runners
    if runners is None:
        runners = [runtime.codename for runtime in conf.runtimes if runtime.codename]
    return d.ServiceDescription(
        dialect=2,
        service_id=str(item.identity.id) if item.identity.id else None,
        name=item.identity.codename,
        title=item.identity.title,
        version=item.version,
        author=config.publisher.author if config.publisher else None,
        company=config.publisher.company if config.publisher else None,
        images=tuple(images),
        hostname=hostname(conf.hostname, report, c + ("hostname",)),
        exposed_ports=tuple(units.parse_exposed_port(port).key() for port in conf.exposedPorts or ()),
        state=d.StateFile(filename=conf.state.filename, required=conf.state.required) if conf.state else None,
        instances=d.Instances(
            min_instances=instances.minInstances, priority=instances.priority, labels=tuple(instances.labels or ())
        ),
        run_parameters=run_parameters(conf.runParameters, iso_from_timedelta, report, c + ("runParameters",)),
        runners=tuple(runners),
        offline_ttl=iso_from_timedelta(conf.offlineTTL, report, c + ("offlineTTL",)),
        download_ttl=iso_from_timedelta(conf.downloadTTL, report, c + ("downloadTTL",)),
        skip_resource_limits=conf.skipResourceLimits,
        balancing_policy=conf.balancingPolicy,
        base_layer_is_node_rootfs=conf.baseLayerIsNodeRootfs is not False,
        quotas=d.Quotas(
            cpu_dmips=nonzero(quotas.cpuLimit, report, q + ("cpuLimit",)),
            ram=nonzero(ram, report, q + ("ramLimit",)),
            pids=nonzero(quotas.pidsLimit, report, q + ("pidsLimit",)),
            no_file=nonzero(quotas.noFileLimit, report, q + ("noFileLimit",)),
            tmp=nonzero(_size(quotas.tmpLimit, 2, report, q + ("tmpLimit",)), report, q + ("tmpLimit",)),
            state=zero_means_none(_size(quotas.stateLimit, 2, report, q + ("stateLimit",)), report,
                                  q + ("stateLimit",), "no state file"),
            storage=zero_means_none(_size(quotas.storageLimit, 2, report, q + ("storageLimit",)), report,
                                    q + ("storageLimit",), "no /storage"),
            upload_speed_kbits=_speed_kbits(quotas.uploadSpeedLimit, 2, report, q + ("uploadSpeedLimit",)),
            download_speed_kbits=_speed_kbits(quotas.downloadSpeedLimit, 2, report, q + ("downloadSpeedLimit",)),
            upload_bytes=_size(quotas.uploadLimit, 2, report, q + ("uploadLimit",)),
            download_bytes=_size(quotas.downloadLimit, 2, report, q + ("downloadLimit",)),
        ),
        requested_resources=requested_resources(
            requested,
            _size(requested.ram, 2, report, c + ("requestedResources", "ram")) if requested else None,
            2,
            report,
            c + ("requestedResources",),
        ),
        alert_rules=_v2_alerts(conf.alertRules, report, c + ("alertRules",)),
        allowed_connections=tuple(conf.allowedConnections or ()),
        devices=tuple(d.DeviceAccess(name=device.name, permissions=device.mode) for device in conf.devices or ()),
        resources=tuple(resource.name for resource in conf.resources or ()),
        permissions={server: dict(functions) for server, functions in (conf.permissions or {}).items()},
        sysctl=sysctls(conf.sysctl, report, c + ("sysctl",)),
        layers=layer_requirements(conf.layers or (), report, c + ("layers",)),
        dependencies=tuple(
            d.Dependency(
                id=str(dep.identity.id) if dep.identity.id else None,
                codename=dep.identity.codename,
                type=dep.identity.type,
                versions=dep.versions,
                include_pre_release=dep.includePreRelease,
                condition=dep.condition,
            )
            for dep in item.dependencies or ()
        ),
    )
