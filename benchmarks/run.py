"""Benchmark: from a service package on disk to the service's first line of output, and the
memory a running instance costs beyond its own processes.

Measured (median of --repeat runs, wall clock, as root):
  aos cold    Runtime.install + Runtime.start on an empty node (no node supervisor yet: install
              starts it in the background), until the first output line
  aos warm    Runtime.start of an already installed package by its digest (after a stop; the node
              supervisor is resident, as it is while any service runs), until the first line;
              against `runc run` of the bundle this start ran (its spec and assembled rootfs),
              measured right after it in the same repeat
  baseline    `umoci unpack` of an OCI layout holding the same image (same layer blob and image
              config, no Aos service config: umoci refuses non-tar entries in `layers`), then
              `runc run` of the unpacked bundle with the host's /usr bound in (our runtime
              takes /usr from the node's base file system), until the first line; "cold" is
              unpack + run, "warm" the `runc run` of the same prepared bundle alone
  memory      20 instances at once: the resident memory (VmRSS) of every process the project
              runs for them (the node supervisor; runc does not stay) plus this process's own
              growth while starting them (the agent's share), divided by 20; against conmon's
              VmRSS for one container of the same bundle and a Python interpreter that imports
              the supervisor module (what the former design ran per instance)
The service is a Python script run by the host's python3 that prints one line and sleeps. Each
repeat runs every start once in turn (baseline, ours, ours with the network), so that a change of
the machine's load falls on the baselines and on ours alike; medians are per measurement.
Every aos run above is without the instance network (loopback only); the network's cost is then
measured in the same run: the idle-node cold start and the stop (teardown of everything) with the
network (named netns, CNI bridge + host-local, the network's dnsmasq, the nftables firewall) as
ratios to the same runs without it, and the network's own setup and teardown.

The run roots (bundles, runc's state, the supervisor's socket) are on a tmpfs, as /run is on a
device; `--run-on-disk` keeps them on the work directory's file system (this machine's /run is).

    sudo .venv/bin/python benchmarks/run.py [--repeat 5] [--instances 20] [--run-on-disk]
"""

from __future__ import annotations

import argparse
import compileall
import errno
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aos_operator
from aos_operator.image import build_package, open_package
from aos_operator.packaging import materialize
from aos_operator.runtime import InstanceIdentity, Runtime, RuntimeConfig
from aos_operator.runtime.logs import LogFollower
from aos_operator.runtime.mounts import MNT_DETACH, umount
from aos_operator.runtime.supervisor import RECORD_FILE, prepare_bundle
from aos_operator.runtime.teardown import teardown_instance
from aos_operator.runtime.network.model import NetworkConfig

# How often a start's log is looked at for its line (the baseline reads runc's pipe). 0.2 ms
# measured no different from 1 ms here; an inotify wait was slower (README).
POLL_SECONDS = 0.001
SERVICE = "import time\nprint('ready', flush=True)\ntime.sleep(3600)\n"
QUOTAS = {"cpuDmipsLimit": 10000, "ramLimit": 128 << 20, "pidsLimit": 64}


def build(work: Path, tag: str = "") -> Path:
    """The service's package, made by the project's builder, as a package directory; `tag`
    makes a package of its own (another layer digest)."""
    tree = work / "tree" / "app"
    tree.mkdir(parents=True)
    (tree / "hello.py").write_text(SERVICE + (f"# {tag}\n" if tag else ""))
    image_config = {"architecture": "amd64", "os": "linux",
                    "config": {"Cmd": ["/usr/bin/python3", "-u", "/app/hello.py"]}}
    build_package(work / "tree", image_config, {"quotas": QUOTAS}, oci_layout=work / "layout-aos")
    return materialize(open_package(work / "layout-aos"), work / "package")


def wait_for_line(follower: LogFollower, needle: bytes, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = b""
    while needle not in seen:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {needle!r} within {timeout} s")
        seen += follower.read()
        time.sleep(POLL_SECONDS)


@dataclass
class Samples:
    """One list of wall times per measurement, a sample of each per repeat."""

    baseline_cold: list[float] = field(default_factory=list)  # umoci unpack + runc run
    baseline_warm: list[float] = field(default_factory=list)  # runc run of umoci's bundle
    bare: list[float] = field(default_factory=list)  # runc run of the aos bundle
    idle: list[float] = field(default_factory=list)
    resident: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    stop: list[float] = field(default_factory=list)
    net_idle: list[float] = field(default_factory=list)
    net_stop: list[float] = field(default_factory=list)


@contextmanager
def run_file_system(path: Path, on_disk: bool) -> Iterator[Path]:
    """Where the run roots go: a tmpfs, as /run is on a device (runc's own default state dir is
    /run/runc), unless `on_disk`. This machine's /run is on its disk."""
    path.mkdir()
    if not on_disk:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if not on_disk:
            for _ in range(100):  # a supervisor that is exiting may still hold its lock file there
                if umount(path) in (0, errno.EINVAL):
                    break
                time.sleep(0.1)
            else:
                umount(path, MNT_DETACH)


def aos_once(work: Path, runs: Path, n: int, samples: Samples, network: bool = False) -> None:
    """One repeat of the aos runs: cold on an idle node, cold beside a running service, warm
    (start of the installed package after a stop) and stop; without the network, the bare
    `runc run` of the warm start's own bundle right after it (so both see the same load)."""
    suffix = "net" if network else "lo"
    first, other = InstanceIdentity("bench", "subject", 0), InstanceIdentity("bench-other", "subject", 0)
    packages = [build(work / f"aos{n}{suffix}-{kind}", f"{n}{suffix}-{kind}") for kind in ("a", "b")]
    config = RuntimeConfig(state_root=work / f"state{n}{suffix}", run_root=runs / f"run{n}{suffix}",
                           cgroup_parent=f"/aos-bench-{uuid.uuid4().hex[:8]}",
                           network=NetworkConfig(enabled=network))
    runtime = Runtime(config)
    times = []
    for identity, package in ((first, packages[0]), (other, packages[1])):
        follower = LogFollower(runtime.log_path(identity.instance_id))
        began = time.perf_counter()
        runtime.start(identity, runtime.install(package), wait=False)
        wait_for_line(follower, b"ready")
        times.append(time.perf_counter() - began)
    (samples.net_idle if network else samples.idle).append(times[0])
    if not network:
        samples.resident.append(times[1])
    runtime.stop(first.instance_id)
    digest = runtime.status(first.instance_id).package  # what the agent holds: the installed digest
    if not network:
        follower = LogFollower(runtime.log_path(first.instance_id))
        began = time.perf_counter()
        runtime.start(first, digest, wait=False)
        wait_for_line(follower, b"ready")
        samples.warm.append(time.perf_counter() - began)
        began = time.perf_counter()
        runtime.stop(first.instance_id)
        samples.stop.append(time.perf_counter() - began)
        samples.bare.append(bare_runc_run(runtime, first, digest))
    else:
        follower = LogFollower(runtime.log_path(first.instance_id))
        runtime.start(first, digest, wait=False)
        wait_for_line(follower, b"ready")
        began = time.perf_counter()
        runtime.stop(first.instance_id)
        samples.net_stop.append(time.perf_counter() - began)
    runtime.cleanup()
    shutil.rmtree(config.state_root)
    shutil.rmtree(config.run_root)


def bare_runc_run(runtime: Runtime, identity: InstanceIdentity, digest: str) -> float:
    """`runc run` of exactly the bundle an aos start of this instance runs (its spec, its
    assembled rootfs), made as the runtime and the supervisor make it, then torn down."""
    plan = runtime._prepare(identity, runtime.packages.get(digest), (), restart=False)  # what Runtime.start writes
    prepare_bundle(plan)  # what the supervisor sets up before runc
    began = time.perf_counter()
    process = subprocess.Popen(["runc", "--root", str(runtime.runc.root), "run", "--bundle", plan.run_dir,
                                identity.instance_id], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    elapsed = time.perf_counter() - began
    if b"ready" not in line:
        raise RuntimeError(f"bare runc run printed {line!r}")
    runtime.runc.kill(identity.instance_id, "KILL")
    process.wait()
    teardown_instance(plan)
    return elapsed


def oci_layout_of(package: Path, layout: Path) -> None:
    """An OCI image layout with the package's image config and layer, without the Aos service config."""
    manifest = json.loads((package / "manifest.json").read_text())
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for descriptor in (manifest["config"], manifest["layers"][0]):
        hex_digest = descriptor["digest"].split(":")[1]
        shutil.copyfile(package / "blobs" / "sha256" / hex_digest, blobs / hex_digest)
    image_manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "config": manifest["config"], "layers": manifest["layers"][:1]}).encode()
    manifest_hex = hashlib.sha256(image_manifest).hexdigest()
    (blobs / manifest_hex).write_bytes(image_manifest)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{manifest_hex}",
        "size": len(image_manifest), "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))


def prepared_bundle(layout: Path, bundle: Path) -> None:
    """What `umoci unpack` gave, made runnable the way the runtime runs it (host /usr bound in)."""
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    rootfs = bundle / "rootfs"
    for entry in ("bin", "sbin", "lib", "lib64"):  # the host's merged-/usr links, as the base gives them
        if os.path.islink(f"/{entry}"):
            os.symlink(os.readlink(f"/{entry}"), rootfs / entry)
    (rootfs / "usr").mkdir(exist_ok=True)
    config["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]})
    config_path.write_text(json.dumps(config))


def baseline_once(layout: Path, work: Path, runs: Path, n: int, samples: Samples) -> None:
    """One repeat of the baseline: `umoci unpack`, then `runc run` of the unpacked bundle."""
    runc_root = runs / "runc-baseline"
    bundle = work / f"bundle{n}"
    container = f"bench-baseline-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    unpacked = time.perf_counter() - began
    prepared_bundle(layout, bundle)
    began = time.perf_counter()
    process = subprocess.Popen(["runc", "--root", str(runc_root), "run", "--bundle", str(bundle), container],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    run = time.perf_counter() - began
    if b"ready" not in line:
        raise RuntimeError(f"baseline printed {line!r}")
    samples.baseline_cold.append(unpacked + run)
    samples.baseline_warm.append(run)
    subprocess.run(["runc", "--root", str(runc_root), "kill", container, "KILL"], check=True)
    process.wait()
    subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", container], check=False)
    shutil.rmtree(bundle)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        with suppress(OSError):
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(proc.name))
    return found


def memory_per_instance(package: Path, work: Path, runs: Path, instances: int) -> tuple[float, int, int]:
    """(KiB per instance, supervisor KiB, this process's growth KiB) with `instances` running."""
    config = RuntimeConfig(state_root=work / "mem-state", run_root=runs / "mem-run",
                           cgroup_parent=f"/aos-bench-{uuid.uuid4().hex[:8]}", network=NetworkConfig(enabled=False))
    runtime = Runtime(config)
    installed = runtime.install(package)
    identities = [InstanceIdentity("bench-mem", "subject", n) for n in range(instances)]
    followers = [LogFollower(runtime.log_path(i.instance_id)) for i in identities]
    before = rss_kib(os.getpid())
    try:
        for identity in identities:
            runtime.start(identity, installed, wait=False)
        for follower in followers:
            wait_for_line(follower, b"ready", timeout=120)
        time.sleep(1)  # let the supervisor settle after the last start
        grown = max(0, rss_kib(os.getpid()) - before)
        ours = [pid for pid in processes_naming(str(config.run_root)) if pid != os.getpid()]
        supervisor = json.loads((config.run_root / RECORD_FILE).read_text())["pid"]
        if ours != [supervisor]:
            raise RuntimeError(f"expected the node supervisor alone, found processes {ours}")
        supervisor_kib = rss_kib(supervisor)
    finally:
        runtime.cleanup()
    shutil.rmtree(config.state_root, ignore_errors=True)
    shutil.rmtree(config.run_root, ignore_errors=True)
    return (supervisor_kib + grown) / instances, supervisor_kib, grown


def conmon_kib(package: Path, work: Path) -> int | None:
    """conmon's VmRSS while it monitors one container of the same prepared bundle."""
    if shutil.which("conmon") is None:
        return None
    layout, bundle, runc_root = work / "layout", work / "conmon-bundle", work / "runc-conmon"
    directory = work / "conmon"
    directory.mkdir()
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prepared_bundle(layout, bundle)
    container = f"bench-conmon-{uuid.uuid4().hex[:8]}"
    runc = shutil.which("runc") or "/usr/sbin/runc"
    subprocess.run(["conmon", "-c", container, "-u", container, "-n", container, "-r", runc, "-b", str(bundle),
                    "-p", str(directory / "pid"), "--conmon-pidfile", str(directory / "conmon.pid"),
                    "-l", f"k8s-file:{directory / 'log'}", "--log-size-max", str(1 << 20),
                    "--exit-dir", str(directory), "--socket-dir-path", str(directory),
                    "--runtime-arg", "--root", "--runtime-arg", str(runc_root)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (directory / "pid").exists():  # conmon's parent returns before runc create ends
            if time.monotonic() > deadline:
                raise RuntimeError("conmon did not create the container")
            time.sleep(0.01)
        subprocess.run(["runc", "--root", str(runc_root), "start", container], check=True)
        while b"ready" not in ((directory / "log").read_bytes() if (directory / "log").exists() else b""):
            if time.monotonic() > deadline:
                raise RuntimeError("conmon's container printed nothing")
            time.sleep(0.01)
        return rss_kib(int((directory / "conmon.pid").read_text()))
    finally:
        subprocess.run(["runc", "--root", str(runc_root), "kill", container, "KILL"], check=False)
        time.sleep(0.5)
        subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", container], check=False)


def python_supervisor_kib() -> int:
    """A Python interpreter with the supervisor module imported: the former per-instance cost."""
    child = subprocess.Popen([sys.executable, "-c", "import sys, aos_operator.runtime.supervisor\n"
                              "print('ready', flush=True)\nsys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    child.stdout.readline()
    try:
        return rss_kib(child.pid)
    finally:
        child.stdin.close()
        child.wait()


def network_runs(package: Path, work: Path, runs: Path, repeat: int) -> tuple[list[float], list[float]]:
    """The network alone: set up (first instance of its network: bridge and dnsmasq too) and tear down."""
    runtime = Runtime(RuntimeConfig(state_root=work / "state-network", run_root=runs / "run-network"))
    installed = runtime.install(package)
    setups, teardowns = [], []
    for n in range(repeat):
        instance_id = str(uuid.uuid4())
        began = time.perf_counter()
        runtime.network.setup(instance_id=instance_id, service_id="bench", subject_id="subject", index=n,
                              provider="bench", service=installed.service_config, image=installed.image_config)
        setups.append(time.perf_counter() - began)
        began = time.perf_counter()
        runtime.network.teardown(instance_id)
        teardowns.append(time.perf_counter() - began)
    return setups, teardowns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--run-on-disk", action="store_true",
                        help="keep the run roots (bundles, runc state, sockets) on the work directory's file system "
                             "instead of a tmpfs, the /run of a device")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/run.py: needs root (runc, mounts, cgroups)", file=sys.stderr)
        return 2
    # Byte-code as `pip install` leaves it: with PYTHONDONTWRITEBYTECODE in the environment, every
    # start of the node supervisor would compile its modules again.
    compileall.compile_dir(Path(aos_operator.__file__).parent, quiet=1)
    load_before = " ".join(f"{load:.2f}" for load in os.getloadavg())
    samples = Samples()
    with tempfile.TemporaryDirectory(prefix="aos-bench-") as temporary, run_file_system(
            Path(temporary) / "run", on_disk=args.run_on_disk) as runs:
        work = Path(temporary)
        package = build(work)
        layout = work / "layout"
        oci_layout_of(package, layout)
        # Each repeat measures every start once, one after the other, so a change of the machine's
        # load (2 cores shared with other jobs here) falls on the baselines and on ours alike.
        for n in range(args.repeat):
            baseline_once(layout, work, runs, n, samples)
            aos_once(work, runs, n, samples)
            aos_once(work, runs, n, samples, network=True)
        setup_runs, teardown_runs = network_runs(package, work, runs, args.repeat)
        per_instance, supervisor, grown = memory_per_instance(package, work, runs, args.instances)
        conmon = conmon_kib(package, work)
        python = python_supervisor_kib()
    baseline_cold, baseline_warm, bare, idle, resident, warm, stop, net_idle, net_stop = (
        statistics.median(runs) for runs in (samples.baseline_cold, samples.baseline_warm, samples.bare,
                                             samples.idle, samples.resident, samples.warm, samples.stop,
                                             samples.net_idle, samples.net_stop))
    setup, teardown = statistics.median(setup_runs), statistics.median(teardown_runs)
    warm_ratios = [w / b for w, b in zip(samples.warm, samples.bare, strict=True)]
    print(f"load average before the run: {load_before}")
    print(f"run roots (bundles, runc state): {'on the disk' if args.run_on_disk else 'on a tmpfs, as /run on a device'}; "
          f"the log polled every {POLL_SECONDS * 1000:g} ms")
    print(f"package on disk -> first output line, median of {args.repeat} runs")
    print(f"  baseline umoci unpack + runc run       : {baseline_cold * 1000:7.1f} ms  (1.00)")
    print(f"  aos cold beside a running service      : {resident * 1000:7.1f} ms  "
          f"({resident / baseline_cold:.2f} x baseline)  install + start, supervisor resident")
    print(f"  aos cold on an idle node               : {idle * 1000:7.1f} ms  "
          f"({idle / baseline_cold:.2f} x baseline)  install + start, supervisor started on demand")
    print(f"installed package -> first output line, median of {args.repeat} runs")
    print(f"  baseline runc run of the aos bundle    : {bare * 1000:7.1f} ms  (1.00)  same spec and rootfs")
    print(f"  aos warm (start, installed)            : {warm * 1000:7.1f} ms  ({warm / bare:.2f} x baseline)  "
          f"pairwise ratios {min(warm_ratios):.2f}..{max(warm_ratios):.2f}, median {statistics.median(warm_ratios):.2f}")
    print(f"  (runc run of umoci's bundle            : {baseline_warm * 1000:7.1f} ms  no seccomp, no limits)")
    print(f"resident memory per running instance, {args.instances} instances, beyond the containers")
    print(f"  aos (supervisor + agent growth)  : {per_instance / 1024:7.2f} MiB  "
          f"(supervisor {supervisor / 1024:.1f} MiB + this process +{grown / 1024:.1f} MiB, / {args.instances})")
    if conmon is not None:
        print(f"  conmon, one per container        : {conmon / 1024:7.2f} MiB  ({per_instance / conmon:.2f} x aos/conmon)")
    print(f"  a Python supervisor per instance : {python / 1024:7.2f} MiB  ({per_instance / python:.2f} x aos/python)")
    print("instance network (named netns, CNI bridge, dnsmasq, nftables) against loopback only")
    print(f"  aos cold on an idle node, with network : {net_idle * 1000:7.1f} ms  ({net_idle / idle:.2f} x without)")
    print(f"  stop (teardown), without network       : {stop * 1000:7.1f} ms")
    print(f"  stop (teardown), with network          : {net_stop * 1000:7.1f} ms  ({net_stop / stop:.2f} x without)")
    print(f"  network alone: set up {setup * 1000:.1f} ms, torn down {teardown * 1000:.1f} ms "
          f"(a network's first instance: bridge and dnsmasq included)")
    print(f"load average after the run: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
