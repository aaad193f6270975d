"""Hostile packages against the runtime (root, real runc): every input is crafted here by hand
(tar headers and gzip streams with tarfile/zlib/bytes, JSON written directly), never with the
project's builder. Each test asserts the refusal, its message, and that nothing changed outside
the scratch directories: a canary directory elsewhere on the host, /proc/mounts, `losetup -a`,
runc's containers, processes, and the disk use of the state directory."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import leftovers, log_text, wait_for_log

from aos_operator.bounded import MAX_PATH_DEPTH
from aos_operator.errors import InputError, PackageError, RuntimeFailure
from aos_operator.runtime import InstanceIdentity, Phase, Runtime, RuntimeConfig
from aos_operator.runtime.layers import UNCOMPRESSED_SIZE_ANNOTATION
from aos_operator.runtime.rootfs import _make_top_layer, hosts_file, mount_points
from tests.unit.test_hostile_values import SYSCTL_VALUES_OF_FORM

pytestmark = pytest.mark.root  # runc, mounts, loop devices, cgroups

PYTHON = "/usr/bin/python3"
SMALL_MAX = 8 << 20  # the device maximum the bomb tests configure


# --- crafting packages by hand ------------------------------------------------------------------

def _blob(directory: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_package(directory: Path, layer_blob: bytes, *, cmd: tuple[str, ...] = (PYTHON, "-c", "pass"),
                  working_dir: str = "", env: tuple[str, ...] = (), service: Mapping[str, Any] | None = None,
                  layer_annotations: Mapping[str, str] | None = None) -> Path:
    """A package directory as a device receives it, around a layer blob given as bytes."""
    image = {"architecture": "amd64", "os": "linux",
             "config": {"Cmd": list(cmd), "WorkingDir": working_dir, "Env": list(env)}}
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(directory, layer_blob)}
    if layer_annotations:
        layer["annotations"] = dict(layer_annotations)
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(directory, json.dumps(image).encode())},
        "aosService": {"mediaType": "application/vnd.aos.service.config.v1+json",
                       **_blob(directory, json.dumps(dict(service or {})).encode())},
        "layers": [layer],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def tar_of(*entries: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE, linkname: str = "",
          mode: int | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.size = len(data) if data is not None else 0
    return info, data


def zeros_bomb(total: int) -> bytes:
    """gzip of a tar whose one file declares `total` zero bytes, made without compressing them:
    after a full flush, deflate compresses each MiB of zeros to the same bytes, so one compressed
    MiB is repeated. The gzip trailer is not computed; the runtime must stop long before it."""
    info = tarfile.TarInfo("app/zeros")
    info.size = total
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(info.tobuf(tarfile.PAX_FORMAT)) + compressor.flush(zlib.Z_FULL_FLUSH)
    mebibyte = bytes(1 << 20)
    first = compressor.compress(mebibyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(mebibyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(mebibyte) + compressor.flush(zlib.Z_FULL_FLUSH) == repeated
    chunks = -(-(total + 1024) // (1 << 20))
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return gzip_header + head + first + repeated * (chunks - 1) + compressor.flush(zlib.Z_FINISH) + bytes(8)


def gnu_sparse_header(name: str, real_size: int, data: bytes) -> bytes:
    """A GNU 'S' (old GNU sparse) member by hand: a map of one data region at the end of a file
    of `real_size` bytes, the real size in base-256, checksum recomputed."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = tarfile.GNUTYPE_SPARSE, len(data), 0o644
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    offset = real_size - len(data)
    block[386:398] = b"\x80" + offset.to_bytes(11, "big")
    block[398:410] = f"{len(data):011o}\0".encode()
    block[482] = 0  # not extended
    block[483:495] = b"\x80" + real_size.to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block[:512]):06o}\0 ".encode()
    padding = bytes(-len(data) % 512)
    return bytes(block[:512]) + data + padding + bytes(1024)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# --- what must not change -----------------------------------------------------------------------

@pytest.fixture
def canary() -> Iterator[Path]:
    """A directory outside every scratch directory of the test; nothing may appear in it."""
    directory = Path("/var/tmp") / f"aos-canary-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o700)
    (directory / "keep").write_text("canary\n")
    os.chmod(directory / "keep", 0o600)
    yield directory
    shutil.rmtree(directory)


def canary_state(directory: Path) -> list[tuple[str, int]]:
    return sorted((str(path.relative_to(directory)), path.lstat().st_mode)
                  for path in [directory, *directory.rglob("*")])


def disk_use(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(entry.lstat().st_blocks * 512 for entry in [path, *path.rglob("*")])


def assert_untouched(runtime: Runtime, canary: Path, before: list[tuple[str, int]], tmp_path: Path) -> None:
    assert canary_state(canary) == before
    assert not [line for line in Path("/proc/mounts").read_text().splitlines()
                if str(tmp_path) in line or str(canary) in line]
    assert leftovers(runtime) == []
    layers = runtime.packages.layers.root
    assert not layers.exists() or list(layers.iterdir()) == [], "a refused unpack left files in the layer store"
    assert runtime.packages.digests() == []


def escape_to(canary: Path) -> str:
    return "/" + "../" * 40 + str(canary).lstrip("/") + "/escaped"


# --- 1. WorkingDir -------------------------------------------------------------------------------

APP_LAYER = gz(tar_of(entry("app", kind=tarfile.DIRTYPE), entry("app/main.py", b"print('hi')\n"),
                      entry("etc", kind=tarfile.DIRTYPE), entry("etc/hosts", b"127.0.0.1 x\n"),
                      entry("opt", kind=tarfile.SYMTYPE, linkname="/usr"),
                      entry("srv", kind=tarfile.SYMTYPE, linkname="/app")))


@pytest.mark.parametrize("working_dir, message", [
    ("CLIMB", "contains '..'"),
    ("/app/../../../../tmp", "contains '..'"),
    ("/app\0x", "contains a NUL byte"),
    ("/app\nx", "contains a control character"),
    ("app", "is not an absolute path"),
    ("/etc/hosts", "'/etc/hosts': the service layer has no such directory"),
    ("/missing", "'/missing': the service layer has no such directory"),
    ("/opt", "'/opt': the service layer has no such directory"),  # a link to /usr, not in the layer
])
def test_working_dir_is_refused_at_install(working_dir: str, message: str, runtime: Runtime, canary: Path,
                                           tmp_path: Path) -> None:
    before = canary_state(canary)
    working_dir = escape_to(canary) if working_dir == "CLIMB" else working_dir
    package = write_package(tmp_path / "package", APP_LAYER, working_dir=working_dir)
    with pytest.raises(PackageError) as caught:
        runtime.install(package)
    assert "WorkingDir" in str(caught.value) and message in str(caught.value)
    assert not (canary / "escaped").exists()
    assert_untouched(runtime, canary, before, tmp_path)


def test_working_dir_is_checked_again_at_start(runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    """A package installed earlier (or an image config changed behind the runtime's back) is checked
    again when an instance starts: nothing is set up, no supervisor crashes on it."""
    before = canary_state(canary)
    installed = runtime.install(write_package(tmp_path / "package", APP_LAYER, working_dir="/app",
                                              cmd=(PYTHON, "-c", "import time; time.sleep(60)")))
    identity = InstanceIdentity("svc-hostile", "subject", 0)
    for working_dir, message in ((escape_to(canary), "contains '..'"), ("/app\0x", "NUL"),
                                 ("/etc/hosts", "no such directory")):
        tampered = dataclasses.replace(installed, image_config=dataclasses.replace(installed.image_config,
                                                                                   working_dir=working_dir))
        with pytest.raises(PackageError, match=message):
            runtime.start(identity, tampered)
        assert not runtime.data_dir(identity.instance_id).exists()
    shutil.rmtree(installed.layer_path / "app")  # the layer lost its working directory
    with pytest.raises(PackageError, match="'/app': the service layer has no such directory"):
        runtime.start(identity, installed)
    assert runtime.list() == [] and not (canary / "escaped").exists()
    runtime.uninstall(installed.digest)
    assert_untouched(runtime, canary, before, tmp_path)


def test_working_dir_through_a_link_inside_the_layer_runs(runtime: Runtime, tmp_path: Path) -> None:
    """/srv is a link to /app inside the layer: resolved within the layer, it is a directory."""
    script = "import os; print('CWD', os.getcwd(), sorted(os.listdir('.')), flush=True)"
    installed = runtime.install(write_package(tmp_path / "package", APP_LAYER, working_dir="/srv",
                                              cmd=(PYTHON, "-c", script)))
    status = runtime.start(InstanceIdentity("svc-cwd", "subject", 0), installed, restart=False)
    assert status.phase in (Phase.RUNNING, Phase.STOPPED)
    text = wait_for_log(runtime, status.instance_id, "CWD ")
    assert "CWD /app ['main.py']" in text  # the kernel reports the resolved directory
    runtime.stop(status.instance_id)


def test_top_layer_never_creates_outside_its_root(canary: Path, tmp_path: Path) -> None:
    """Defence in depth under the install check: a spec whose mount destinations climb out, or
    run into /etc/hosts, makes the top-layer builder fail without touching the host."""
    before = canary_state(canary)
    for destination in (escape_to(canary), "/etc/hosts/x"):
        top = tmp_path / f"top-{uuid.uuid4().hex[:6]}"
        spec = {"mounts": [{"destination": destination, "type": "tmpfs", "source": "tmpfs"}], "hostname": "h"}
        with pytest.raises(RuntimeFailure):
            _make_top_layer(top, mount_points(spec, os.path.isdir), hosts_file("h"), "")
    assert canary_state(canary) == before and not (canary / "escaped").exists()


# --- 2. decompression and sparse bombs -------------------------------------------------------------

@pytest.fixture
def small_runtime(runtime_config: RuntimeConfig) -> Iterator[Runtime]:
    node_runtime = Runtime(dataclasses.replace(runtime_config, max_layer_bytes=SMALL_MAX))
    yield node_runtime
    node_runtime.cleanup()


def refused_after(message: str) -> int:
    return int(message.split("refused after ", 1)[1].split(" ", 1)[0])


def test_ten_gib_of_zeros_is_refused_at_its_header(small_runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    before = canary_state(canary)
    package = write_package(tmp_path / "package", zeros_bomb(10 << 30))
    assert (package / "blobs").exists() and disk_use(package) < 16 << 20  # the bomb is about 10 MB
    with pytest.raises(PackageError) as caught:
        small_runtime.install(package)
    message = str(caught.value)
    assert f"unpacks to more than the device's maximum unpacked layer size ({SMALL_MAX} bytes)" in message
    assert refused_after(message) > 10 << 30  # refused by the member's declared size, before its data
    assert "--max-layer-size" in message and "nothing was installed" in message
    assert disk_use(small_runtime.config.state_root) < 1 << 20
    assert_untouched(small_runtime, canary, before, tmp_path)


def test_many_files_are_stopped_while_streaming(small_runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    """No header lies, but together the files pass the bound: the stream count stops the unpack
    within one read of the bound, and the temporary directory is removed."""
    before = canary_state(canary)
    files = [entry(f"app/file{index:03d}", bytes(256 << 10)) for index in range(64)]  # 16 MiB
    package = write_package(tmp_path / "package", gz(tar_of(entry("app", kind=tarfile.DIRTYPE), *files)))
    with pytest.raises(PackageError) as caught:
        small_runtime.install(package)
    written = refused_after(str(caught.value))
    assert SMALL_MAX < written <= SMALL_MAX + (256 << 10) + 1024
    assert disk_use(small_runtime.config.state_root) < 1 << 20
    assert_untouched(small_runtime, canary, before, tmp_path)


def test_declared_uncompressed_size_is_a_bound(runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    before = canary_state(canary)
    tar = tar_of(entry("app", kind=tarfile.DIRTYPE), entry("app/data", os.urandom(1 << 20)))
    lying = write_package(tmp_path / "lying", gz(tar), layer_annotations={UNCOMPRESSED_SIZE_ANNOTATION: "100000"})
    with pytest.raises(PackageError, match=r"unpacks to more than its declared uncompressed size \(100000 bytes\)"):
        runtime.install(lying)
    assert_untouched(runtime, canary, before, tmp_path)
    honest = write_package(tmp_path / "honest", gz(tar),
                           layer_annotations={UNCOMPRESSED_SIZE_ANNOTATION: str(len(tar))})
    installed = runtime.install(honest)
    assert (installed.layer_path / "app" / "data").stat().st_size == 1 << 20
    bad = write_package(tmp_path / "bad", gz(tar), layer_annotations={UNCOMPRESSED_SIZE_ANNOTATION: "-1"})
    with pytest.raises(PackageError, match="expected a decimal number of bytes"):
        runtime.install(bad)


def test_free_disk_is_a_bound(runtime_config: RuntimeConfig, canary: Path, tmp_path: Path) -> None:
    """A layer store on a 4 MiB file system: an 8 MiB layer is refused before the disk is full."""
    before = canary_state(canary)
    small_disk = tmp_path / "small-disk"
    small_disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small_disk)], check=True)
    try:
        node_runtime = Runtime(dataclasses.replace(runtime_config, state_root=small_disk / "state"))
        files = [entry(f"app/file{index}", bytes(1 << 20)) for index in range(8)]
        package = write_package(tmp_path / "package", gz(tar_of(entry("app", kind=tarfile.DIRTYPE), *files)))
        with pytest.raises(RuntimeFailure, match="free on the layer store's file system; nothing was installed"):
            node_runtime.install(package)
        assert os.statvfs(small_disk).f_bfree * os.statvfs(small_disk).f_frsize > 1 << 20  # not filled up
        layers = node_runtime.packages.layers.root
        assert not layers.exists() or list(layers.iterdir()) == []
    finally:
        # install() starts the node supervisor ahead of a start; it logs under the state root and
        # exits after supervisor_linger with no instances, which frees the file system
        deadline = time.monotonic() + 30
        while subprocess.run(["umount", str(small_disk)], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, f"{small_disk} stayed busy"
            time.sleep(0.1)
    assert canary_state(canary) == before


SPARSE_LAYERS = {
    "GNU type S": lambda: gnu_sparse_header("app/big", 1 << 40, b"tail" * 384),
    "PAX sparse 1.0": lambda: tar_of((_pax("app/big", {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                                       "GNU.sparse.name": "app/big",
                                                       "GNU.sparse.realsize": str(1 << 40)}, 1024),
                                      b"1\n0\n512\n".ljust(512, b"\0") + b"x" * 512)),
    "PAX sparse 0.1": lambda: tar_of((_pax("app/big", {"GNU.sparse.map": f"{(1 << 40) - 512},512",
                                                       "GNU.sparse.size": str(1 << 40),
                                                       "GNU.sparse.numblocks": "1"}, 512), b"x" * 512)),
    "PAX sparse key alone": lambda: tar_of((_pax("app/big", {"GNU.sparse.realsize": str(1 << 40)}, 3), b"abc")),
}


def _pax(name: str, headers: dict[str, str], size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.pax_headers = size, 0o644, headers
    return info


@pytest.mark.parametrize("case", sorted(SPARSE_LAYERS))
def test_sparse_members_are_refused_by_their_header(case: str, runtime: Runtime, canary: Path,
                                                    tmp_path: Path) -> None:
    before = canary_state(canary)
    package = write_package(tmp_path / "package", gz(SPARSE_LAYERS[case]()))
    with pytest.raises(PackageError, match=r"member 'app/big': GNU sparse files .* are not allowed") as caught:
        runtime.install(package)
    assert "rootfs layer sha256:" in str(caught.value)
    assert disk_use(runtime.config.state_root) < 1 << 20
    assert_untouched(runtime, canary, before, tmp_path)


def test_huge_extended_header_is_refused_before_it_is_read(runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    before = canary_state(canary)
    info = tarfile.TarInfo("app/x")
    info.pax_headers = {"comment": "x" * (2 << 20)}
    package = write_package(tmp_path / "package", gz(tar_of((info, b""))))
    with pytest.raises(PackageError, match=r"an extended header of \d+ bytes \(at most 1048576\)"):
        runtime.install(package)
    assert_untouched(runtime, canary, before, tmp_path)


def test_blob_that_is_a_link_to_a_device_is_refused(runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    """A package whose empty-digest blob is a symlink to /dev/zero would be read forever."""
    before = canary_state(canary)
    package = write_package(tmp_path / "package", gz(tar_of(entry("app", kind=tarfile.DIRTYPE))))
    manifest = json.loads((package / "manifest.json").read_text())
    empty = hashlib.sha256(b"").hexdigest()
    os.symlink("/dev/zero", package / "blobs" / "sha256" / empty)
    manifest["layers"][0].update(digest=f"sha256:{empty}", size=len("/dev/zero"))  # the link's own size
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="symlink|not a regular file"):
        runtime.install(package)
    (package / "manifest.json").unlink()
    os.symlink("/dev/zero", package / "manifest.json")
    with pytest.raises((PackageError, InputError), match="manifest.json"):
        runtime.install(package)
    assert_untouched(runtime, canary, before, tmp_path)


# --- 3. quotas -----------------------------------------------------------------------------------------

def test_storage_quota_the_disk_cannot_back_is_refused(runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    before = canary_state(canary)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    installed = runtime.install(write_package(tmp_path / "package", APP_LAYER,
                                              service={"quotas": {"storageLimit": free + (1 << 30)}}))
    identity = InstanceIdentity("svc-quota", "subject", 0)
    with pytest.raises(RuntimeFailure, match=r"quotas the node cannot back: storageLimit \d+ bytes need \d+ bytes, "
                                             r"but only \d+ bytes are free"):
        runtime.start(identity, installed)
    assert not runtime.data_dir(identity.instance_id).exists()  # no sparse image, no record
    assert disk_use(runtime.config.state_root) < 1 << 20
    runtime.uninstall(installed.digest)
    assert_untouched(runtime, canary, before, tmp_path)


@pytest.mark.parametrize("key", ["cpuDmipsLimit", "ramLimit", "pidsLimit", "noFileLimit", "tmpLimit", "cpuLimit"])
def test_zero_quota_is_refused_at_install(key: str, runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    before = canary_state(canary)
    package = write_package(tmp_path / "package", APP_LAYER, service={"quotas": {key: 0}})
    with pytest.raises(PackageError, match=rf"quotas\.{key}: 0 is not a usable limit"):
        runtime.install(package)
    assert_untouched(runtime, canary, before, tmp_path)


# --- 4. env, host name, sysctl --------------------------------------------------------------------------

@pytest.mark.parametrize("image_env, service, message", [
    (("FOO=1\nAOS_SERVICE_ID=evil",), {}, "contains NUL, a newline"),
    (("AOS_SERVICE_ID=evil",), {}, "AOS_SERVICE_ID is reserved"),
    (("AOS_NEW=1",), {}, "AOS_NEW is reserved"),
    ((" AOS_SERVICE_ID=evil",), {}, "contains whitespace"),
    (("=value",), {}, "is not NAME=value"),
    (("A\0B=1",), {}, "contains whitespace, NUL"),
    ((), {"hostname": "evil\n"}, "is not a valid host name"),
    ((), {"hostname": "a" * 65}, "is not a valid host name"),
    ((), {"sysctl": {"net.ipv4.ip_forward": "1"}}, "sysctl 'net.ipv4.ip_forward' is not allowed"),
    ((), {"sysctl": {"kernel.core_pattern": "|/tmp/x"}}, "sysctl 'kernel.core_pattern' is not allowed"),
    ((), {"sysctl": {"net.core.somaxconn": "1\nkernel.x=1"}}, "is not a one-line printable value"),
    ((), {"sysctl": {"net.core.somaxconn": "abc"}}, "sysctl net.core.somaxconn: 'abc' is not a number"),
])
def test_injection_is_refused_at_install(image_env: tuple[str, ...], service: dict, message: str, runtime: Runtime,
                                         canary: Path, tmp_path: Path) -> None:
    before = canary_state(canary)
    package = write_package(tmp_path / "package", APP_LAYER, env=image_env, service=service)
    with pytest.raises(PackageError, match=message):
        runtime.install(package)
    assert_untouched(runtime, canary, before, tmp_path)


def test_allowed_sysctl_and_env_reach_the_container(runtime: Runtime, tmp_path: Path) -> None:
    script = ("import os; print('SEEN', os.environ['AOS_SERVICE_ID'], os.environ['GREETING'], "
              "open('/proc/sys/net/ipv4/tcp_keepalive_time').read().strip(), flush=True)")
    installed = runtime.install(write_package(tmp_path / "package", APP_LAYER, cmd=(PYTHON, "-c", script),
                                              env=("GREETING=hello\tthere",),
                                              service={"sysctl": {"net.ipv4.tcp_keepalive_time": "321"}}))
    status = runtime.start(InstanceIdentity("svc-env", "subject", 0), installed, restart=False)
    text = wait_for_log(runtime, status.instance_id, "SEEN ")
    assert "SEEN svc-env hello\tthere 321" in text, log_text(runtime, status.instance_id)
    runtime.stop(status.instance_id)


def test_a_value_of_each_allowed_sysctls_form_is_taken_by_runc_and_the_kernel(runtime: Runtime,
                                                                              tmp_path: Path) -> None:
    """The forms the validator accepts are ones the kernel takes: runc writes each at start."""
    script = ("import json; print('SEEN', json.dumps({key: open('/proc/sys/' + key.replace('.', '/')).read() "
              f"for key in {sorted(SYSCTL_VALUES_OF_FORM)!r}}}), flush=True)")
    installed = runtime.install(write_package(tmp_path / "package", APP_LAYER, cmd=(PYTHON, "-c", script),
                                              service={"sysctl": SYSCTL_VALUES_OF_FORM}))
    status = runtime.start(InstanceIdentity("svc-sysctl", "subject", 0), installed, restart=False)
    assert status.phase != Phase.FAILED, status.message
    text = wait_for_log(runtime, status.instance_id, "SEEN ")
    seen = json.loads(text.split("SEEN ", 1)[1].splitlines()[0])
    assert {key: value.split() for key, value in seen.items()} == \
        {key: value.split() for key, value in SYSCTL_VALUES_OF_FORM.items()}
    runtime.stop(status.instance_id)


# --- header fields Python cannot take, and depth ------------------------------------------------

def test_a_layer_deeper_than_the_bound_is_refused_and_one_at_it_is_copied_and_removed(
        runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    """Every later walk of an unpacked layer (the service group's copy, removal by the GC) recurses
    once per level: 1200 levels used to crash them, and the agent at each start-up after."""
    before = canary_state(canary)
    too_deep = write_package(tmp_path / "deep", gz(tar_of(entry("d/" * MAX_PATH_DEPTH + "f", b"x"))))
    with pytest.raises(PackageError, match=rf"is {MAX_PATH_DEPTH + 1} levels deep \(at most {MAX_PATH_DEPTH}\)"):
        runtime.install(too_deep)
    assert_untouched(runtime, canary, before, tmp_path)
    deepest = write_package(tmp_path / "deepest", gz(tar_of(entry("d/" * (MAX_PATH_DEPTH - 1) + "f", b"x"))))
    installed = runtime.install(deepest)
    owned = runtime.packages.layers.owned(installed.layer_digest, 4321)
    leaf = owned / ("d/" * (MAX_PATH_DEPTH - 1) + "f")
    assert leaf.read_bytes() == b"x" and leaf.stat().st_gid == 4321
    runtime.packages.uninstall(installed.digest)
    assert list(runtime.packages.layers.root.iterdir()) == []


def _pax_entry(name: str, headers: dict[str, str], kind: bytes = tarfile.REGTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info, data = entry(name, b"" if kind == tarfile.REGTYPE else None, kind=kind, linkname="f")
    info.pax_headers = headers
    return info, data or b""


@pytest.mark.parametrize("headers, kind, message", [
    ({"mtime": "1e30"}, tarfile.REGTYPE, "modification time 1e+30 is out of range"),
    ({"mtime": "inf"}, tarfile.DIRTYPE, "modification time inf is out of range"),
    ({"mtime": "nan"}, tarfile.SYMTYPE, "modification time nan is out of range"),
    ({"path": "app/a\0b"}, tarfile.REGTYPE, "path contains a NUL byte"),
    ({"linkpath": "f\0x"}, tarfile.LNKTYPE, "path contains a NUL byte"),
])
def test_header_fields_python_cannot_take_are_refused(headers: dict[str, str], kind: bytes, message: str,
                                                      runtime: Runtime, canary: Path, tmp_path: Path) -> None:
    before = canary_state(canary)
    layer = tar_of(entry("f", b"x"), _pax_entry("app/item", headers, kind))
    with pytest.raises(PackageError, match=re.escape(message) + r".*nothing was installed"):
        runtime.install(write_package(tmp_path / "package", gz(layer)))
    assert_untouched(runtime, canary, before, tmp_path)


def test_the_pull_check_bounds_the_configs_and_skips_what_install_never_reads(runtime: Runtime) -> None:
    packages = runtime.packages
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "1" * 64, "size": 10}
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "2" * 64, "size": 100}
    packages.check_manifest({"config": config, "layers": [layer]}, "pull r@x")
    with pytest.raises(PackageError, match=r"pull r@x: config: a config of 53687091200 bytes .*nothing was pulled"):
        packages.check_manifest({"config": {**config, "size": 50 << 30}, "layers": [layer]}, "pull r@x")
    with pytest.raises(PackageError, match=r"aosService: a config of"):
        packages.check_manifest({"config": config, "aosService": {**config, "size": 5 << 20}, "layers": [layer]}, "p")
    with pytest.raises(PackageError, match="expected a decimal number of bytes"):
        packages.check_manifest({"config": config, "layers": [
            {**layer, "annotations": {UNCOMPRESSED_SIZE_ANNOTATION: "9" * 5000}}]}, "p")
    assert [packages.pull_skips(field, layer["digest"]) for field in
            ("config", "aosService", "layers[0]", "layers[1]", "extra", "extra[3]")] == \
        [False, False, False, False, True, True]


def test_memory_does_not_grow_with_the_members_of_a_layer(tmp_path: Path) -> None:
    """A streamed tarfile keeps every header it read (about 1 KB each): 40 000 repeats of one
    directory, 89 KB of gzip, held 40 MB. The unpacker keeps no header and one time per directory."""
    import tracemalloc

    from aos_operator.runtime.layers import unpack_layer

    info = tarfile.TarInfo("app")
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    block = info.tobuf(tarfile.USTAR_FORMAT)
    blob = gz(block * 40_000 + bytes(1024))
    (tmp_path / "layer").mkdir()
    tracemalloc.start()
    try:
        unpack_layer(io.BytesIO(blob), tmp_path / "layer", "rootfs layer")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tmp_path / "layer" / "app").is_dir()
    assert peak < 8 << 20, f"{peak} bytes at the peak for 40 000 members"
