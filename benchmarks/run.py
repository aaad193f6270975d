"""Benchmark: from a service package on disk to the service's first line of output.

Measured (median of --repeat runs, wall clock, as root):
  aos cold    Runtime.install + Runtime.start on an empty node, until the first output line
  aos warm    Runtime.start of an already installed package (after a stop), until the first line
  baseline    `umoci unpack` of an OCI layout holding the same image (same layer blob and image
              config, no Aos service config: umoci refuses non-tar entries in `layers`), then
              `runc run` of the unpacked bundle with the host's /usr bound in (our runtime
              takes /usr from the node's base file system), until the first line
and printed as ratios to the baseline, with the part of an aos start spent starting the
supervisor's Python interpreter. Both aos runs are made twice: without the instance network
(loopback only) and with it (named netns, CNI bridge + host-local, the network's dnsmasq, the
nftables firewall), and the stop (teardown of everything, the network included) is timed too;
the network's cost is printed as with/without ratios from the same run. The service is the example: a Python script run by the
host's python3 that prints one line and sleeps.

    sudo .venv/bin/python benchmarks/run.py [--repeat 5]
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

from aos_operator.image import build_package, open_package
from aos_operator.packaging import materialize
from aos_operator.runtime import InstanceIdentity, Runtime, RuntimeConfig
from aos_operator.runtime.logs import LogFollower
from aos_operator.runtime.network.model import NetworkConfig

SERVICE = "import time\nprint('ready', flush=True)\ntime.sleep(3600)\n"
QUOTAS = {"cpuDmipsLimit": 10000, "ramLimit": 128 << 20, "pidsLimit": 64}


def build(work: Path) -> Path:
    """The service's package, made by the project's builder, as a package directory."""
    tree = work / "tree" / "app"
    tree.mkdir(parents=True)
    (tree / "hello.py").write_text(SERVICE)
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
        time.sleep(0.001)


def aos_runs(package: Path, work: Path, repeat: int, network: bool) -> tuple[list[float], list[float], list[float]]:
    cold, warm, stops = [], [], []
    identity = InstanceIdentity("bench", "subject", 0)
    for n in range(repeat):
        suffix = "net" if network else "lo"
        config = RuntimeConfig(state_root=work / f"state{n}{suffix}", run_root=work / f"run{n}{suffix}",
                               cgroup_parent=f"/aos-bench-{uuid.uuid4().hex[:8]}",
                               network=NetworkConfig(enabled=network))
        runtime = Runtime(config)
        follower = LogFollower(runtime.log_path(identity.instance_id))
        began = time.perf_counter()
        installed = runtime.install(package)
        runtime.start(identity, installed, wait=False)
        wait_for_line(follower, b"ready")
        cold.append(time.perf_counter() - began)
        runtime.stop(identity.instance_id)
        follower = LogFollower(runtime.log_path(identity.instance_id))
        began = time.perf_counter()
        runtime.start(identity, installed.digest, wait=False)
        wait_for_line(follower, b"ready")
        warm.append(time.perf_counter() - began)
        began = time.perf_counter()
        runtime.stop(identity.instance_id)
        stops.append(time.perf_counter() - began)
        shutil.rmtree(config.state_root)
        shutil.rmtree(config.run_root)
    return cold, warm, stops


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


def baseline_runs(package: Path, work: Path, repeat: int) -> list[float]:
    layout = work / "layout"
    oci_layout_of(package, layout)
    runc_root = work / "runc-baseline"
    times = []
    for n in range(repeat):
        bundle = work / f"bundle{n}"
        container = f"bench-baseline-{uuid.uuid4().hex[:8]}"
        began = time.perf_counter()
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", str(bundle)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        process = subprocess.Popen(["runc", "--root", str(runc_root), "run", "--bundle", str(bundle), container],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()
        times.append(time.perf_counter() - began)
        if b"ready" not in line:
            raise RuntimeError(f"baseline printed {line!r}")
        subprocess.run(["runc", "--root", str(runc_root), "kill", container, "KILL"], check=True)
        process.wait()
        subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", container], check=False)
        shutil.rmtree(bundle)
    return times


def network_runs(package: Path, work: Path, repeat: int) -> tuple[list[float], list[float]]:
    """The network alone: set up (first instance of its network: bridge and dnsmasq too) and tear down."""
    runtime = Runtime(RuntimeConfig(state_root=work / "state-network", run_root=work / "run-network"))
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


def supervisor_start_runs(repeat: int) -> list[float]:
    """A part of every aos start: a fresh interpreter importing the supervisor module."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import aos_operator.runtime.supervisor"], check=True)
        times.append(time.perf_counter() - began)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/run.py: needs root (runc, mounts, cgroups)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="aos-bench-") as temporary:
        work = Path(temporary)
        package = build(work)
        baseline = statistics.median(baseline_runs(package, work, args.repeat))
        cold, warm, stop = (statistics.median(runs) for runs in aos_runs(package, work, args.repeat, network=False))
        net_cold, net_warm, net_stop = (statistics.median(runs)
                                        for runs in aos_runs(package, work, args.repeat, network=True))
        interpreter = statistics.median(supervisor_start_runs(args.repeat))
        setup, teardown = (statistics.median(runs) for runs in network_runs(package, work, args.repeat))
    print(f"package on disk -> first output line, median of {args.repeat} runs")
    print(f"  baseline umoci unpack + runc run : {baseline * 1000:7.1f} ms  (1.00)")
    print(f"  aos cold (install + start)       : {cold * 1000:7.1f} ms  ({cold / baseline:.2f} x baseline)")
    print(f"  aos warm (start, installed)      : {warm * 1000:7.1f} ms  ({warm / baseline:.2f} x baseline)")
    print(f"  of which supervisor interpreter  : {interpreter * 1000:7.1f} ms  (python + imports, in both aos runs)")
    print("instance network (named netns, CNI bridge, dnsmasq, nftables) against loopback only")
    print(f"  aos cold with network            : {net_cold * 1000:7.1f} ms  ({net_cold / cold:.2f} x without)")
    print(f"  aos warm with network            : {net_warm * 1000:7.1f} ms  ({net_warm / warm:.2f} x without)")
    print(f"  stop (teardown), without network : {stop * 1000:7.1f} ms")
    print(f"  stop (teardown), with network    : {net_stop * 1000:7.1f} ms  ({net_stop / stop:.2f} x without)")
    print(f"  network alone: set up {setup * 1000:.1f} ms, torn down {teardown * 1000:.1f} ms "
          f"(a network's first instance: bridge and dnsmasq included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
