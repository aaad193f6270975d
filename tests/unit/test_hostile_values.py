"""Hostile values, checked where they enter: the shared value checks, full-match validation
regexes, path resolution inside a root, the spec builder, the service-config parser and the
artifact writer (each refuses on its own, whoever built its input)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aos_operator import values
from aos_operator.digests import is_digest
from aos_operator.errors import BuildError, InputError, PackageError, RuntimeFailure
from aos_operator.image.oci import check_tag
from aos_operator.registry.reference import parse_reference
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.paths import PathLoop, create_file_in, make_dirs_in, resolve_in_root
from aos_operator.runtime.service_config import ImageConfig, ServiceConfig, parse_image_config, parse_service_config
from aos_operator.runtime.spec import InstanceSetup, NodeFacts, build_runtime_spec
from aos_operator.service import units
from aos_operator.service.artifacts import image_config, service_config
from aos_operator.service.description import Image, Platform, ServiceDescription


@pytest.mark.parametrize("path", ["/", "/app", "/app/work", "/app/", "/srv/my-service_1.0"])
def test_clean_working_dirs(path: str) -> None:
    assert values.working_dir_problem(path) is None


@pytest.mark.parametrize("path, problem", [
    ("/../../tmp/x", "contains '..'"), ("/app/..", "contains '..'"), ("/a/./b", "'.' components"),
    ("app", "not an absolute path"), ("", "not an absolute path"), ("/a//b", "empty component"),
    ("/a\0b", "NUL"), ("/a\nb", "control character"), ("/a\x7fb", "control character"),
])
def test_unclean_working_dirs(path: str, problem: str) -> None:
    assert problem in (values.working_dir_problem(path) or "")


@pytest.mark.parametrize("entry, problem", [
    ("FOO=1\nAOS_SERVICE_ID=evil", "newline"), ("FOO=a\rb", "control character"), ("FOO=a\0", "NUL"),
    ("=x", "empty variable name"), ("NOEQUALS", "not NAME=value"), ("A B=1", "whitespace"),
    ("A\nB=1", "whitespace"), ("AOS_SERVICE_ID=x", "reserved"), ("AOS_ANYTHING=x", "reserved"),
])
def test_hostile_env_entries(entry: str, problem: str) -> None:
    assert problem in (values.env_entry_problem(entry) or "")


def test_env_values_may_hold_tabs_and_equals_and_overrides_may_set_aos_variables() -> None:
    assert values.env_entry_problem("A=b=c\td") is None
    assert values.env_entry_problem("aos_lower=1") is None  # names are case-sensitive
    assert values.env_entry_problem("AOS_SUBJECT_ID=forced", from_service=False) is None
    assert "newline" in (values.env_entry_problem("AOS_X=1\n", from_service=False) or "")


def test_sysctl_allow_list_is_the_kubernetes_safe_set_plus_somaxconn() -> None:
    kubernetes_safe = {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
    }
    assert values.ALLOWED_SYSCTLS == kubernetes_safe | {"net.core.somaxconn"}
    for key in ("net.ipv4.ip_forward", "kernel.core_pattern", "vm.overcommit_memory", "net/core/somaxconn",
                "net.core.somaxconn\n", "kernel.msgmax"):
        assert f"sysctl {key!r} is not allowed" in (values.sysctl_problem(key, "1") or "")
    assert values.sysctl_problem("net.ipv4.ip_local_port_range", "1024\t65000") is None
    assert "one-line" in (values.sysctl_problem("net.core.somaxconn", "1\n2") or "")
    assert "one-line" in (values.sysctl_problem("net.core.somaxconn", "") or "")


# Values of each allowed sysctl's form; tests/integration/test_runtime_limits.py has the kernel take them.
SYSCTL_VALUES_OF_FORM = {
    "kernel.shm_rmid_forced": "1", "net.core.somaxconn": " 4096 ", "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.ip_unprivileged_port_start": "1024", "net.ipv4.tcp_keepalive_time": "600",
    "net.ipv4.tcp_fin_timeout": "30", "net.ipv4.tcp_keepalive_intvl": "60", "net.ipv4.tcp_keepalive_probes": "5",
    "net.ipv4.ip_local_port_range": "32768\t60999", "net.ipv4.ping_group_range": "0 2147483647",
    "net.ipv4.tcp_rmem": "4096 131072 6291456", "net.ipv4.tcp_wmem": "4096  16384 4194304",
    "net.ipv4.ip_local_reserved_ports": "8080,9148-9150",
}


def test_each_allowed_sysctl_takes_only_a_value_of_its_form() -> None:
    """runc writes the value into /proc/sys at start: `somaxconn: abc` failed only there."""
    assert set(SYSCTL_VALUES_OF_FORM) == values.ALLOWED_SYSCTLS
    for key, value in SYSCTL_VALUES_OF_FORM.items():
        assert values.sysctl_problem(key, value) is None, key
    for key, value, form in [
        ("net.core.somaxconn", "abc", "is not a number"), ("net.core.somaxconn", "1 2", "is not a number"),
        ("net.core.somaxconn", "0x10", "is not a number"), ("net.core.somaxconn", "1" * 21, "is not a number"),
        ("net.ipv4.ip_local_port_range", "32768", "is not two numbers"),
        ("net.ipv4.ip_local_port_range", "32768-60999", "is not two numbers"),
        ("net.ipv4.tcp_rmem", "4096 131072", "is not three numbers"),
        ("net.ipv4.ip_local_reserved_ports", "8080, 9148", "is not a list of ports and ranges"),
        ("net.ipv4.ip_local_reserved_ports", "http", "is not a list of ports and ranges"),
    ]:
        assert f"sysctl {key}: {value!r} {form}" in (values.sysctl_problem(key, value) or ""), (key, value)


@pytest.mark.parametrize("hostname, good", [
    ("svc", True), ("my-svc.local", True), ("a" * 63, True), ("evil\n", False), ("-x", False), ("a_b", False),
    ("a" * 65, False), ("a..b", False), ("", False),
])
def test_hostnames_are_fully_matched(hostname: str, good: bool) -> None:
    assert (values.hostname_problem(hostname) is None) is good


def test_validation_regexes_match_the_whole_value() -> None:
    assert is_digest("sha256:" + "a" * 64) and not is_digest("sha256:" + "a" * 64 + "\n")
    with pytest.raises(InputError):
        parse_reference("registry.local/repo:tag\n")
    with pytest.raises(InputError):
        parse_reference("registry.local\n/repo:tag")
    with pytest.raises(Exception, match="tag"):
        check_tag("v1\n")
    with pytest.raises(ValueError):
        units.parse_semver("1.0.0\n")
    with pytest.raises(ValueError):
        units.parse_iso_duration("PT1S\n")
    with pytest.raises(ValueError):
        units.parse_size("1M\n", dialect=1)


# --- paths inside a root -------------------------------------------------------------------------

def test_resolve_in_root_follows_links_only_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "app" / "work").mkdir(parents=True)
    os.symlink("/app", root / "srv")  # absolute: from the root, not the host
    os.symlink("../../../../..", root / "app" / "up")  # climbs: stops at the root
    os.symlink("loop", root / "loop")
    assert resolve_in_root(root, "/srv/work") == root / "app" / "work"
    assert resolve_in_root(root, "/app/up/app") == root / "app"
    assert resolve_in_root(root, "/../../etc") is None  # the host's /etc is never looked at
    assert resolve_in_root(root, "/srv/missing") is None
    with pytest.raises(PathLoop):
        resolve_in_root(root, "/loop")


def test_make_dirs_and_files_in_refuse_links_and_climbs(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    (root / "etc").mkdir()
    create_file_in(root, "etc/hosts", 0o644, b"x\n")
    for bad in ("link/x", "../outside/x", "etc/hosts/x"):
        with pytest.raises(RuntimeFailure):
            make_dirs_in(root, bad)
    with pytest.raises(RuntimeFailure):
        create_file_in(root, "link", 0o644)
    with pytest.raises(RuntimeFailure, match="is a directory"):
        create_file_in(root, "etc", 0o644)
    assert list(outside.iterdir()) == []
    assert make_dirs_in(root, "a/b/c") == root / "a" / "b" / "c"


# --- each stage refuses on its own ------------------------------------------------------------------

IMAGE = ImageConfig(os="linux", architecture="amd64", entrypoint=(), cmd=("/bin/app",), working_dir="/app", env=())
NODE = NodeFacts(cores=2, dmips=20000)


def setup(**changes: object) -> InstanceSetup:
    fields: dict = dict(identity=InstanceIdentity("svc", "subject", 0), uid=5000, gid=5000, rootfs="/run/x/rootfs",
                        cgroups_path="/aos/x")
    fields.update(changes)
    return InstanceSetup(**fields)


@pytest.mark.parametrize("image, service, message", [
    (ImageConfig("linux", "amd64", (), ("x",), "/../../tmp", ()), ServiceConfig(), "contains '..'"),
    (ImageConfig("linux", "amd64", (), ("x",), "/a\0b", ()), ServiceConfig(), "NUL"),
    (ImageConfig("linux", "amd64", (), ("x",), "/", ("X=1\nAOS_SERVICE_ID=evil",)), ServiceConfig(), "newline"),
    (ImageConfig("linux", "amd64", (), ("x",), "/", ("AOS_INSTANCE_ID=evil",)), ServiceConfig(), "reserved"),
    (IMAGE, ServiceConfig(hostname="evil\n"), "not a valid host name"),
    (IMAGE, ServiceConfig(sysctl={"net.ipv4.ip_forward": "1"}), "'net.ipv4.ip_forward' is not allowed"),
])
def test_spec_builder_refuses_what_the_parsers_refuse(image: ImageConfig, service: ServiceConfig,
                                                      message: str) -> None:
    with pytest.raises(PackageError, match=message):
        build_runtime_spec(image, service, setup(), NODE)


def test_spec_builder_refuses_control_characters_in_overrides() -> None:
    with pytest.raises(PackageError, match="newline"):
        build_runtime_spec(IMAGE, ServiceConfig(), setup(env_overrides=("X=1\nY=2",)), NODE)


@pytest.mark.parametrize("config, message", [
    ({"Cmd": ["x"], "WorkingDir": "/../../x"}, "WorkingDir: '/../../x' contains '..'"),
    ({"Cmd": ["x"], "WorkingDir": "/a\u0000b"}, "NUL"),
    ({"Cmd": ["x"], "Env": ["FOO=1\nAOS_SERVICE_ID=evil"]}, "newline"),
    ({"Cmd": ["x"], "Env": ["AOS_SERVICE_ID=evil"]}, "reserved"),
])
def test_image_config_parser_refuses(config: dict, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        parse_image_config({"os": "linux", "config": config}, "image config sha256:abc")


@pytest.mark.parametrize("data, message", [
    ({"hostname": "evil\n"}, "hostname: 'evil\\\\n' is not a valid host name"),
    ({"sysctl": {"kernel.core_pattern": "|/x"}}, "'kernel.core_pattern' is not allowed"),
    ({"quotas": {"noFileLimit": 0}}, r"quotas\.noFileLimit: 0 is not a usable limit"),
    ({"quotas": {"cpuDMIPSLimit": 0}}, r"quotas\.cpuDMIPSLimit: 0 is not a usable limit"),
])
def test_service_config_parser_refuses(data: dict, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        parse_service_config(data, "service config")


def test_zero_storage_and_state_mean_no_volume_on_the_device() -> None:
    quotas = parse_service_config({"quotas": {"storageLimit": 0, "stateLimit": 0}}, "service config").quotas
    assert (quotas.storage_limit, quotas.state_limit) == (0, 0)  # falsy: no volume is made


def _description(**changes: object) -> tuple[ServiceDescription, Image]:
    image = Image(platform=Platform(architecture="amd64"), source_folder="src", command=("/bin/app",),
                  **{key: value for key, value in changes.items() if key in ("working_dir", "env")})
    service = ServiceDescription(dialect=2, version="1.0.0", images=(image,),
                                 **{key: value for key, value in changes.items() if key in ("hostname", "sysctl")})
    return service, image


@pytest.mark.parametrize("changes, message", [
    ({"working_dir": "/../x"}, "contains '..'"),
    ({"env": ("X=1\nY=2",)}, "newline"),
    ({"env": ("AOS_SERVICE_ID=x",)}, "reserved"),
])
def test_build_refuses_an_unsafe_image_config(changes: dict, message: str) -> None:
    service, image = _description(**changes)
    with pytest.raises(BuildError, match=message):
        image_config(service, image)


@pytest.mark.parametrize("changes, message", [
    ({"hostname": "evil\n"}, "not a valid host name"),
    ({"sysctl": {"net.ipv4.ip_forward": "1"}}, "is not allowed"),
])
def test_build_refuses_an_unsafe_service_config(changes: dict, message: str) -> None:
    service, _ = _description(**changes)
    with pytest.raises(BuildError, match=message):
        service_config(service)


def test_build_refuses_a_working_dir_the_tree_lacks(tmp_path: Path) -> None:
    from aos_operator.packaging import build_service

    tree = tmp_path / "src"
    (tree / "app").mkdir(parents=True)
    (tree / "app" / "main.py").write_text("print(1)\n")
    os.symlink("app", tree / "srv")  # inside the tree: fine
    service, _ = _description(working_dir="/missing")
    with pytest.raises(BuildError, match="workingDir '/missing': the source tree .* has no such directory"):
        build_service(service, tree, archive=tmp_path / "out.tar", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out.tar").exists()
    service, _ = _description(working_dir="/srv")
    build_service(service, tree, archive=tmp_path / "out.tar", cache_dir=tmp_path / "cache")
    assert (tmp_path / "out.tar").stat().st_size > 0


def test_max_layer_size_flag() -> None:
    from aos_operator.cli import _parser
    from aos_operator.runtime.layers import DEFAULT_MAX_LAYER_BYTES

    assert _parser().parse_args(["run", "dir"]).max_layer_size == DEFAULT_MAX_LAYER_BYTES == 4 << 30
    assert _parser().parse_args(["agent", "--max-layer-size", "512MiB"]).max_layer_size == 512 << 20
    for bad in ("0", "lots", "-1"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["run", "dir", "--max-layer-size", bad])


DEEP_JSON = b"[" * 5000 + b"]" * 5000
HUGE_INT = b'{"size": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize("data", [DEEP_JSON, HUGE_INT], ids=["nested 5000 deep", "5000 digits"])
def test_json_the_parser_cannot_take_is_malformed_json_not_a_crash(data: bytes, tmp_path: Path) -> None:
    """json.loads raises RecursionError and a bare ValueError for these; every reader of registry and
    package JSON names the document instead."""
    from aos_operator.bounded import parse_json
    from aos_operator.image.oci import load_json
    from aos_operator.registry.manifest import parse_manifest
    from aos_operator.runtime.package import _PackageDir

    with pytest.raises(json.JSONDecodeError):
        parse_json(data)
    with pytest.raises(PackageError, match="reg/x@sha256:1: manifest is not valid JSON"):
        parse_manifest(data, "reg/x@sha256:1")
    with pytest.raises(PackageError, match="index.json: not valid JSON"):
        load_json(data, "index.json")
    (tmp_path / "manifest.json").write_bytes(data)
    with pytest.raises(PackageError, match="manifest.json: not valid JSON"):
        _PackageDir(tmp_path)


def test_instance_ids_from_the_api_name_no_path(tmp_path: Path) -> None:
    """The runtime names directories, cgroups and locks by instance ID: one that is not a UUID, as a
    hostile or broken AosServiceInstance could carry, reaches none of them."""
    from aos_operator.agent.core import Desired, DeviceAgent
    from aos_operator.runtime import Runtime, RuntimeConfig

    runtime = Runtime(RuntimeConfig(state_root=tmp_path / "state", run_root=tmp_path / "run"))
    for instance_id in ("../../etc", "", "/", "a" * 36):
        with pytest.raises(RuntimeFailure, match="not an instance ID"):
            runtime.data_dir(instance_id)
        with pytest.raises(RuntimeFailure, match="not an instance ID"):
            runtime.cgroups_path(instance_id)
    agent = DeviceAgent(runtime, None, tmp_path / "cache")  # type: ignore[arg-type]  # never reached
    assert agent.status("../../etc") is None
    outcome = agent.converge(Desired("", "subject", 0, "r/x@sha256:" + "a" * 64, "sha256:" + "a" * 64, "x"),
                             lambda step: None)
    assert (outcome.phase, outcome.reason) == ("Failed", "InvalidSpec") and "service_id" in outcome.message
    assert not (tmp_path / "state").exists() and not (tmp_path / "cache").exists()


def test_a_fifo_given_as_input_is_refused_not_waited_on(tmp_path: Path) -> None:
    """open() of a FIFO blocks until a writer comes: an OCI layout's index.json or a node config
    that is one hung `aosctl run` and `inspect` for ever."""
    from aos_operator.bounded import read_limited
    from aos_operator.image import open_package
    from aos_operator.runtime.node_config import load_node_config

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        read_limited(fifo, 1024, lambda size: InputError("too large"))
    with pytest.raises(InputError, match="cannot read the node config: not a regular file"):
        load_node_config(fifo)
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    os.mkfifo(layout / "index.json")
    with pytest.raises(PackageError, match="index.json: cannot read: not a regular file"):
        open_package(layout)


def test_a_damaged_state_file_is_a_runtime_failure_naming_it(tmp_path: Path) -> None:
    """The runtime's own files after a crash or an edit: valid JSON of another shape was a KeyError,
    TypeError or ValueError, and aosctl ps exited 70."""
    from aos_operator.runtime.network.manager import NetworkManager
    from aos_operator.runtime.network.model import NetworkConfig
    from aos_operator.runtime.plan import SupervisorPlan
    from aos_operator.runtime.status import read_status

    path = tmp_path / "status.json"
    for text in ('{"phase": "Bogus"}', "[]", '{"identity": 5}', "not json"):
        path.write_text(text)
        with pytest.raises(RuntimeFailure, match=r"status.json: a damaged state file"):
            read_status(path)
        with pytest.raises(RuntimeFailure, match=r"status.json: a damaged state file"):
            SupervisorPlan.load(path, tmp_path / "run")
    assert read_status(tmp_path / "missing.json") is None
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "networks.json").write_text('{"default": {"subnet": "10.0.0.0/24"}}')
    manager = NetworkManager(NetworkConfig(), tmp_path / "net", "scope")
    with pytest.raises(RuntimeFailure, match=r"networks.json: a damaged state file"):
        manager._networks()


def _own_plan(state: Path, run: Path):
    """A plan as the runtime writes it for one instance (storage volume, one Aos layer)."""
    from aos_operator.runtime.plan import SupervisorPlan
    from aos_operator.runtime.rootfs import RootfsPlan
    from aos_operator.runtime.service_config import RunParameters
    from aos_operator.runtime.volumes import Volume

    identity = InstanceIdentity("svc", "subject", 0)
    instance_id = identity.instance_id
    data_dir, run_dir = state / "instances" / instance_id, run / "instances" / instance_id
    data_dir.mkdir(parents=True)
    return SupervisorPlan(
        identity=identity, package="sha256:" + "0" * 64, run_dir=str(run_dir), data_dir=str(data_dir),
        runc_binary="/usr/sbin/runc", runc_root=str(run / "runc"), cgroups_path=f"/aos/{instance_id}",
        cgroup_lock=str(run / "cgroups.lock"),
        rootfs=RootfsPlan(str(run_dir), str(state / "layers" / ("a" * 64 + ".g1000")),
                          aos_layers=(str(state / "layers" / ("b" * 64)),), templates=str(run / "rootfs-templates")),
        volumes=(Volume("storage", str(data_dir / "storage.img"), 1 << 20, str(run_dir / "volumes" / "storage"),
                        1000, 1000),),
        run_parameters=RunParameters(), restart=True, log_max_bytes=1 << 20)


def test_a_plan_that_names_other_places_than_its_instance_is_refused(tmp_path: Path) -> None:
    """Teardown kills, unmounts, detaches and removes what plan.json names, as root: each place it
    names must be the one the runtime derives from its roots and the instance ID."""
    from dataclasses import replace

    from aos_operator.runtime.plan import PLAN_FILE, SupervisorPlan
    from aos_operator.runtime.volumes import Volume

    state, run = tmp_path / "state", tmp_path / "run"
    plan = _own_plan(state, run)
    path = plan.save()
    assert path == Path(plan.data_dir) / PLAN_FILE
    assert SupervisorPlan.load(path, run) == plan
    volume = plan.volumes[0]
    other = InstanceIdentity("other", "subject", 0)
    for changed, named in [
        (replace(plan, run_dir="/"), "run_dir '/'"),
        (replace(plan, rootfs=replace(plan.rootfs, run_dir="/etc")), "rootfs.run_dir '/etc'"),
        (replace(plan, identity=other), f"instance ID {other.instance_id!r}"),
        (replace(plan, data_dir=str(tmp_path)), "data_dir"),
        (replace(plan, runc_root="/run/runc"), "runc_root '/run/runc'"),
        (replace(plan, cgroup_lock="/etc/passwd"), "cgroup_lock '/etc/passwd'"),
        (replace(plan, cgroups_path="/system.slice"), "cgroups_path '/system.slice'"),
        (replace(plan, cgroups_path=f"/aos/../{plan.instance_id}"), "cgroups_path"),
        (replace(plan, volumes=(replace(volume, image="/dev/sda"),)), "storage volume image '/dev/sda'"),
        (replace(plan, volumes=(replace(volume, mountpoint="/home"),)), "storage volume mount point '/home'"),
        (replace(plan, volumes=(Volume("swap", volume.image, 1, volume.mountpoint, 0, 0),)), "another kind"),
        (replace(plan, rootfs=replace(plan.rootfs, service_layer="/")), "layer '/'"),
        (replace(plan, rootfs=replace(plan.rootfs, aos_layers=(str(state / "layers" / ".."),))), "layer"),
        (replace(plan, rootfs=replace(plan.rootfs, templates="/usr")), "rootfs.templates '/usr'"),
    ]:
        path.write_text(json.dumps(changed.to_json()))
        with pytest.raises(RuntimeFailure, match="names places that are not this instance's") as caught:
            SupervisorPlan.load(path, run)
        assert named in str(caught.value)
        assert str(path) in str(caught.value)
    path.write_text(json.dumps(plan.to_json()))
    with pytest.raises(RuntimeFailure, match="run_dir"):
        SupervisorPlan.load(path, tmp_path / "another-run-root")


def test_the_supervisor_answers_a_start_of_a_misplaced_plan_with_an_error(tmp_path: Path) -> None:
    """Before, a damaged plan.json raised out of the request handler and ended the supervisor."""
    from dataclasses import replace

    from aos_operator.runtime.status import InstanceStatus, write_status
    from aos_operator.runtime.supervisor import NodeSupervisor

    state, run = tmp_path / "state", tmp_path / "run"
    plan = _own_plan(state, run)
    replace(plan, run_dir="/").save()
    node = NodeSupervisor(state, run, linger=0)
    status_path = Path(plan.data_dir) / "status.json"
    status_path.write_text("{}")  # damaged as well: also raised out of the handler before
    reply = node.handle({"op": "start", "id": plan.instance_id})
    assert reply["ok"] is False and "status.json: a damaged state file" in reply["error"]
    write_status(status_path, InstanceStatus(plan.instance_id, plan.identity, plan.package))
    reply = node.handle({"op": "start", "id": plan.instance_id})
    assert reply["ok"] is False and "names places that are not this instance's: run_dir '/'" in reply["error"]
    assert node.instances == {}


def test_network_records_that_name_what_is_not_their_instances_are_not_acted_on(tmp_path: Path) -> None:
    """Teardown deletes the netns and bridge a record names and runs CNI DEL with its plugins; the
    sweep deleted the link of every directory name in the DNS directory."""
    from dataclasses import replace

    from aos_operator.runtime.network.manager import NetworkManager
    from aos_operator.runtime.network.model import (
        InstanceNetwork,
        Network,
        NetworkConfig,
        bridge_name,
        cni_chain,
        netns_name,
        short_hash,
    )

    config = NetworkConfig(netns_dir=str(tmp_path / "netns"), dns_dir=str(tmp_path / "dns"))
    manager = NetworkManager(config, tmp_path / "net", "scope")
    instance_id = InstanceIdentity("svc", "subject", 0).instance_id
    network = Network("default", bridge_name("scope", "default"), "172.30.0.0/24")
    record = InstanceNetwork(
        instance_id=instance_id, service_id="svc", provider="default", bridge=network.bridge,
        subnet=network.subnet, gateway=network.gateway, ip="172.30.0.2",
        netns=str(tmp_path / "netns" / netns_name("scope", instance_id)), hostname="", names=(),
        upload_speed=100, plugins=tuple(cni_chain(network, "172.30.0.2", str(manager.ipam_dir), 100, 0)),
        tag=short_hash("scope", instance_id, length=12))
    path = manager._record_path(instance_id)
    manager._save_record(record)
    assert manager.record(instance_id) == record and manager.records() == [record]
    eth0 = {"type": "bridge", "bridge": "eth0"}
    for changed, named in [
        (replace(record, bridge="eth0"), "bridge 'eth0'"),
        (replace(record, netns="/run/netns/other"), "netns '/run/netns/other'"),
        (replace(record, instance_id="x"), "instance_id 'x'"),
        (replace(record, tag="t"), "tag 't'"),
        (replace(record, ip="10.9.9.9"), "outside 172.30.0.0/24"),
        (replace(record, subnet="not a subnet"), "does not appear to be an IPv4 or IPv6 network"),
        (replace(record, provider="Bad Provider"), "is not a DNS label"),
        (replace(record, plugins=(eth0,)), "CNI plugins other than"),
        (replace(record, upload_speed=5), "CNI plugins other than"),  # the chain's rate is another
    ]:
        path.write_text(json.dumps(changed.to_json()))
        with pytest.raises(RuntimeFailure, match="names what is not this instance's") as caught:
            manager.record(instance_id)
        assert named in str(caught.value) and str(path) in str(caught.value)
        assert manager.records() == [] and not path.exists()  # removed, not acted on
    networks = tmp_path / "net" / "networks.json"
    manager._save_networks({"default": network})
    assert manager._networks() == {"default": network}
    manager._save_networks({"default": replace(network, bridge="eth0")})
    with pytest.raises(RuntimeFailure, match=r"networks.json: names what is not provider 'default'.s network: "
                                             r"bridge 'eth0'"):
        manager._networks()
    networks.write_text(json.dumps({"default": {"provider": "other", "bridge": network.bridge,
                                                "subnet": network.subnet}}))
    with pytest.raises(RuntimeFailure, match="provider 'other'"):
        manager._networks()
    networks.unlink()
    dns = tmp_path / "dns" / "scope"
    (dns / "not-a-bridge-of-ours").mkdir(parents=True)
    (dns / bridge_name("scope", "gone")).mkdir()
    manager._sweep([])
    assert [entry.name for entry in dns.iterdir()] == ["not-a-bridge-of-ours"]
