"""The OCI runtime spec of one service instance, as AosEdge's service manager builds it
(reference §3.1-3.6), plus this project's hardening. Pure: no I/O, no clock, no randomness; the
caller passes every fact about the node and every path it chose.

Order of application follows AosEdge: runc's example spec, instance overrides (user, cgroup,
root, host binds, Aos env), image config (args, cwd, env), service config (hostname, sysctl,
quotas), then per-instance env overrides, which win over everything.

Network: the instance joins the named network namespace the runtime set up for it through CNI
(`runtime/network/`), as AosEdge does; with the network turned off, runc's default: a new
namespace with loopback only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aos_operator import values
from aos_operator.errors import PackageError
from aos_operator.runtime.devices import NONE as NO_GRANTS
from aos_operator.runtime.devices import HostGrants, apply_grants
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.seccomp import default_seccomp_profile
from aos_operator.runtime.service_config import ImageConfig, ServiceConfig

CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
# Without a measured figure, one core counts as 10 000 DMIPS: the ratio of AosEdge's own worked
# example (4 cores, maxDmips 40 000) and the order of a current application core (a Cortex-A72
# at 2 GHz is ~9 400 DMIPS, an x86 core several times more). So cpuDmipsLimit 10 000 = one core.
DEFAULT_DMIPS_PER_CORE = 10_000

# The runtime-spec version AosEdge's service managers write; runc 1.1.5 accepts it (it checks
# only the major version).
OCI_VERSION = "1.2.0"

_EXAMPLE_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


@dataclass(frozen=True)
class NodeFacts:
    """What the spec needs to know about the node it runs on."""

    cores: int
    dmips: int
    architecture: str = "amd64"
    cgroup_version: int = 1
    swap_accounting: bool = True  # memory+swap can be limited (v1 memory.memsw.*, v2 memory.swap.max)
    open_files_max: int = 1 << 20  # the largest RLIMIT_NOFILE runc can set (fs.nr_open; the kernel's default)
    processes_max: int = values.LARGEST_LIMIT  # the largest RLIMIT_NPROC runc can set (none with CAP_SYS_RESOURCE)

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"node facts: cores must be >= 1, got {self.cores}")
        if self.dmips < 1:
            raise ValueError(f"node facts: dmips must be >= 1, got {self.dmips}")
        if self.cgroup_version not in (1, 2):
            raise ValueError(f"node facts: cgroup_version must be 1 or 2, got {self.cgroup_version}")


@dataclass(frozen=True)
class InstanceSetup:
    """What the runtime decided for one instance: ids, paths and options."""

    identity: InstanceIdentity
    uid: int
    gid: int
    rootfs: str
    cgroups_path: str
    storage_source: str | None = None  # host dir bound at /storage
    state_source: str | None = None  # host file bound at /state.dat
    host_binds: Sequence[str] = ()  # host paths bound read-only at the same place (AosEdge: nsswitch, ssl)
    env_overrides: Sequence[str] = ()  # merged last, like AosEdge's OverrideEnvVars
    seccomp: bool = True
    network_namespace: str | None = None  # the instance's named netns; None: a new one, loopback only
    grants: HostGrants = NO_GRANTS  # host devices and resources from the node config (runtime/devices.py)
    secret: str | None = None  # AOS_SECRET: the instance's permission secret (permission_server.py)


def runc_example_spec() -> dict[str, Any]:
    """`runc spec` of runc 1.1.5 (Debian 12), the base AosEdge starts from (reference §3.1)."""
    namespaces = ["pid", "network", "ipc", "uts", "mount"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {kind: list(_EXAMPLE_CAPABILITIES)
                             for kind in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in namespaces],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def env_name(entry: str) -> str:
    return entry.split("=", 1)[0].strip()


def merge_env(base: Iterable[str], additions: Iterable[str]) -> list[str]:
    """AosEdge's merge rule: a variable already present is replaced in place, a new one appended."""
    merged = list(base)
    position = {env_name(entry): i for i, entry in enumerate(merged)}
    for entry in additions:
        name = env_name(entry)
        if name in position:
            merged[position[name]] = entry
        else:
            position[name] = len(merged)
            merged.append(entry)
    return merged


def aos_env(identity: InstanceIdentity) -> list[str]:
    return [
        f"AOS_SERVICE_ID={identity.service_id}",
        f"AOS_SUBJECT_ID={identity.subject_id}",
        f"AOS_INSTANCE_INDEX={identity.index}",
        f"AOS_INSTANCE_ID={identity.instance_id}",
    ]


def cpu_quota_us(service: ServiceConfig, node: NodeFacts) -> int | None:
    """CFS quota per 100 ms period (reference §3.4), or None when the service sets no CPU limit."""
    quotas = service.quotas
    if quotas.cpu_dmips_limit:
        quota = quotas.cpu_dmips_limit * CPU_PERIOD_US * node.cores // node.dmips
    elif quotas.cpu_percent_limit:  # the legacy percent form of AosEdge's Go SM (2023)
        quota = CPU_PERIOD_US * quotas.cpu_percent_limit * node.cores // 100
    else:
        return None
    # more than every core of the node limits nothing; beyond, the kernel and runc refuse the number
    return min(max(MIN_CPU_QUOTA_US, quota), CPU_PERIOD_US * node.cores)


def _set_rlimit(process: dict[str, Any], kind: str, value: int) -> None:
    rlimits = [rlimit for rlimit in process.get("rlimits", []) if rlimit["type"] != kind]
    rlimits.append({"type": kind, "hard": value, "soft": value})
    process["rlimits"] = rlimits


def _add_mount(spec: dict[str, Any], mount: Mapping[str, Any]) -> None:
    """Add a mount; one with the same destination is replaced, as AosEdge does for resources."""
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != mount["destination"]] + [dict(mount)]


def _apply_limits(spec: dict[str, Any], service: ServiceConfig, node: NodeFacts) -> None:
    quotas = service.quotas
    resources = spec["linux"]["resources"]
    process = spec["process"]
    quota = cpu_quota_us(service, node)
    if quota is not None:
        resources["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
    if quotas.ram_limit:
        memory: dict[str, int] = {"limit": quotas.ram_limit}
        if node.swap_accounting:
            memory["swap"] = quotas.ram_limit  # OCI swap = memory+swap: no swap on top of the limit
        resources["memory"] = memory
    if quotas.pids_limit:
        resources["pids"] = {"limit": quotas.pids_limit}
        _set_rlimit(process, "RLIMIT_NPROC", quotas.pids_limit)
    if quotas.no_file_limit:
        _set_rlimit(process, "RLIMIT_NOFILE", quotas.no_file_limit)


def _tmp_mount(service: ServiceConfig) -> dict[str, Any] | None:
    if not service.quotas.tmp_limit:
        return None
    options = ["nosuid", "strictatime", "mode=1777", f"size={service.quotas.tmp_limit}"]
    return {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": options}


def check_inputs(image: ImageConfig, service: ServiceConfig, setup: InstanceSetup) -> None:
    """Defence in depth: the values the parsers already refused, refused again where they would
    enter the spec (a spec can be built from configs that never went through the parsers)."""
    problems = [
        values.working_dir_problem(image.working_dir) if image.working_dir else None,
        *(values.env_entry_problem(entry) for entry in image.env),
        *(values.env_entry_problem(entry, from_service=False) for entry in setup.env_overrides),
        *(values.env_entry_problem(entry) for entry in setup.grants.env),
        values.hostname_problem(service.hostname) if service.hostname else None,
        *(values.sysctl_problem(key, value) for key, value in service.sysctl.items()),
    ]
    if problem := values.first_problem(problems):
        raise PackageError(f"runtime spec of instance {setup.identity.instance_id}: {problem}")


def check_fits_node(service: ServiceConfig, instance_id: str, node: NodeFacts) -> None:
    """Limits the parsers cannot judge without the node, refused before runc fails on them."""
    quotas = service.quotas
    for field, value, most, what in (("noFileLimit", quotas.no_file_limit, node.open_files_max, "open files"),
                                     ("pidsLimit", quotas.pids_limit, node.processes_max, "processes")):
        if value and value > most:
            raise PackageError(
                f"runtime spec of instance {instance_id}: quotas.{field} {value} is above the most "
                f"{what} runc can allow a container on this node ({most}: fs.nr_open for open files, and without "
                "CAP_SYS_RESOURCE the runtime's own hard limit); lower it, or raise the node's limit")


def join_network_namespace(spec: dict[str, Any], path: str) -> None:
    """Make the spec's container join the named network namespace at `path` instead of a new one."""
    for namespace in spec["linux"]["namespaces"]:
        if namespace["type"] == "network":
            namespace["path"] = path


def build_runtime_spec(image: ImageConfig, service: ServiceConfig, setup: InstanceSetup,
                       node: NodeFacts) -> dict[str, Any]:
    """The `config.json` runc runs for this instance."""
    check_inputs(image, service, setup)
    check_fits_node(service, setup.identity.instance_id, node)
    spec = runc_example_spec()
    spec["ociVersion"] = OCI_VERSION
    process = spec["process"]
    linux = spec["linux"]

    # instance overrides (§3.2)
    process["terminal"] = False
    process["user"] = {"uid": setup.uid, "gid": setup.gid}
    # Hardening: runc 1.1.5's example also grants the three capabilities as ambient ones, which a
    # non-root process would keep; AosEdge's base (newer runc's example) has none, nor do we.
    del process["capabilities"]["ambient"]
    process["noNewPrivileges"] = True
    linux["cgroupsPath"] = setup.cgroups_path
    spec["root"] = {"path": setup.rootfs, "readonly": False}  # the overlay itself is read-only
    for host_path in setup.host_binds:
        _add_mount(spec, {"destination": host_path, "type": "bind", "source": host_path,
                          "options": ["rbind", "ro", "nosuid", "nodev"]})
    if setup.state_source:
        _add_mount(spec, {"destination": "/state.dat", "type": "bind", "source": setup.state_source,
                          "options": ["bind", "rw", "nosuid", "nodev"]})
    if setup.storage_source:
        _add_mount(spec, {"destination": "/storage", "type": "bind", "source": setup.storage_source,
                          "options": ["bind", "rw", "nosuid", "nodev"]})
    env = merge_env(process["env"], aos_env(setup.identity))
    if setup.secret:  # AosEdge's SM adds it beside the identity when the service has permissions
        env = merge_env(env, [f"AOS_SECRET={setup.secret}"])

    # image config (§3.3)
    process["args"] = list(image.args)
    process["cwd"] = image.working_dir or "/"
    env = merge_env(env, image.env)
    env = merge_env(env, setup.grants.env)  # resource env after the image's, as AosEdge's setResources

    # service config (§3.4)
    if service.hostname:
        spec["hostname"] = service.hostname
    if service.sysctl:
        linux["sysctl"] = dict(service.sysctl)
    # skipResourceLimits only changes what the cloud reserves when it places instances; an
    # AosEdge device applies every quota anyway (reference §10), and so do we.
    _apply_limits(spec, service, node)
    tmp = _tmp_mount(service)
    if tmp:
        _add_mount(spec, tmp)
    apply_grants(spec, setup.grants, _add_mount)  # devices, devices cgroup, additionalGids, resource mounts

    process["env"] = merge_env(env, setup.env_overrides)  # overrides win (§3.6)
    if setup.network_namespace:
        join_network_namespace(spec, setup.network_namespace)
    # A cgroup namespace on v1 and v2 nodes alike, as AosEdge's C++ service manager does.
    linux["namespaces"].append({"type": "cgroup"})
    if setup.seccomp:
        linux["seccomp"] = default_seccomp_profile(node.architecture)
    return spec


def _mib(value: int) -> str:
    return f"{value} bytes ({value / 1048576:.1f} MiB)"


def applied_limits(spec: Mapping[str, Any], service: ServiceConfig, node: NodeFacts) -> list[tuple[str, str]]:
    """(limit, how it is enforced) pairs for people: what the spec and the volumes will enforce."""
    resources = spec.get("linux", {}).get("resources", {})
    rlimits = {rlimit["type"]: rlimit["hard"] for rlimit in spec.get("process", {}).get("rlimits", [])}
    lines: list[tuple[str, str]] = []
    if "cpu" in resources:
        cpu = resources["cpu"]
        share = cpu["quota"] / cpu["period"]
        lines.append(("cpu", f"CFS quota {cpu['quota']} us per {cpu['period']} us = {share:.2f} CPU "
                             f"(cpuDmipsLimit {service.quotas.cpu_dmips_limit or '-'} of node {node.dmips} DMIPS "
                             f"on {node.cores} cores)"))
    if "memory" in resources:
        memory = resources["memory"]
        swap = ", swap included" if "swap" in memory else ""
        lines.append(("memory", f"{_mib(memory['limit'])}{swap}"))
    if "pids" in resources:
        lines.append(("pids", f"{resources['pids']['limit']} (pids cgroup and RLIMIT_NPROC)"))
    lines.append(("open files", f"RLIMIT_NOFILE {rlimits.get('RLIMIT_NOFILE', '-')}"))
    for mount in spec.get("mounts", []):
        if mount["destination"] == "/tmp":
            size = next((o.split("=", 1)[1] for o in mount.get("options", []) if o.startswith("size=")), None)
            lines.append(("/tmp", f"tmpfs of {_mib(int(size))}" if size else "tmpfs, no size limit"))
    if service.quotas.storage_limit:
        lines.append(("/storage", f"ext4 image of {_mib(service.quotas.storage_limit)} usable"))
    if service.quotas.state_limit:
        lines.append(("/state.dat", f"ext4 image of {_mib(service.quotas.state_limit)} usable"))
    return lines
