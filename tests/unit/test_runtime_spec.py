"""The OCI runtime spec builder: AosEdge's conversion rules, the limits, the hardening."""

from __future__ import annotations

import ast
import copy
import hashlib
import uuid
from pathlib import Path

import pytest

import aos_operator.runtime.spec as spec_module
from aos_operator.errors import PackageError
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.service_config import ImageConfig, Quotas, ServiceConfig
from aos_operator.runtime.spec import (
    InstanceSetup,
    NodeFacts,
    applied_limits,
    build_runtime_spec,
    cpu_quota_us,
    merge_env,
)

IDENTITY = InstanceIdentity("svc-uid", "subject-1", 2)
NODE = NodeFacts(cores=2, dmips=20000)
IMAGE = ImageConfig(os="linux", architecture="amd64", entrypoint=("/usr/bin/python3",), cmd=("-u", "main.py"),
                    working_dir="/app", env=("PATH=/app/bin:/usr/bin", "GREETING=hi"))


def setup(**changes: object) -> InstanceSetup:
    values: dict[str, object] = {"identity": IDENTITY, "uid": 5001, "gid": 5002, "rootfs": "/run/x/rootfs",
                                 "cgroups_path": "/aos/x"}
    values.update(changes)
    return InstanceSetup(**values)  # type: ignore[arg-type]


def build(service: ServiceConfig | None = None, node: NodeFacts = NODE, **setup_changes: object) -> dict:
    return build_runtime_spec(IMAGE, service or ServiceConfig(), setup(**setup_changes), node)


def rlimit(spec: dict, kind: str) -> tuple[int, int] | None:
    found = [r for r in spec["process"]["rlimits"] if r["type"] == kind]
    assert len(found) <= 1
    return (found[0]["soft"], found[0]["hard"]) if found else None


def mount(spec: dict, destination: str) -> dict | None:
    found = [m for m in spec["mounts"] if m["destination"] == destination]
    assert len(found) <= 1
    return found[0] if found else None


def test_instance_id_is_uuid3_of_the_oid_namespace_computed_by_hand() -> None:
    # RFC 4122 §4.3: MD5(namespace bytes + name), version 3, variant 10xx
    digest = bytearray(hashlib.md5(uuid.NAMESPACE_OID.bytes + b"svc-uid:subject-1:2").digest())
    digest[6] = (digest[6] & 0x0F) | 0x30
    digest[8] = (digest[8] & 0x3F) | 0x80
    assert IDENTITY.instance_id == str(uuid.UUID(bytes=bytes(digest)))
    assert InstanceIdentity("svc-uid", "subject-1", 3).instance_id != IDENTITY.instance_id


@pytest.mark.parametrize("service_id, subject_id, index", [("", "s", 0), ("a", "b", -1), ("a\nb", "s", 0)])
def test_instance_identity_refuses_bad_values(service_id: str, subject_id: str, index: int) -> None:
    with pytest.raises(ValueError):
        InstanceIdentity(service_id, subject_id, index)


def test_process_comes_from_the_image_and_instance() -> None:
    spec = build()
    process = spec["process"]
    assert process["terminal"] is False
    assert process["args"] == ["/usr/bin/python3", "-u", "main.py"]  # Entrypoint + Cmd
    assert process["cwd"] == "/app"
    assert process["user"] == {"uid": 5001, "gid": 5002}
    assert spec["root"] == {"path": "/run/x/rootfs", "readonly": False}
    assert spec["linux"]["cgroupsPath"] == "/aos/x"
    assert spec["hostname"] == "runc"  # no hostname in the service config


def test_cwd_defaults_to_root() -> None:
    image = ImageConfig("linux", "amd64", (), ("/bin/true",), "", ())
    assert build_runtime_spec(image, ServiceConfig(), setup(), NODE)["process"]["cwd"] == "/"


def test_env_precedence_base_aos_image_overrides() -> None:
    spec = build(env_overrides=("GREETING=override", "AOS_SUBJECT_ID=forced", "EXTRA=1"))
    env = spec["process"]["env"]
    assert env == [
        "PATH=/app/bin:/usr/bin",  # image replaces the base PATH in place
        "TERM=xterm",
        "AOS_SERVICE_ID=svc-uid",
        "AOS_SUBJECT_ID=forced",  # overrides win over everything
        "AOS_INSTANCE_INDEX=2",
        f"AOS_INSTANCE_ID={IDENTITY.instance_id}",
        "GREETING=override",
        "EXTRA=1",
    ]


def test_merge_env_matches_names_before_the_first_equals_sign_trimmed() -> None:
    assert merge_env(["A=1", "B=2"], ["A =3", "C=x=y"]) == ["A =3", "B=2", "C=x=y"]


def test_hostname_and_sysctl() -> None:
    spec = build(ServiceConfig(hostname="svc-host", sysctl={"net.core.somaxconn": "256"}))
    assert spec["hostname"] == "svc-host"
    assert spec["linux"]["sysctl"] == {"net.core.somaxconn": "256"}


@pytest.mark.parametrize("cores, node_dmips, limit, expected", [
    (4, 40000, 5000, 50000),  # the reference's worked example: 0.5 CPU
    (2, 20000, 5000, 50000),
    (2, 20000, 20000, 200000),  # two whole cores
    (2, 20000, 50, 1000),  # never below the 1000 us floor
    (3, 10000, 3333, 99990),  # integer (truncating) arithmetic
    (2, 20000, 2**62, 200000),  # never above every core: beyond, runc refuses the number (int64)
])
def test_cpu_quota_formula(cores: int, node_dmips: int, limit: int, expected: int) -> None:
    node = NodeFacts(cores=cores, dmips=node_dmips)
    service = ServiceConfig(quotas=Quotas(cpu_dmips_limit=limit))
    assert cpu_quota_us(service, node) == expected
    assert build(service, node)["linux"]["resources"]["cpu"] == {"quota": expected, "period": 100000}


def test_cpu_legacy_percent_only_without_dmips() -> None:
    assert cpu_quota_us(ServiceConfig(quotas=Quotas(cpu_percent_limit=50)), NODE) == 100000
    both = ServiceConfig(quotas=Quotas(cpu_percent_limit=50, cpu_dmips_limit=5000))
    assert cpu_quota_us(both, NODE) == 50000
    assert cpu_quota_us(ServiceConfig(), NODE) is None


def test_memory_limit_includes_swap_where_the_kernel_can_limit_it() -> None:
    service = ServiceConfig(quotas=Quotas(ram_limit=64 << 20))
    assert build(service)["linux"]["resources"]["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    no_swap_node = NodeFacts(cores=2, dmips=20000, swap_accounting=False)
    assert build(service, no_swap_node)["linux"]["resources"]["memory"] == {"limit": 64 << 20}


def test_pids_limit_sets_cgroup_and_rlimit_nproc() -> None:
    spec = build(ServiceConfig(quotas=Quotas(pids_limit=32)))
    assert spec["linux"]["resources"]["pids"] == {"limit": 32}
    assert rlimit(spec, "RLIMIT_NPROC") == (32, 32)
    assert rlimit(build(), "RLIMIT_NPROC") is None  # no default pids limit


def test_nofile_replaces_the_default() -> None:
    assert rlimit(build(), "RLIMIT_NOFILE") == (1024, 1024)
    assert rlimit(build(ServiceConfig(quotas=Quotas(no_file_limit=200))), "RLIMIT_NOFILE") == (200, 200)
    small = NodeFacts(cores=2, dmips=20000, open_files_max=4096)
    assert rlimit(build(ServiceConfig(quotas=Quotas(no_file_limit=4096)), small), "RLIMIT_NOFILE") == (4096, 4096)
    with pytest.raises(PackageError, match=r"quotas.noFileLimit 4097 is above the most open files runc can allow a container on this node \(4096:"):
        build(ServiceConfig(quotas=Quotas(no_file_limit=4097)), small)
    few = NodeFacts(cores=2, dmips=20000, processes_max=500)
    assert rlimit(build(ServiceConfig(quotas=Quotas(pids_limit=500)), few), "RLIMIT_NPROC") == (500, 500)
    with pytest.raises(PackageError, match=r"quotas.pidsLimit 501 is above the most processes runc can allow"):
        build(ServiceConfig(quotas=Quotas(pids_limit=501)), few)


def test_tmp_is_a_tmpfs_of_tmp_limit_with_aosedge_options() -> None:
    assert mount(build(), "/tmp") is None
    tmp = mount(build(ServiceConfig(quotas=Quotas(tmp_limit=32768))), "/tmp")
    assert tmp == {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=1777", "size=32768"]}


def test_skip_resource_limits_still_applies_every_quota() -> None:
    # AosEdge devices ignore the flag: it only changes what the cloud reserves when placing.
    quotas = Quotas(cpu_dmips_limit=5000, ram_limit=1 << 26, pids_limit=10, no_file_limit=50, tmp_limit=4096)
    skipped = build(ServiceConfig(quotas=quotas, skip_resource_limits=True))
    limited = build(ServiceConfig(quotas=quotas))
    assert skipped == limited
    assert set(skipped["linux"]["resources"]) == {"devices", "cpu", "memory", "pids"}
    assert rlimit(skipped, "RLIMIT_NPROC") == (10, 10)
    assert rlimit(skipped, "RLIMIT_NOFILE") == (50, 50)
    assert mount(skipped, "/tmp")["options"] == ["nosuid", "strictatime", "mode=1777", "size=4096"]


def test_state_and_storage_binds() -> None:
    spec = build(storage_source="/run/v/storage/data", state_source="/run/v/state/state.dat")
    assert mount(spec, "/storage") == {"destination": "/storage", "type": "bind", "source": "/run/v/storage/data",
                                       "options": ["bind", "rw", "nosuid", "nodev"]}
    assert mount(spec, "/state.dat")["source"] == "/run/v/state/state.dat"
    assert mount(build(), "/storage") is None and mount(build(), "/state.dat") is None


def test_host_binds_are_read_only() -> None:
    spec = build(host_binds=("/etc/ssl",))
    assert mount(spec, "/etc/ssl") == {"destination": "/etc/ssl", "type": "bind", "source": "/etc/ssl",
                                       "options": ["rbind", "ro", "nosuid", "nodev"]}


def test_hardening_no_ambient_capabilities_no_new_privileges_seccomp() -> None:
    spec = build()
    capabilities = spec["process"]["capabilities"]
    assert set(capabilities) == {"bounding", "effective", "permitted"}
    assert all(sorted(v) == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"] for v in capabilities.values())
    assert spec["process"]["noNewPrivileges"] is True
    seccomp = spec["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ALLOW"
    assert seccomp["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    denied = {name for rule in seccomp["syscalls"] if "args" not in rule for name in rule["names"]}
    assert {"mount", "unshare", "setns", "init_module", "bpf", "keyctl", "ptrace", "clone3"} <= denied
    assert {"read", "write", "clone", "execve", "openat"}.isdisjoint(denied)
    assert "seccomp" not in build(seccomp=False)["linux"]


def test_own_network_namespace_and_cgroup_namespace_on_v1_and_v2() -> None:
    for version in (1, 2):
        node = NodeFacts(cores=2, dmips=20000, cgroup_version=version)
        kinds = [ns["type"] for ns in build(node=node)["linux"]["namespaces"]]
        assert kinds == ["pid", "network", "ipc", "uts", "mount", "cgroup"]


def test_oci_version_is_the_one_aosedge_writes() -> None:
    assert build()["ociVersion"] == "1.2.0"


def test_builder_is_deterministic_and_does_not_touch_its_inputs() -> None:
    service = ServiceConfig(sysctl={"net.core.somaxconn": "8192"}, quotas=Quotas(ram_limit=1 << 26))
    before = copy.deepcopy(service)
    first = build(service)
    first["linux"]["sysctl"]["net.core.somaxconn"] = "changed"
    assert build(service) != first
    assert service == before
    assert build(service) == build(service)


def test_spec_module_does_no_io() -> None:
    """The builder and what it imports from the runtime room stay pure: no os, subprocess, I/O."""
    forbidden = {"os", "subprocess", "shutil", "socket", "pathlib", "io", "open", "time", "random"}
    for module in ("spec", "seccomp", "service_config", "identity"):
        source = Path(spec_module.__file__).with_name(f"{module}.py").read_text()
        tree = ast.parse(source)
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and isinstance(node.func, ast.Name)}
        assert not (imported | called) & forbidden, module


def test_applied_limits_describe_what_the_spec_enforces() -> None:
    quotas = Quotas(cpu_dmips_limit=5000, ram_limit=64 << 20, pids_limit=32, no_file_limit=100,
                    tmp_limit=1 << 20, storage_limit=2 << 20, state_limit=4096)
    service = ServiceConfig(quotas=quotas)
    lines = dict(applied_limits(build(service), service, NODE))
    assert "50000 us per 100000 us = 0.50 CPU" in lines["cpu"]
    assert lines["memory"].startswith("67108864 bytes (64.0 MiB), swap included")
    assert lines["pids"].startswith("32")
    assert lines["open files"] == "RLIMIT_NOFILE 100"
    assert "1048576 bytes" in lines["/tmp"]
    assert "/storage" in lines and "/state.dat" in lines
