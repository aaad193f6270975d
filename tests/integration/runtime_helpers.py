"""Helpers of the runtime integration tests: waiting, reading logs, finding leftovers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aos_operator.runtime import InstanceStatus, Runtime
from aos_operator.runtime.network.model import bridge_name

T = TypeVar("T")


def network_leftovers(runtime: Runtime, providers: tuple[str, ...] = ("default",)) -> list[str]:
    """What the instance network put on the node that is still there: named netns, the providers'
    bridges, nftables tables, iptables rules of our CNI networks, IPAM leases, records, dnsmasq."""
    scope = runtime.network.scope
    found = [f"netns {line}" for line in _lines(["ip", "netns", "list"]) if line.startswith(f"aos-{scope}-")]
    found += [f"bridge {bridge_name(scope, provider)}" for provider in providers
              if Path(f"/sys/class/net/{bridge_name(scope, provider)}").exists()]
    found += [f"nft {line}" for line in _lines(["nft", "list", "tables"]) if line.endswith(f"_{scope}")]
    found += [f"iptables {line}" for line in _lines(["iptables-save"]) if f"aos-{scope}-" in line]
    ipam = runtime.network.ipam_dir
    if ipam.exists():
        found += [f"lease {path}" for path in ipam.rglob("*") if path.is_file()
                  and path.name != "lock" and not path.name.startswith("last_reserved_ip")]
    records = runtime.network.state_dir / "instances"
    if records.exists():
        found += [f"network record {path}" for path in records.iterdir()]
    found += [f"dnsmasq {line}" for line in _lines(["ps", "-eo", "pid,args"])
              if "dnsmasq" in line and f"/{scope}/" in line]
    return found


def _lines(argv: list[str]) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


def leftovers(runtime: Runtime) -> list[str]:
    """Everything instances put on the node that is still there, read the way an operator would:
    cgroup directories, /proc/mounts, `losetup -a`, `runc list`, the run directory, `ps`, and
    the instance network."""
    found: list[str] = network_leftovers(runtime)
    parent = runtime.config.cgroup_parent.strip("/")
    for root in Path("/sys/fs/cgroup").iterdir():
        if (root / parent).exists():
            found.append(f"cgroup {root / parent}")
    state_root, run_root = str(runtime.config.state_root), str(runtime.config.run_root)
    found += [f"mount {line}" for line in Path("/proc/mounts").read_text().splitlines() if run_root in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    found += [f"loop {line}" for line in loops.splitlines() if state_root in line]
    found += [f"container {c['id']} ({c['status']})" for c in runtime.runc.list()]
    instances = runtime.config.run_root / "instances"
    if instances.exists():
        found += [f"run dir {path}" for path in instances.iterdir()]
    processes = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True).stdout
    found += [f"process {line}" for line in processes.splitlines()
              if (state_root in line or run_root in line) and " Z" not in line]
    for proc in Path("/proc").iterdir():  # any process still in one of the instances' cgroups
        try:
            if proc.name.isdigit() and f":{runtime.config.cgroup_parent}/" in (proc / "cgroup").read_text():
                found.append(f"process {proc.name} in {runtime.config.cgroup_parent}")
        except OSError:
            continue
    return found


def process_gone(pid: int) -> bool:
    """The process does not exist, or is a zombie waiting for its (new) parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def assert_nothing_left(runtime: Runtime, timeout: float = 10.0) -> None:
    """No leftovers, allowing a supervisor that just reported its final status time to exit."""
    deadline = time.monotonic() + timeout
    while (found := leftovers(runtime)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found == []


def wait_until(condition: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def log_text(runtime: Runtime, instance_id: str) -> str:
    path = runtime.log_path(instance_id)
    rotated = path.with_name(path.name + ".1")
    text = rotated.read_text(errors="replace") if rotated.exists() else ""
    return text + (path.read_text(errors="replace") if path.exists() else "")


def wait_for_log(runtime: Runtime, instance_id: str, needle: str, timeout: float = 30.0) -> str:
    wait_until(lambda: needle in log_text(runtime, instance_id), timeout, f"{needle!r} in the log of {instance_id}")
    return log_text(runtime, instance_id)


def wait_for_status(runtime: Runtime, instance_id: str, predicate: Callable[[InstanceStatus], bool],
                    timeout: float = 30.0, what: str = "status") -> InstanceStatus:
    def check() -> InstanceStatus | None:
        status = runtime.status(instance_id)
        return status if predicate(status) else None

    return wait_until(check, timeout, what)


# A service that reports what it sees from inside the container as one JSON line, then waits.
PROBE_SCRIPT = r'''
import json, os, resource, socket, sys, time

def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as error:
        return f"error: {error.strerror}"

def status_field(name):
    for line in read("/proc/self/status").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()

def statvfs(path):
    try:
        st = os.statvfs(path)
        return {"total": st.f_blocks * st.f_frsize, "available": st.f_bavail * st.f_frsize}
    except OSError as error:
        return {"error": error.strerror}

def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError as error:
        return error.strerror

report = {
    "args": sys.argv, "env": dict(os.environ), "cwd": os.getcwd(), "hostname": socket.gethostname(),
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
    "memory_limit": read("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    "memsw_limit": read("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
    "cfs_quota": read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    "cfs_period": read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    "pids_max": read("/sys/fs/cgroup/pids/pids.max"),
    "root_entries": sorted(os.listdir("/")), "hosts": read("/etc/hosts"),
    "tmp": statvfs("/tmp"), "storage": statvfs("/storage"), "net": sorted(os.listdir("/sys/class/net")),
    "somaxconn": read("/proc/sys/net/core/somaxconn"),
    "root_writable": writable("/probe-file"), "seccomp": status_field("Seccomp"),
    "no_new_privs": status_field("NoNewPrivs"), "cap_eff": status_field("CapEff"), "cap_amb": status_field("CapAmb"),
}
print("PROBE " + json.dumps(report), flush=True)
time.sleep(3600)
'''


def probe_report(text: str) -> dict:
    import json

    line = next(line for line in text.splitlines() if line.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])
