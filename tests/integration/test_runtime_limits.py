"""Every quota, seen from inside a running container and by its effect (real runc, as root)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime_helpers import (
    PROBE_SCRIPT,
    assert_nothing_left,
    log_text,
    probe_report,
    wait_for_log,
    wait_for_status,
    wait_until,
)

from aos_operator.errors import PackageError, RuntimeFailure
from aos_operator.runtime import InstanceIdentity, Phase, Reason, Runtime
from aos_operator.runtime.cgroups import InstanceCgroup, detect_cgroups
from aos_operator.runtime.service_config import PID_MAX_LIMIT

pytestmark = pytest.mark.root  # runc, mounts, loop devices, cgroups

PYTHON = "/usr/bin/python3"  # the host's, seen through the base layer
QUOTAS = {"cpuDmipsLimit": 5000, "ramLimit": 96 << 20, "pidsLimit": 48, "noFileLimit": 200,
          "tmpLimit": 1 << 20, "storageLimit": 2 << 20, "stateLimit": 16384}


def start_script(runtime: Runtime, make_package: Callable[..., Path], script: str, quotas: dict,
                 index: int = 0, **service: object):
    package = runtime.install(make_package({"app/main.py": script}, cmd=[PYTHON, "-u", "/app/main.py"],
                                           working_dir="/app", env=["GREETING=hello"],
                                           service_config={"quotas": quotas, **service}))
    return runtime.start(InstanceIdentity("svc-limits", "subject", index), package)


def test_probe_sees_every_limit_identity_and_hardening(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    status = start_script(runtime, make_package, PROBE_SCRIPT, QUOTAS, hostname="probe-host",
                          sysctl={"net.core.somaxconn": "321"})
    assert status.phase == Phase.RUNNING
    report = probe_report(wait_for_log(runtime, status.instance_id, "PROBE "))
    assert report["memory_limit"] == str(96 << 20) and report["memsw_limit"] == str(96 << 20)
    assert (report["cfs_quota"], report["cfs_period"]) == ("50000", "100000")  # 5000 of 20000 DMIPS on 2 cores
    assert report["pids_max"] == "48" and report["nproc"] == [48, 48]
    assert report["nofile"] == [200, 200]
    assert report["tmp"]["total"] == 1 << 20
    assert 2 << 20 <= report["storage"]["available"] < (2 << 20) + (64 << 10)
    env = report["env"]
    assert env["AOS_SERVICE_ID"] == "svc-limits" and env["AOS_SUBJECT_ID"] == "subject"
    assert env["AOS_INSTANCE_INDEX"] == "0" and env["AOS_INSTANCE_ID"] == status.instance_id
    assert env["GREETING"] == "hello"
    ip = runtime.status(status.instance_id).ip
    assert report["hostname"] == "probe-host" and f"{ip}\tprobe-host " in report["hosts"]
    assert report["cwd"] == "/app"
    assert report["uid"] >= 5000 and report["gid"] >= 5000
    assert report["root_entries"] == ["app", "bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "state.dat",
                                      "storage", "sys", "tmp", "usr"]
    assert report["root_writable"] == "Read-only file system"
    assert report["net"] == ["eth0", "lo"]  # its own network namespace on the provider's bridge
    assert report["somaxconn"] == "321"
    assert report["seccomp"] == "2" and report["no_new_privs"] == "1"
    assert report["cap_eff"] == "0000000000000000" and report["cap_amb"] == "0000000000000000"


def test_memory_beyond_the_quota_is_oom_killed(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    script = "print('allocating', flush=True)\nblocks = [bytearray(8 << 20) for _ in range(64)]\nprint('survived')\n"
    status = start_script(runtime, make_package, script, {"ramLimit": 48 << 20},
                          runParameters={"startBurst": 1, "startInterval": "PT60S"})
    status = wait_for_status(runtime, status.instance_id, lambda s: s.phase == Phase.FAILED, what="Failed")
    assert status.last_exit is not None
    assert status.last_exit.reason == Reason.OOM_KILLED and status.last_exit.oom_kills >= 1
    assert status.last_exit.exit_code == 137
    assert "survived" not in log_text(runtime, status.instance_id)
    assert_nothing_left(runtime)


def test_cpu_quota_throttles_a_busy_loop(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    status = start_script(runtime, make_package, "print('busy', flush=True)\nwhile True: pass\n",
                          {"cpuDmipsLimit": 2000})  # 0.2 CPU on this 2-core, 20000-DMIPS node
    wait_for_log(runtime, status.instance_id, "busy")
    cgroup = InstanceCgroup(detect_cgroups(), runtime.cgroups_path(status.instance_id))
    start_stat, start_usage = cgroup.cpu_throttling(), cgroup.cpu_usage_ns()
    deadline = time.monotonic() + 60
    while cgroup.cpu_throttling()["nr_periods"] - start_stat["nr_periods"] < 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    end_stat, end_usage = cgroup.cpu_throttling(), cgroup.cpu_usage_ns()
    periods = end_stat["nr_periods"] - start_stat["nr_periods"]
    assert periods >= 30
    assert end_stat["nr_throttled"] - start_stat["nr_throttled"] >= periods * 0.8  # a busy loop hits the quota
    used_per_period = (end_usage - start_usage) / periods / 100_000_000  # CPU-seconds per 100 ms period
    assert 0.1 < used_per_period <= 0.2 * 1.15
    sampled = runtime.status(status.instance_id)
    assert sampled.cpu_millicores is not None and sampled.ram_bytes and sampled.ram_bytes > 0


def test_fork_beyond_the_pids_limit_fails(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    script = """
import os, time
children = []
try:
    for _ in range(100):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    print("forked all", flush=True)
except OSError as error:
    print(f"fork failed after {len(children)}: {error.strerror}", flush=True)
time.sleep(3600)
"""
    status = start_script(runtime, make_package, script, {"pidsLimit": 16})
    text = wait_for_log(runtime, status.instance_id, "fork")
    assert "forked all" not in text
    assert "fork failed after 15: Resource temporarily unavailable" in text  # 16 = the service + 15 children


def test_opening_files_beyond_nofile_fails(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    script = """
import time
files = []
try:
    while len(files) < 10000:
        files.append(open("/dev/null"))
    print("opened all", flush=True)
except OSError as error:
    print(f"open failed after {len(files)}: {error.strerror}", flush=True)
time.sleep(3600)
"""
    status = start_script(runtime, make_package, script, {"noFileLimit": 64})
    text = wait_for_log(runtime, status.instance_id, "open")
    assert "open failed after 61: Too many open files" in text  # 64 minus stdin, stdout, stderr


def test_open_files_and_processes_up_to_what_runc_can_set(runtime: Runtime,
                                                          make_package: Callable[..., Path]) -> None:
    """runc's init raises its hard limits to the quotas, and fails past the node's ceiling ("error
    setting rlimit type 7: operation not permitted"): refused before runc runs, naming the quota; at
    the ceiling itself the container runs with it."""
    files, processes = runtime.node.open_files_max, runtime.node.processes_max
    assert files <= int(Path("/proc/sys/fs/nr_open").read_text())
    # The ceiling is the kernel's, not ours: a child of this process can take it and nothing above.
    probe = ("import resource, sys; n = int(sys.argv[1]); "
             "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))")
    assert subprocess.run([sys.executable, "-c", probe, str(files)], capture_output=True).returncode == 0
    assert subprocess.run([sys.executable, "-c", probe, str(files + 1)], capture_output=True).returncode != 0
    script = ("import resource, time\nprint('limits', *resource.getrlimit(resource.RLIMIT_NOFILE), "
              "*resource.getrlimit(resource.RLIMIT_NPROC), flush=True)\n")
    with pytest.raises(PackageError, match=rf"quotas.noFileLimit {files + 1} is above the most open files"):
        start_script(runtime, make_package, script, {"noFileLimit": files + 1})
    refused = InstanceIdentity("svc-limits", "subject", 0).instance_id
    assert not runtime.data_dir(refused).exists()  # refused before anything of the instance is written
    pids = min(processes, PID_MAX_LIMIT)
    if processes < PID_MAX_LIMIT:  # without CAP_SYS_RESOURCE: the runtime's own hard RLIMIT_NPROC
        with pytest.raises(PackageError, match=rf"quotas.pidsLimit {processes + 1} is above the most processes"):
            start_script(runtime, make_package, script, {"pidsLimit": processes + 1})
    status = start_script(runtime, make_package, script, {"noFileLimit": files, "pidsLimit": pids}, index=1)
    assert status.phase != Phase.FAILED and status.last_exit is None, status
    assert f"limits {files} {files} {pids} {pids}" in wait_for_log(runtime, status.instance_id, "limits")
    runtime.stop(status.instance_id)
    assert_nothing_left(runtime)


def test_writing_beyond_tmp_fails_with_enospc(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    script = """
import time
written = 0
try:
    with open("/tmp/fill", "wb") as f:
        for _ in range(64):
            f.write(b"x" * 65536)
            f.flush()
            written += 65536
    print("wrote all", flush=True)
except OSError as error:
    print(f"tmp full after {written}: {error.strerror}", flush=True)
time.sleep(3600)
"""
    status = start_script(runtime, make_package, script, {"tmpLimit": 1 << 20})
    text = wait_for_log(runtime, status.instance_id, "tmp full after")
    assert "tmp full after 1048576: No space left on device" in text


FILL_SCRIPT = """
import os, sys, time
target, size = sys.argv[1], int(sys.argv[2])
before = open(target + ".keep").read() if os.path.exists(target + ".keep") else "none"
print(f"kept from before: {before}", flush=True)
with open(target + ".keep", "w") as f:
    f.write("data written before the restart")
written = 0
try:
    with open(target + ".fill", "wb") as f:
        while written < size:
            f.write(b"y" * 4096)
            f.flush()
            os.fsync(f.fileno())
            written += 4096
    print(f"wrote {written}", flush=True)
except OSError as error:
    print(f"full after {written}: {error.strerror}", flush=True)
os.remove(target + ".fill")
print("done", flush=True)
time.sleep(3600)
"""


def _fill(runtime: Runtime, make_package: Callable[..., Path], target: str, size: int, quotas: dict) -> str:
    package = runtime.install(make_package({"app/fill.py": FILL_SCRIPT},
                                           cmd=[PYTHON, "-u", "/app/fill.py", target, str(size)],
                                           service_config={"quotas": quotas}))
    identity = InstanceIdentity("svc-fill", "subject", 0)
    earlier = len(log_text(runtime, identity.instance_id))  # the log is kept across runs
    runtime.start(identity, package)

    def finished() -> str | None:
        new = log_text(runtime, identity.instance_id)[earlier:]
        return new if "done" in new else None

    text = wait_until(finished, what="the fill service to finish")
    runtime.stop(identity.instance_id)
    return text


def test_storage_quota_is_enforced_and_data_survives_a_restart(runtime: Runtime,
                                                               make_package: Callable[..., Path]) -> None:
    quota = 2 << 20
    first = _fill(runtime, make_package, "/storage/file", 2 * quota, {"storageLimit": quota})
    assert "kept from before: none" in first
    written = int(first.split("full after ")[1].split(":")[0])
    assert quota <= written <= quota + 8192  # the cap is the quota, plus a few blocks of metadata slack
    assert "No space left on device" in first
    assert_nothing_left(runtime)
    second = _fill(runtime, make_package, "/storage/file", quota // 2, {"storageLimit": quota})
    assert second.count("kept from before: data written before the restart") == 1
    assert f"wrote {quota // 2}" in second


STATE_SCRIPT = """
import os, sys, time
size = int(sys.argv[1])
with open("/state.dat", "rb") as f:
    print(f"state before: {f.read()[:15]!r}", flush=True)
written = 0
try:
    with open("/state.dat", "wb") as f:
        while written < size:
            f.write(b"z" * 1024)
            f.flush()
            os.fsync(f.fileno())
            written += 1024
    print(f"wrote {written}", flush=True)
except OSError as error:
    print(f"full after {written}: {error.strerror}", flush=True)
with open("/state.dat", "wb") as f:
    f.write(b"persisted-state")
print("done", flush=True)
time.sleep(3600)
"""


def test_state_file_is_capped_and_persists(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    quota = 16384
    package = runtime.install(make_package({"app/state.py": STATE_SCRIPT},
                                           cmd=[PYTHON, "-u", "/app/state.py", str(4 * quota)],
                                           service_config={"quotas": {"stateLimit": quota}}))
    identity = InstanceIdentity("svc-state", "subject", 0)
    runtime.start(identity, package)
    first = wait_for_log(runtime, identity.instance_id, "done")
    assert "state before: b''" in first
    written = int(first.split("full after ")[1].split(":")[0])
    assert quota <= written <= quota + 4096 and "No space left on device" in first
    runtime.stop(identity.instance_id)
    assert_nothing_left(runtime)
    runtime.start(identity, package)
    def second_run_done() -> str | None:
        text = log_text(runtime, identity.instance_id)
        return text if text.count("done") == 2 else None

    second = wait_until(second_run_done, what="the second run to finish")
    assert "state before: b'persisted-state'" in second
    amounts = [int(part.split(":")[0]) for part in second.split("full after ")[1:]]
    assert len(amounts) == 2 and all(quota <= amount <= quota + 4096 for amount in amounts)


def test_skip_resource_limits_still_enforces_every_quota(runtime: Runtime,
                                                        make_package: Callable[..., Path]) -> None:
    status = start_script(runtime, make_package, PROBE_SCRIPT, QUOTAS, skipResourceLimits=True)
    report = probe_report(wait_for_log(runtime, status.instance_id, "PROBE "))
    assert int(report["memory_limit"]) == QUOTAS["ramLimit"]
    assert report["cfs_quota"] == "50000" and report["pids_max"] == str(QUOTAS["pidsLimit"])
    assert report["nofile"] == [QUOTAS["noFileLimit"], QUOTAS["noFileLimit"]]


RESIZE_SCRIPT = """
import os, time
if not os.path.exists("/storage/keep"):
    with open("/storage/keep", "wb") as f:
        f.write(b"k" * 512 * 1024)
written = 0
try:
    with open("/storage/fill", "wb") as f:
        while True:
            f.write(b"f" * 4096)
            f.flush()
            os.fsync(f.fileno())
            written += 4096
except OSError as error:
    print(f"keep {os.path.getsize('/storage/keep')} fill {written} {error.strerror}", flush=True)
os.remove("/storage/fill")
print("done", flush=True)
time.sleep(3600)
"""


def test_storage_quota_change_resizes_the_volume_and_keeps_the_data(runtime: Runtime,
                                                                    make_package: Callable[..., Path]) -> None:
    identity = InstanceIdentity("svc-resize", "subject", 0)

    def run_with_quota(quota: int) -> tuple[int, int]:
        package = runtime.install(make_package({"app/resize.py": RESIZE_SCRIPT},
                                               cmd=[PYTHON, "-u", "/app/resize.py"],
                                               service_config={"quotas": {"storageLimit": quota}}))
        earlier = len(log_text(runtime, identity.instance_id))
        runtime.start(identity, package)

        def finished() -> str | None:
            new = log_text(runtime, identity.instance_id)[earlier:]
            return new if "done" in new else None

        line = next(line for line in wait_until(finished, what="the fill").splitlines() if line.startswith("keep"))
        runtime.stop(identity.instance_id)
        keep, fill = int(line.split()[1]), int(line.split()[3])
        assert "No space left on device" in line
        return keep, fill

    for quota in (1 << 20, 3 << 20, 768 << 10):
        keep, fill = run_with_quota(quota)
        assert keep == 512 * 1024
        assert quota <= keep + fill <= quota + 8192, quota
    package = runtime.install(make_package({"app/resize.py": RESIZE_SCRIPT}, cmd=[PYTHON, "/app/resize.py"],
                                           service_config={"quotas": {"storageLimit": 256 << 10}}))
    with pytest.raises(RuntimeFailure, match="more than the new quota of 262144 bytes"):
        runtime.start(identity, package)
    assert_nothing_left(runtime)
