"""Aos layers on the device, by effect under real runc: a service runs on what only its layer provides,
layers stack in AosEdge's order, whiteouts hide host files, one unpack per layer shared by packages and
instances, hostile layers are refused leaving nothing, the GC keeps a layer while a package needs it,
and the layers travel through a real registry, a package archive and an OCI layout."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from registry_support import RegistryServer
from runtime_helpers import assert_nothing_left, wait_for_log, wait_for_status
from test_runtime_hostile import gnu_sparse_header
from tests.conftest import EXAMPLES
from tests.runtime_test_packages import AOS_LAYER_MEDIA_TYPE, add_aos_layers, build_aos_layer_blob, gzip_tar

from aos_operator.agent.core import Desired, DeviceAgent
from aos_operator.errors import PackageError
from aos_operator.image import open_package
from aos_operator.packaging import materialize, pull_package
from aos_operator.registry import RegistryClient
from aos_operator.runtime import InstanceIdentity, Runtime, RuntimeConfig
from aos_operator.runtime.aos_layers import MAX_AOS_LAYERS
from aos_operator.runtime.package import PackageStore
from aos_operator.runtime.package_gc import GcPolicy

pytestmark = pytest.mark.root  # runc, overlay mounts, whiteout devices

BUSYBOX = "/bin/busybox"
GREETING_MODULE = "usr/lib/python3/dist-packages/aos_layer_greeting.py"
IMPORTER = "import aos_layer_greeting\nprint(aos_layer_greeting.TEXT, flush=True)\n"
SLEEPING_IMPORTER = IMPORTER + "import time\ntime.sleep(3600)\n"


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def layer_blob(tmp_path: Path) -> Callable[[dict[str, str]], tuple[bytes, str]]:
    """An Aos layer blob of `files`, written by the image room's layer writer."""
    counter = iter(range(1000))

    def build(files: dict[str, str]) -> tuple[bytes, str]:
        number = next(counter)
        tree = make_tree(tmp_path / f"layer-tree{number}", files)
        return build_aos_layer_blob(tree, tmp_path / f"layer-store{number}")

    return build


def store_entries(runtime: Runtime) -> list[str]:
    root = runtime.packages.layers.root
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


def overlay_lowerdirs(runtime: Runtime, instance_id: str) -> list[str]:
    rootfs = str(runtime.run_dir(instance_id) / "rootfs")
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == rootfs and fields[2] == "overlay":
            options = dict(option.partition("=")[::2] for option in fields[3].split(","))
            return options["lowerdir"].split(":")
    raise AssertionError(f"no overlay on {rootfs}")


def test_a_service_imports_a_module_only_its_layer_provides(runtime: Runtime, make_package: Callable[..., Path],
                                                             layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    cmd = ["python3", "-u", "/app/main.py"]
    without = runtime.install(make_package({"app/main.py": IMPORTER}, cmd=cmd))
    package_dir = make_package({"app/main.py": IMPORTER}, cmd=cmd)
    [layer_digest] = add_aos_layers(package_dir, [layer_blob({GREETING_MODULE: "TEXT = 'greetings from the layer'\n"})])
    package = runtime.install(package_dir)
    assert package.aos_layer_digests == (layer_digest,)
    assert package.aos_layer_paths == (runtime.packages.layers.path(layer_digest),)

    bare = InstanceIdentity("svc-no-layer", "subject", 0)
    runtime.start(bare, without, restart=False)
    assert "No module named 'aos_layer_greeting'" in wait_for_log(runtime, bare.instance_id, "ModuleNotFoundError")

    identity = InstanceIdentity("svc-layer", "subject", 0)
    runtime.start(identity, package, restart=False)
    assert wait_for_log(runtime, identity.instance_id, "greetings").splitlines()[-1] == "greetings from the layer"
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.phase.terminal, what="exit")
    assert status.last_exit is not None and status.last_exit.exit_code == 0
    assert not Path("/", GREETING_MODULE).exists()  # the host is untouched
    runtime.cleanup()
    assert_nothing_left(runtime)


def test_layers_stack_in_manifest_order_under_the_service_layer(
        runtime: Runtime, make_package: Callable[..., Path], layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    script = "cd /srv/order && for f in x y z; do echo $f=$(cat $f); done; echo done; sleep 3600"
    package_dir = make_package({"srv/order/x": "service"}, cmd=[BUSYBOX, "sh", "-c", script])
    first = layer_blob({"srv/order/x": "layer1", "srv/order/y": "layer1"})
    second = layer_blob({"srv/order/x": "layer2", "srv/order/y": "layer2", "srv/order/z": "layer2"})
    digests = add_aos_layers(package_dir, [first, second])
    package = runtime.install(package_dir)
    identity = InstanceIdentity("svc-order", "subject", 0)
    runtime.start(identity, package)
    text = wait_for_log(runtime, identity.instance_id, "done")
    assert text.splitlines()[:3] == ["x=service", "y=layer1", "z=layer2"]
    lower = overlay_lowerdirs(runtime, identity.instance_id)
    service = str(runtime.packages.layers.root / f"{package.layer_digest.split(':')[1]}.g")
    layers = [str(runtime.packages.layers.path(digest)) for digest in digests]
    assert lower[1].startswith(service) and lower[2:4] == layers  # top : service : layers[1] : layers[2] : base
    runtime.stop(identity.instance_id)
    assert_nothing_left(runtime)


def test_a_whiteout_in_a_layer_hides_a_host_file(runtime: Runtime, make_package: Callable[..., Path],
                                                 layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    script = ("ls /usr/share; ls -d /usr/lib/python3.11/json 2>/dev/null || echo json-hidden; "
              "ls /usr/lib/python3.11/os.py; echo checked; sleep 3600")
    package_dir = make_package({"app/README": "x"}, cmd=[BUSYBOX, "sh", "-c", script])
    add_aos_layers(package_dir, [layer_blob({"usr/share/.wh..wh..opq": "", "usr/share/from-the-layer": "x",
                                             "usr/lib/python3.11/.wh.json": ""})])
    package = runtime.install(package_dir)
    identity = InstanceIdentity("svc-layer-whiteouts", "subject", 0)
    runtime.start(identity, package)
    text = wait_for_log(runtime, identity.instance_id, "checked")
    assert text.splitlines()[:3] == ["from-the-layer", "json-hidden", "/usr/lib/python3.11/os.py"]
    assert Path("/usr/lib/python3.11/json").is_dir() and len(os.listdir("/usr/share")) > 1  # the host is untouched
    runtime.stop(identity.instance_id)


def test_a_layer_is_unpacked_once_for_two_packages_and_their_instances(
        runtime: Runtime, make_package: Callable[..., Path], layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    shared = layer_blob({"opt/shared/data": "shared\n"})
    script = "cat /opt/shared/data; sleep 3600"
    packages = []
    for name in ("one", "two"):
        package_dir = make_package({f"app/{name}": name}, cmd=[BUSYBOX, "sh", "-c", script])
        [digest] = add_aos_layers(package_dir, [shared])
        packages.append(runtime.install(package_dir))
        if name == "one":
            layer = runtime.packages.layers.path(digest)
            unpacked = os.stat(layer / "opt/shared/data").st_ino
    assert packages[0].digest != packages[1].digest
    assert packages[0].aos_layer_paths == packages[1].aos_layer_paths == (layer,)
    assert os.stat(layer / "opt/shared/data").st_ino == unpacked  # not unpacked again for package two
    hexes = [package.layer_digest.split(":")[1] for package in packages] + [digest.split(":")[1]]
    assert store_entries(runtime) == sorted(hexes)
    identities = [InstanceIdentity(f"svc-shared-{n}", "subject", i) for n in range(2) for i in range(2)]
    for number, identity in enumerate(identities):
        runtime.start(identity, packages[number // 2])
    for identity in identities:
        assert wait_for_log(runtime, identity.instance_id, "shared").splitlines()[0] == "shared"
        assert str(layer) in overlay_lowerdirs(runtime, identity.instance_id)
    gids = {runtime.ids.service_gid(identity.service_id) for identity in identities}
    owned = {f"{package.layer_digest.split(':')[1]}.g{gid}" for package in packages for gid in gids}
    assert set(store_entries(runtime)) - set(hexes) <= owned  # only the service layers get per-group copies
    runtime.cleanup()
    assert_nothing_left(runtime)


def _member(name: str, kind: bytes = tarfile.REGTYPE, *, linkname: str = "", data: bytes = b"") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


HOSTILE_LAYERS = {
    "path escape": ([_member("opt/../../escape", data=b"x")], "path contains '..'"),
    "absolute path": ([_member("/etc/evil", data=b"x")], "absolute path"),
    "symlink out": ([_member("opt/link", tarfile.SYMTYPE, linkname="../../../etc/shadow")], "points outside the layer"),
    "write through a link": ([_member("opt", tarfile.SYMTYPE, linkname="/etc"), _member("opt/evil", data=b"x")],
                             "not a directory"),
    "hard link out": ([_member("opt/passwd", tarfile.LNKTYPE, linkname="/etc/passwd")], "absolute path"),
    "device": ([_member("opt/null", tarfile.CHRTYPE)], "character devices are not allowed"),
    "bomb": ([_member("opt/zeros", data=bytes(3 << 20))], "unpacks to more than the device's maximum"),
    "sparse": (None, "GNU sparse files (tar type 'S') are not allowed"),  # a 1 TiB file of one block
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_hostile_layers_are_refused_and_leave_nothing(case: str, runtime_config: RuntimeConfig,
                                                      make_package: Callable[..., Path]) -> None:
    runtime = Runtime(replace(runtime_config, max_layer_bytes=2 << 20))
    members, why = HOSTILE_LAYERS[case]
    package_dir = make_package({"app/main": "x"}, cmd=[BUSYBOX, "true"])
    hostile = gzip_tar({}, members) if members is not None else \
        gzip.compress(gnu_sparse_header("opt/big", 1 << 40, b"tail" * 384), mtime=0)
    add_aos_layers(package_dir, [gzip_tar({"opt/fine": "fine"}), hostile])
    with pytest.raises(PackageError) as refused:
        runtime.install(package_dir)
    message = str(refused.value)
    assert "Aos layer sha256:" in message and "(layers[2] of sha256:" in message and why in message
    assert "nothing was installed" in message
    assert runtime.packages.digests() == [] and store_entries(runtime) == []  # the service layer and layers[1] too
    assert not Path("/escape").exists() and not Path("/etc/evil").exists()


def test_a_refused_layer_keeps_the_layers_other_packages_use(runtime: Runtime, make_package: Callable[..., Path],
                                                             layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    shared = layer_blob({"opt/shared/data": "shared\n"})
    good_dir = make_package({"app/good": "x"}, cmd=[BUSYBOX, "cat", "/opt/shared/data"])
    [shared_digest] = add_aos_layers(good_dir, [shared])
    good = runtime.install(good_dir)
    before = store_entries(runtime)
    bad_dir = make_package({"app/bad": "x"}, cmd=[BUSYBOX, "true"])
    add_aos_layers(bad_dir, [shared, gzip_tar({}, [_member("../evil", data=b"x")])])
    with pytest.raises(PackageError, match=r"layers\[2\] of .*path contains '\.\.'"):
        runtime.install(bad_dir)
    assert store_entries(runtime) == before and runtime.packages.digests() == [good.digest]
    assert runtime.packages.get(good.digest).aos_layer_digests == (shared_digest,)


def test_manifests_with_bad_layer_lists_are_refused_naming_the_index(
        runtime: Runtime, make_package: Callable[..., Path], layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    one = layer_blob({"opt/one": "1"})

    def refused(package_dir: Path, pattern: str) -> None:
        with pytest.raises(PackageError, match=pattern):
            runtime.install(package_dir)
        assert runtime.packages.digests() == [] and store_entries(runtime) == []

    other_type = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    add_aos_layers(other_type, [one], media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    refused(other_type, r"manifest\.json: layers\[1\] \(sha256:[0-9a-f]{64}\): mediaType "
                        r"'application/vnd\.oci\.image\.layer\.v1\.tar\+zstd' is not an Aos layer")
    encrypted = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    add_aos_layers(encrypted, [one], media_type="application/vnd.aos.image.layer.enc.v1.aes256gcm+tar+gzip")
    refused(encrypted, r"layers\[1\] .* an encrypted AosEdge layer")
    twice = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    add_aos_layers(twice, [one, layer_blob({"opt/two": "2"}), one])
    refused(twice, r"layers\[3\] \(sha256:[0-9a-f]{64}\) is the same blob as layers\[1\]")
    too_many = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    add_aos_layers(too_many, [gzip_tar({f"opt/{n}": str(n)}) for n in range(MAX_AOS_LAYERS + 1)])
    refused(too_many, rf"layers\[1:\]: {MAX_AOS_LAYERS + 1} Aos layers, at most {MAX_AOS_LAYERS}")
    missing = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    [digest] = add_aos_layers(missing, [one])
    (missing / "blobs" / "sha256" / digest.split(":")[1]).unlink()
    refused(missing, rf"Aos layer \(layers\[1\]\) blob {digest}: missing")
    altered = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    [digest] = add_aos_layers(altered, [one])
    blob = altered / "blobs" / "sha256" / digest.split(":")[1]
    data = blob.read_bytes()
    blob.write_bytes(data[:20] + bytes([data[20] ^ 1]) + data[21:])
    refused(altered, rf"Aos layer \(layers\[1\]\) blob {digest}: content has digest")
    as_service = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    add_aos_layers(as_service, [one])
    manifest = json.loads((as_service / "manifest.json").read_text())
    manifest["layers"][1].update(digest=manifest["layers"][0]["digest"], size=manifest["layers"][0]["size"])
    (as_service / "manifest.json").write_text(json.dumps(manifest))
    refused(as_service, r"layers\[1\] \(sha256:[0-9a-f]{64}\) is the same blob as the service layer")
    short_diff_ids = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    add_aos_layers(short_diff_ids, [one])
    manifest = json.loads((short_diff_ids / "manifest.json").read_text())
    config_path = short_diff_ids / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
    config = json.loads(config_path.read_bytes())
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:1]  # the service layer's only
    data = json.dumps(config).encode()
    config_digest = hashlib.sha256(data).hexdigest()
    (short_diff_ids / "blobs" / "sha256" / config_digest).write_bytes(data)
    manifest["config"].update(digest=f"sha256:{config_digest}", size=len(data))
    (short_diff_ids / "manifest.json").write_text(json.dumps(manifest))
    refused(short_diff_ids, r"rootfs\.diff_ids lists 1 layer\(s\), the manifest 2")

def test_gc_keeps_a_layer_another_package_uses_and_removes_it_with_the_last(
        tmp_path: Path, make_package: Callable[..., Path], layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    store = PackageStore(tmp_path / "state")
    shared, own = layer_blob({"opt/shared": "s"}), layer_blob({"opt/own": "o"})
    a_dir = make_package({"app/a": "a"}, cmd=[BUSYBOX, "true"])
    [shared_digest] = add_aos_layers(a_dir, [shared])
    b_dir = make_package({"app/b": "b"}, cmd=[BUSYBOX, "true"])
    _, own_digest = add_aos_layers(b_dir, [shared, own])
    a, b = store.install(a_dir), store.install(b_dir)
    store.note_use(a.digest, "service-a")
    store.note_use(b.digest, "service-b")
    assert store.collect({a.digest}, GcPolicy(keep_previous=0)) == [b.digest]
    assert store.layers.has(shared_digest) and not store.layers.has(own_digest)  # a still needs the shared one
    assert store.get(a.digest).aos_layer_paths == (store.layers.path(shared_digest),)
    assert store.collect(set(), GcPolicy(keep_previous=0)) == [a.digest]
    assert not store.layers.root.exists() or list(store.layers.root.iterdir()) == []
    # uninstall follows the same rule
    a, b = store.install(a_dir), store.install(b_dir)
    store.uninstall(b.digest)
    assert store.layers.has(shared_digest) and not store.layers.has(own_digest)
    store.uninstall(a.digest)
    assert list(store.layers.root.iterdir()) == []


def test_crash_mid_unpack_leaves_nothing_used(runtime: Runtime, make_package: Callable[..., Path],
                                              layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    """A killed install leaves a temporary directory and orphan layers: never used, swept by recover and the GC."""
    package_dir = make_package({"app/x": "x"}, cmd=[BUSYBOX, "cat", "/opt/one"])
    [digest] = add_aos_layers(package_dir, [layer_blob({"opt/one": "1"})])
    root = runtime.packages.layers.root
    root.mkdir(parents=True)
    (root / f".unpacking-{digest.split(':')[1][:16]}-deadbeef").mkdir()  # what a kill mid-unpack leaves
    runtime.recover()
    assert store_entries(runtime) == []
    package = runtime.install(package_dir)
    runtime.packages.uninstall(package.digest)
    runtime.packages.layers.ensure(digest, package_dir / "blobs" / "sha256" / digest.split(":")[1], "orphan")
    assert store_entries(runtime) == [digest.split(":")[1]]  # unpacked, but no manifest lists it
    runtime.packages.collect(set(), GcPolicy())
    assert store_entries(runtime) == []


def test_layers_travel_through_a_registry_an_archive_and_an_oci_layout(
        registry: RegistryServer, runtime: Runtime, make_package: Callable[..., Path],
        layer_blob: Callable[..., tuple[bytes, str]], tmp_path: Path) -> None:
    package_dir = make_package({"app/main.py": SLEEPING_IMPORTER}, cmd=["python3", "-u", "/app/main.py"])
    [layer_digest] = add_aos_layers(package_dir, [layer_blob({GREETING_MODULE: "TEXT = 'pulled with its layer'\n"})])
    repository = f"{registry.host}/aos/with-layer"
    with RegistryClient() as client:
        digest = client.push_package(f"{repository}:1", package_dir)
        # the device agent pulls by digest and runs it
        agent = DeviceAgent(runtime, client, tmp_path / "pulls")
        identity = InstanceIdentity("svc-pulled", "subject", 0)
        desired = Desired(identity.service_id, identity.subject_id, identity.index, f"{repository}@{digest}", digest,
                          identity.instance_id)
        assert agent.converge(desired, lambda _: None).phase == "Starting"
        assert wait_for_log(runtime, identity.instance_id, "pulled").splitlines()[-1] == "pulled with its layer"
        assert runtime.packages.get(digest).aos_layer_digests == (layer_digest,)
        # and the local forms: an archive and an OCI layout made from the registry's copy
        archive_digest, archive = pull_package(client, f"{repository}@{digest}", tmp_path / "package.tar")
        layout_digest, layout = pull_package(client, f"{repository}@{digest}", tmp_path / "layout", oci_layout=True)
    assert archive_digest == layout_digest == digest
    runtime.stop(identity.instance_id)
    runtime.packages.uninstall(digest)
    assert store_entries(runtime) == []
    for number, source in enumerate((archive, layout)):
        installed = runtime.install(materialize(open_package(source), tmp_path / f"local{number}"))
        assert installed.digest == digest and installed.aos_layer_digests == (layer_digest,)
        local = InstanceIdentity(f"svc-local-{number}", "subject", 0)
        runtime.start(local, installed)
        assert wait_for_log(runtime, local.instance_id, "pulled").splitlines()[-1] == "pulled with its layer"
        runtime.stop(local.instance_id)
    manifest = json.loads((tmp_path / "local0" / "manifest.json").read_text())
    assert [layer["mediaType"] for layer in manifest["layers"]][1:] == [AOS_LAYER_MEDIA_TYPE]


def test_the_agent_pulls_a_shared_layer_once_and_refuses_a_bad_layer_list_before_any_blob(
        registry: RegistryServer, runtime: Runtime, make_package: Callable[..., Path],
        layer_blob: Callable[..., tuple[bytes, str]], tmp_path: Path) -> None:
    shared = layer_blob({GREETING_MODULE: "TEXT = 'one pull'\n"})
    with RegistryClient() as client:
        agent = DeviceAgent(runtime, client, tmp_path / "pulls")
        pushed = []
        for name in ("first", "second"):
            package_dir = make_package({"app/main.py": SLEEPING_IMPORTER, f"app/{name}": name},
                                       cmd=["python3", "-u", "/app/main.py"])
            [layer_digest] = add_aos_layers(package_dir, [shared])
            repository = f"{registry.host}/aos/{name}"
            pushed.append((repository, client.push_package(f"{repository}:1", package_dir)))
        downloads = []
        for number, (repository, digest) in enumerate(pushed):
            identity = InstanceIdentity(f"svc-pull-{number}", "subject", 0)
            before = client.stats.snapshot()["blobs_downloaded"]
            outcome = agent.converge(Desired(identity.service_id, identity.subject_id, identity.index,
                                             f"{repository}@{digest}", digest, identity.instance_id), lambda _: None)
            assert outcome.phase == "Starting", outcome
            downloads.append(client.stats.snapshot()["blobs_downloaded"] - before)
            assert "one pull" in wait_for_log(runtime, identity.instance_id, "one pull")
        assert downloads == [4, 3]  # config, service config, service layer (+ the Aos layer the first time)
        assert runtime.packages.get(pushed[1][1]).aos_layer_digests == (layer_digest,)

        bad_dir = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
        add_aos_layers(bad_dir, [gzip_tar({"opt/x": "x"})], media_type="application/vnd.oci.image.layer.v1.tar+zstd")
        repository = f"{registry.host}/aos/bad"
        digest = client.push_package(f"{repository}:1", bad_dir)
        identity = InstanceIdentity("svc-pull-bad", "subject", 0)
        before = client.stats.snapshot()["blobs_downloaded"]
        outcome = agent.converge(Desired(identity.service_id, identity.subject_id, identity.index,
                                         f"{repository}@{digest}", digest, identity.instance_id), lambda _: None)
        assert (outcome.phase, outcome.reason) == ("Failed", "PullFailed")
        assert f"manifest {digest}: layers[1]" in outcome.message and "is not an Aos layer" in outcome.message
        assert client.stats.snapshot()["blobs_downloaded"] == before and not runtime.packages.has(digest)


def _archive(package_dir: Path, archive: Path) -> Path:
    """The package as devices receive it: a plain tar of ./manifest.json and ./blobs/sha256/*."""
    with tarfile.open(archive, "w") as tar:
        tar.add(package_dir / "manifest.json", "./manifest.json")
        for blob in sorted((package_dir / "blobs" / "sha256").iterdir()):
            tar.add(blob, f"./blobs/sha256/{blob.name}")
    return archive


def _aosctl_run(tmp_path: Path, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aos_operator.cli", "run", str(target), *extra, "--timeout", "3", "--no-network",
         "--state-dir", str(tmp_path / "cli-state"), "--run-dir", str(tmp_path / "cli-run"),
         "--cache-dir", str(tmp_path / "cli-cache"), "--cgroup-parent", f"/aos-test-{tmp_path.name[-12:]}"],
        capture_output=True, text=True, timeout=120, check=False)


def test_aosctl_runs_a_package_archive_with_its_layer_and_refuses_a_hostile_one(
        tmp_path: Path, make_package: Callable[..., Path], layer_blob: Callable[..., tuple[bytes, str]]) -> None:
    package_dir = make_package({"app/main.py": SLEEPING_IMPORTER}, cmd=["python3", "-u", "/app/main.py"])
    add_aos_layers(package_dir, [layer_blob({GREETING_MODULE: "TEXT = 'run from an archive'\n"})])
    process = _aosctl_run(tmp_path, _archive(package_dir, tmp_path / "good.tar"))
    assert process.returncode == 0, process.stderr
    assert "run from an archive" in process.stdout
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
    hostile = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    add_aos_layers(hostile, [gzip_tar({}, [_member("opt/link", tarfile.SYMTYPE, linkname="../../../etc/shadow")])])
    process = _aosctl_run(tmp_path, _archive(hostile, tmp_path / "hostile.tar"))
    assert process.returncode != 0 and "Traceback" not in process.stderr
    assert "Aos layer sha256:" in process.stderr and "points outside the layer" in process.stderr


def test_the_agent_refuses_a_layer_blob_too_large_for_the_device_before_pulling_it(
        registry: RegistryServer, runtime_config: RuntimeConfig, make_package: Callable[..., Path],
        tmp_path: Path) -> None:
    runtime = Runtime(replace(runtime_config, max_layer_bytes=1 << 20))
    tree = tmp_path / "big-layer"
    (tree / "opt").mkdir(parents=True)
    (tree / "opt" / "noise").write_bytes(os.urandom(3 << 20))  # incompressible: the blob is about 3 MiB
    package_dir = make_package({"app/x": "x"}, cmd=[BUSYBOX, "true"])
    [layer_digest] = add_aos_layers(package_dir, [build_aos_layer_blob(tree, tmp_path / "big-store")])
    repository = f"{registry.host}/aos/big-layer"
    with RegistryClient() as client:
        digest = client.push_package(f"{repository}:1", package_dir)
        agent = DeviceAgent(runtime, client, tmp_path / "pulls")
        identity = InstanceIdentity("svc-big-layer", "subject", 0)
        outcome = agent.converge(Desired(identity.service_id, identity.subject_id, identity.index,
                                         f"{repository}@{digest}", digest, identity.instance_id), lambda _: None)
        assert (outcome.phase, outcome.reason) == ("Failed", "PullFailed")
        assert f"layers[1] ({layer_digest}): a blob of" in outcome.message
        assert "device's maximum unpacked layer size (1048576 bytes)" in outcome.message
        assert client.stats.snapshot()["blobs_downloaded"] == 0 and not runtime.packages.has(digest)


def test_the_greeter_example_runs_with_its_layer_and_fails_to_import_without_it(tmp_path: Path) -> None:
    """The whole local loop: `aosctl run DIR --layer DIR` builds the package with layers[1..] and the
    runtime stacks the layer under the service layer (examples/greeter, examples/pylibs-layer)."""
    with_layer = _aosctl_run(tmp_path, EXAMPLES / "greeter", "--layer", str(EXAMPLES / "pylibs-layer"))
    assert with_layer.returncode == 0, with_layer.stderr
    assert "Hello, edge, from the pylibs layer" in with_layer.stdout
    without = _aosctl_run(tmp_path, EXAMPLES / "greeter")
    assert "No module named 'aos_greeting'" in without.stdout + without.stderr
    assert "Hello, edge" not in without.stdout
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
