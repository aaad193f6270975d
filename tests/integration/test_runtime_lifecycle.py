"""Start, stop, restart policy, exit codes, status, logs, recovery and teardown (real runc, as root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from runtime_helpers import assert_nothing_left, log_text, process_gone, wait_for_log, wait_for_status, wait_until

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime import InstanceIdentity, InstanceStatus, Phase, Reason, Runtime, RuntimeConfig
from aos_operator.runtime.runtime import SUPERVISOR_FILE
from tests.runtime_test_packages import build_test_layer

pytestmark = pytest.mark.root  # runc, mounts, loop devices, cgroups

PYTHON = "/usr/bin/python3"
FAST_RESTARTS = {"startInterval": "PT30S", "startBurst": 3, "restartInterval": "PT0.2S"}


def install(runtime: Runtime, make_package: Callable[..., Path], script: str, **service: object):
    return runtime.install(make_package({"app/main.py": script}, cmd=[PYTHON, "-u", "/app/main.py"],
                                        service_config=service))


SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"


def test_exit_code_and_restart_policy_gives_up_after_the_burst(runtime: Runtime,
                                                              make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, "print('attempt', flush=True)\nraise SystemExit(7)\n",
                      runParameters=FAST_RESTARTS)
    identity = InstanceIdentity("svc-crash", "subject", 0)
    runtime.start(identity, package)
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.phase == Phase.FAILED, what="Failed")
    assert status.reason == Reason.CRASH_LOOP
    assert (status.starts, status.restarts) == (3, 2)
    assert status.last_exit is not None and status.last_exit.exit_code == 7
    assert status.last_exit.reason == Reason.CRASHED and status.exit_code == 7
    assert "start limit reached: 3 starts within 30 s (startBurst 3)" in status.message  # not "more than 3"
    assert log_text(runtime, identity.instance_id).count("attempt") == 3
    assert_nothing_left(runtime)


def test_restarts_within_the_burst_then_keeps_running(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    script = """
import os, time
count = int(open("/storage/count").read()) + 1 if os.path.exists("/storage/count") else 1
open("/storage/count", "w").write(str(count))
print(f"run {count}", flush=True)
if count < 3:
    raise SystemExit(1)
time.sleep(3600)
"""
    package = install(runtime, make_package, script, runParameters=FAST_RESTARTS,
                      quotas={"storageLimit": 1 << 20})
    identity = InstanceIdentity("svc-flaky", "subject", 0)
    runtime.start(identity, package)
    wait_for_log(runtime, identity.instance_id, "run 3")
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.phase == Phase.RUNNING, what="Running")
    assert status.restarts == 2 and status.last_exit is not None and status.last_exit.exit_code == 1


def test_restart_after_interval_with_aosedge_defaults_when_not_configured(runtime: Runtime,
                                                                         make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, "print('once', flush=True)\n")
    identity = InstanceIdentity("svc-defaults", "subject", 0)
    runtime.start(identity, package)
    # Restart=always: a clean exit is restarted too, after restartInterval (1 s).
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.starts >= 2, what="a second start")
    assert status.last_exit is not None and status.last_exit.reason == Reason.COMPLETED
    assert package.service_config.run_parameters.restart_interval == 1.0


def test_no_restart_mode_ends_with_the_exit(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, "print('bye', flush=True)\n")
    identity = InstanceIdentity("svc-once", "subject", 0)
    status = runtime.start(identity, package, restart=False)
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.phase.terminal, what="the end")
    assert (status.phase, status.reason, status.exit_code, status.starts) == (Phase.STOPPED, Reason.COMPLETED, 0, 1)
    assert_nothing_left(runtime)


def test_a_start_request_without_status_leaves_an_ended_instance_ended(runtime: Runtime,
                                                                      make_package: Callable[..., Path]) -> None:
    # The runtime's retry after a lost reply carries no status: when the supervisor started now
    # had already adopted the Pending instance and run it to its end, the retry must not run it again.
    package = install(runtime, make_package, "print('bye', flush=True)\n")
    identity = InstanceIdentity("svc-once-more", "subject", 0)
    runtime.start(identity, package, restart=False)
    ended = wait_for_status(runtime, identity.instance_id, lambda s: s.phase.terminal, what="the end")
    reply = runtime._request({"op": "start", "id": identity.instance_id})
    assert reply == {"ok": True, "ended": True}
    status = runtime.status(identity.instance_id)
    assert (status.phase, status.starts, status.generation) == (Phase.STOPPED, 1, ended.generation)
    assert log_text(runtime, identity.instance_id).count("bye") == 1
    assert_nothing_left(runtime)


def test_stop_kills_and_removes_everything_but_the_data(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER, quotas={"storageLimit": 1 << 20, "stateLimit": 4096,
                                                              "tmpLimit": 65536})
    identity = InstanceIdentity("svc-stop", "subject", 0)
    started = runtime.start(identity, package)
    assert started.phase == Phase.RUNNING and started.pid
    wait_for_log(runtime, identity.instance_id, "up")
    stopped = runtime.stop(identity.instance_id)
    assert (stopped.phase, stopped.reason) == (Phase.STOPPED, Reason.STOPPED)
    assert stopped.last_exit is not None and stopped.last_exit.exit_code == 137  # SIGKILL, as AosEdge
    assert stopped.last_exit.reason == Reason.KILLED
    assert process_gone(started.pid)
    assert_nothing_left(runtime)
    data = runtime.data_dir(identity.instance_id)
    assert (data / "storage.img").exists() and (data / "state.img").exists()
    assert runtime.stop(identity.instance_id).phase == Phase.STOPPED  # stopping twice is fine


def test_start_is_idempotent_and_refuses_another_package(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER)
    other = install(runtime, make_package, SLEEPER + "# other\n")
    identity = InstanceIdentity("svc-idem", "subject", 0)
    first = runtime.start(identity, package)
    again = runtime.start(identity, package)
    assert again.pid == first.pid and again.starts == 1
    assert len(runtime.runc.list()) == 1
    with pytest.raises(RuntimeFailure, match="already runs package"):
        runtime.start(identity, other)


def test_instances_share_the_layer_get_own_uids_and_one_gid(runtime: Runtime,
                                                            make_package: Callable[..., Path]) -> None:
    script = "import os, time\nprint(f'ids {os.getuid()} {os.getgid()}', flush=True)\ntime.sleep(3600)\n"
    package = install(runtime, make_package, script)
    ids = []
    for index in range(3):
        identity = InstanceIdentity("svc-many", "subject", index)
        runtime.start(identity, package)
        line = next(line for line in wait_for_log(runtime, identity.instance_id, "ids ").splitlines()
                    if line.startswith("ids "))
        ids.append(tuple(int(value) for value in line.split()[1:]))
    assert len({uid for uid, _ in ids}) == 3 and len({gid for _, gid in ids}) == 1
    assert len(runtime.runc.list()) == 3
    # one unpacked layer, and one copy owned by the service's group that all three run
    gid = ids[0][1]
    assert sorted(p.name for p in runtime.packages.layers.root.iterdir()) == [
        package.layer_path.name, f"{package.layer_path.name}.g{gid}"]
    runtime.cleanup()
    assert_nothing_left(runtime)


def test_service_layer_is_owned_by_root_and_the_service_group(runtime: Runtime,
                                                              make_package: Callable[..., Path]) -> None:
    # AosEdge 1.x chowns the unpacked layer 0:<service GID>: a group-readable file is readable by
    # the service, a file for its owner only is not.
    script = """
import os, time
for name in ("group.txt", "owner.txt"):
    info = os.lstat(f"/app/{name}")
    try:
        result = open(f"/app/{name}").read().strip()
    except PermissionError:
        result = "denied"
    print(f"FILE {name} {info.st_uid}:{info.st_gid} {result}", flush=True)
link = os.lstat("/app/link")
print(f"LINK {link.st_uid}:{link.st_gid} gid {os.getgid()}", flush=True)
time.sleep(3600)
"""
    files = {"app/main.py": script, "app/group.txt": ("for the group\n", 0o640), "app/owner.txt": ("secret\n", 0o600)}
    layer = build_test_layer(files, [(_symlink("app/link", "/etc/passwd"), None)])
    package = runtime.install(make_package(layer=layer, cmd=[PYTHON, "-u", "/app/main.py"]))
    status = runtime.start(InstanceIdentity("svc-owners", "subject", 0), package)
    text = wait_for_log(runtime, status.instance_id, "LINK ")
    gid = runtime.ids.service_gid("svc-owners")
    assert f"FILE group.txt 0:{gid} for the group" in text
    assert f"FILE owner.txt 0:{gid} denied" in text
    assert f"LINK 0:{gid} gid {gid}" in text
    assert os.stat("/etc/passwd").st_gid == 0  # the link was not followed
    assert os.stat(package.layer_path / "app" / "group.txt").st_gid == 0  # the shared unpacked layer stays 0:0


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def test_status_changes_are_observable(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER)
    identity = InstanceIdentity("svc-watch", "subject", 0)
    seen: list[InstanceStatus] = []
    stopped = threading.Event()

    def on_change(status: InstanceStatus) -> None:
        seen.append(status)
        if status.phase == Phase.STOPPED:
            stopped.set()

    watcher = runtime.watch(on_change, interval=0.02)
    try:
        runtime.start(identity, package)
        wait_until(lambda: any(s.phase == Phase.RUNNING for s in seen), what="Running seen")
        runtime.stop(identity.instance_id)
        assert stopped.wait(10)
    finally:
        watcher.close()
    phases = [s.phase for s in seen]
    assert phases[-1] == Phase.STOPPED and Phase.RUNNING in phases
    assert phases.index(Phase.RUNNING) < phases.index(Phase.STOPPED)
    generations = [s.generation for s in seen]
    assert generations == sorted(set(generations))  # each change once, in order


def test_log_is_capped(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    script = ("import time\nfor n in range(20000):\n    print(f'line {n:05d} ' + 'x' * 40)\n"
              "print('end', flush=True)\ntime.sleep(3600)\n")
    package = install(runtime, make_package, script)
    identity = InstanceIdentity("svc-chatty", "subject", 0)
    runtime.start(identity, package)
    text = wait_for_log(runtime, identity.instance_id, "end")
    log = runtime.log_path(identity.instance_id)
    cap = runtime.config.log_max_bytes
    assert log.stat().st_size <= cap and log.with_name("service.log.1").stat().st_size <= cap
    assert "line 19999" in text and "line 00000" not in text  # ~1 MB written, only the newest kept


STARTER = """
import json, sys
from pathlib import Path
from aos_operator.runtime import InstanceIdentity, Runtime, RuntimeConfig
options = json.loads(sys.argv[1])
runtime = Runtime(RuntimeConfig(state_root=Path(options["state_root"]), run_root=Path(options["run_root"]),
                                cgroup_parent=options["cgroup_parent"]))
pids = {}
for index in range(2):
    status = runtime.start(InstanceIdentity("svc-recover", "subject", index), options["package"])
    pids[status.instance_id] = status.pid
print(json.dumps(pids))
"""


def test_recovery_after_the_runtime_process_exits(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    """Another process starts two instances and exits; this one adopts them, without duplicates."""
    package = install(runtime, make_package, SLEEPER)
    config = runtime.config
    options = {"state_root": str(config.state_root), "run_root": str(config.run_root),
               "cgroup_parent": config.cgroup_parent, "package": package.digest}
    starter = subprocess.run([sys.executable, "-c", STARTER, json.dumps(options)], capture_output=True, text=True,
                             check=True, timeout=120)
    pids = json.loads(starter.stdout)
    assert all(pid and not process_gone(pid) for pid in pids.values())  # outlived the process that started them

    recovered = {status.instance_id: status for status in runtime.recover()}
    assert {i: s.pid for i, s in recovered.items()} == pids
    assert all(s.phase == Phase.RUNNING for s in recovered.values())
    assert sorted(c["id"] for c in runtime.runc.list()) == sorted(pids)
    for index in range(2):
        identity = InstanceIdentity("svc-recover", "subject", index)
        assert runtime.start(identity, package).pid == pids[identity.instance_id]  # no second container
    assert len(runtime.runc.list()) == 2
    runtime.cleanup()
    assert_nothing_left(runtime)


def test_recovery_after_the_node_supervisor_died_adopts_without_restarting(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    """The node supervisor is killed; recover() starts a new one, which adopts the running
    container (same PID, no second start) and keeps copying its output into the log."""
    package = install(runtime, make_package, SLEEPER, runParameters=FAST_RESTARTS)
    identity = InstanceIdentity("svc-orphan", "subject", 0)
    first = runtime.start(identity, package)
    wait_for_log(runtime, identity.instance_id, "up")
    record = json.loads((runtime.config.run_root / SUPERVISOR_FILE).read_text())
    os.kill(record["pid"], signal.SIGKILL)
    wait_until(lambda: runtime.status(identity.instance_id).reason == Reason.SUPERVISOR_LOST, what="lost")
    assert not process_gone(first.pid)  # the container outlived its supervisor

    again = Runtime(runtime.config)
    again.recover()
    status = again.status(identity.instance_id)
    assert (status.phase, status.pid, status.starts) == (Phase.RUNNING, first.pid, 1)
    assert json.loads((runtime.config.run_root / SUPERVISOR_FILE).read_text())["pid"] != record["pid"]
    assert [c["id"] for c in again.runc.list()] == [identity.instance_id]
    again.cleanup()
    assert_nothing_left(again)


def test_remove_deletes_data_and_releases_the_uid(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER, quotas={"storageLimit": 1 << 20})
    identity = InstanceIdentity("svc-remove", "subject", 0)
    runtime.start(identity, package)
    runtime.remove(identity.instance_id)
    assert not runtime.data_dir(identity.instance_id).exists()
    assert runtime.list() == []
    assert_nothing_left(runtime)
    with pytest.raises(RuntimeFailure, match="no instance"):
        runtime.status(identity.instance_id)


def test_setup_failure_is_reported_and_leaves_nothing(runtime_config: RuntimeConfig,
                                                      make_package: Callable[..., Path]) -> None:
    broken = Runtime(replace(runtime_config, base_path="/nonexistent-base"))
    package = install(broken, make_package, SLEEPER)
    identity = InstanceIdentity("svc-broken", "subject", 0)
    with pytest.raises(RuntimeFailure, match="setup failed: base file system /nonexistent-base: not a directory"):
        broken.start(identity, package)
    status = broken.status(identity.instance_id)
    assert (status.phase, status.reason) == (Phase.FAILED, Reason.SETUP_ERROR)
    assert_nothing_left(broken)


def test_start_error_of_a_missing_executable(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = runtime.install(make_package({"app/x": "x"}, cmd=["/app/no-such-binary"],
                                           service_config={"runParameters": {**FAST_RESTARTS, "startBurst": 2}}))
    identity = InstanceIdentity("svc-nobin", "subject", 0)
    runtime.start(identity, package)
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.phase == Phase.FAILED, what="Failed")
    assert status.reason == Reason.CRASH_LOOP and status.last_exit is not None
    assert status.last_exit.reason == Reason.START_ERROR and "no-such-binary" in status.last_exit.message
    assert_nothing_left(runtime)
