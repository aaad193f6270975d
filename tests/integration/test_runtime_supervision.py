"""The node supervisor: many instances in one process, the restart policy while no runtime
process runs, graceful stops, and the supervisor's own restart (real runc, as root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from runtime_helpers import assert_nothing_left, log_text, process_gone, wait_for_log, wait_for_status, wait_until

from aos_operator.runtime import InstanceIdentity, Phase, Reason, Runtime, RuntimeConfig
from aos_operator.runtime.runtime import SUPERVISOR_FILE

pytestmark = pytest.mark.root  # runc, mounts, loop devices, cgroups

PYTHON = "/usr/bin/python3"
SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"


def install(runtime: Runtime, make_package: Callable[..., Path], script: str, **service: object):
    return runtime.install(make_package({"app/main.py": script}, cmd=[PYTHON, "-u", "/app/main.py"],
                                        service_config=service))


def processes_with(text: str) -> list[str]:
    """Command lines (whole, unlike ps's) of live processes that contain `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and not process_gone(int(proc.name)):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if text in command:
                    found.append(command)
        except OSError:
            continue
    return found


def test_twenty_instances_share_one_supervisor(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER)
    identities = [InstanceIdentity("svc-twenty", "subject", index) for index in range(20)]
    for identity in identities:
        runtime.start(identity, package, wait=False)
    for identity in identities:
        wait_for_log(runtime, identity.instance_id, "up", timeout=120)
    statuses = [wait_for_status(runtime, i.instance_id, lambda s: s.phase == Phase.RUNNING, what="Running")
                for i in identities]
    assert len({s.pid for s in statuses}) == 20 and len(runtime.runc.list()) == 20
    ours = processes_with(str(runtime.config.run_root))
    assert len(ours) == 1 and "aos_operator.runtime.supervisor" in ours[0]  # no runc, no per-instance process
    runtime.cleanup()
    assert all(runtime.status(i.instance_id).phase == Phase.STOPPED for i in identities)
    assert_nothing_left(runtime)


CRASHER = """
import os, time
count = int(open("/storage/count").read()) + 1 if os.path.exists("/storage/count") else 1
open("/storage/count", "w").write(str(count))
print(f"run {count}", flush=True)
if count == 1:
    while not os.path.exists("/storage/crash"):
        time.sleep(0.05)
    raise SystemExit(3)
time.sleep(3600)
"""

STARTER = """
import json, sys
from pathlib import Path
from aos_operator.runtime import InstanceIdentity, Runtime, RuntimeConfig
options = json.loads(sys.argv[1])
runtime = Runtime(RuntimeConfig(state_root=Path(options["state_root"]), run_root=Path(options["run_root"]),
                                cgroup_parent=options["cgroup_parent"]))
status = runtime.start(InstanceIdentity("svc-unattended", "subject", 0), options["package"])
print(json.dumps({"pid": status.pid, "phase": status.phase.value}))
"""


def test_a_crash_while_no_runtime_process_runs_is_restarted_by_the_policy(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, CRASHER, quotas={"storageLimit": 1 << 20},
                      runParameters={"startInterval": "PT30S", "startBurst": 3, "restartInterval": "PT0.2S"})
    config = runtime.config
    options = {"state_root": str(config.state_root), "run_root": str(config.run_root),
               "cgroup_parent": config.cgroup_parent, "package": package.digest}
    starter = subprocess.run([sys.executable, "-c", STARTER, json.dumps(options)], capture_output=True, text=True,
                             check=True, timeout=120)
    first = json.loads(starter.stdout)
    assert first["phase"] == "Running"
    identity = InstanceIdentity("svc-unattended", "subject", 0)
    wait_for_log(runtime, identity.instance_id, "run 1")
    # The process that started it is gone; the crash is triggered from outside, through the
    # instance's storage, and only status files are read from here on.
    storage = runtime.run_dir(identity.instance_id) / "volumes" / "storage" / "data"
    (storage / "crash").write_text("now")
    wait_for_log(runtime, identity.instance_id, "run 2")
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.phase == Phase.RUNNING and s.starts == 2,
                             what="the restart")
    assert status.last_exit is not None and (status.last_exit.exit_code, status.last_exit.reason) == (3, Reason.CRASHED)
    assert status.pid != first["pid"] and process_gone(first["pid"])


TERM_HANDLER = """
import signal, sys, time
def on_term(signum, frame):
    print("got SIGTERM, cleaning up", flush=True)
    sys.exit(42)
signal.signal(signal.SIGTERM, on_term)
print("up", flush=True)
time.sleep(3600)
"""

TERM_IGNORER = """
import signal, time
signal.signal(signal.SIGTERM, lambda signum, frame: print("ignoring SIGTERM", flush=True))
print("up", flush=True)
while True:
    time.sleep(3600)
"""


def test_stop_lets_a_sigterm_handler_end_the_service_with_its_own_code(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, TERM_HANDLER)
    identity = InstanceIdentity("svc-graceful", "subject", 0)
    started = runtime.start(identity, package)
    wait_for_log(runtime, identity.instance_id, "up")
    stopped = runtime.stop(identity.instance_id)
    assert (stopped.phase, stopped.reason) == (Phase.STOPPED, Reason.STOPPED)
    assert stopped.last_exit is not None
    assert (stopped.last_exit.exit_code, stopped.last_exit.reason, stopped.last_exit.signal) == (42, Reason.STOPPED, None)
    assert "got SIGTERM, cleaning up" in log_text(runtime, identity.instance_id)
    assert process_gone(started.pid)
    assert_nothing_left(runtime)


def test_stop_kills_after_the_grace_period(runtime_config: RuntimeConfig, make_package: Callable[..., Path]) -> None:
    runtime = Runtime(replace(runtime_config, stop_timeout=0.5))
    package = install(runtime, make_package, TERM_IGNORER)
    identity = InstanceIdentity("svc-stubborn", "subject", 0)
    runtime.start(identity, package)
    wait_for_log(runtime, identity.instance_id, "up")
    stopped = runtime.stop(identity.instance_id)
    assert stopped.last_exit is not None
    assert (stopped.last_exit.exit_code, stopped.last_exit.reason) == (137, Reason.KILLED)
    assert "ignoring SIGTERM" in log_text(runtime, identity.instance_id)  # it was asked first
    assert_nothing_left(runtime)


def test_the_supervisors_restart_adopts_instances_and_keeps_supervising_them(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    """SIGTERM ends the supervisor and leaves the containers; a new one adopts them without a
    restart, copies their output on, applies the restart policy to them, and stops them."""
    ticker = ("import os, time\nprint('up', flush=True)\n"
              "while not os.path.exists('/tmp/more'):\n    time.sleep(0.05)\n"
              "print('after the restart', flush=True)\ntime.sleep(3600)\n")
    package = install(runtime, make_package, ticker, quotas={"tmpLimit": 65536},
                      runParameters={"startInterval": "PT30S", "startBurst": 3, "restartInterval": "PT0.2S"})
    identities = [InstanceIdentity("svc-adopted", "subject", index) for index in range(2)]
    first = {i.instance_id: runtime.start(i, package) for i in identities}
    for identity in identities:
        wait_for_log(runtime, identity.instance_id, "up")
    old = json.loads((runtime.config.run_root / SUPERVISOR_FILE).read_text())["pid"]
    os.kill(old, signal.SIGTERM)
    wait_until(lambda: process_gone(old), what="the supervisor to exit")
    assert all(not process_gone(s.pid) for s in first.values())

    statuses = {s.instance_id: s for s in Runtime(runtime.config).recover()}
    new = json.loads((runtime.config.run_root / SUPERVISOR_FILE).read_text())["pid"]
    assert new != old
    assert {i: (s.phase, s.pid, s.starts) for i, s in statuses.items()} == {
        i: (Phase.RUNNING, s.pid, 1) for i, s in first.items()}

    one, two = identities
    # Output written after the adoption reaches the log, through the same FIFO.
    tmp = Path(f"/proc/{first[one.instance_id].pid}/root/tmp/more")
    tmp.write_text("go")
    wait_for_log(runtime, one.instance_id, "after the restart")
    # A crash of an adopted container: restarted by the policy; its exit status is not ours to know.
    os.kill(first[two.instance_id].pid, signal.SIGKILL)
    status = wait_for_status(runtime, two.instance_id, lambda s: s.phase == Phase.RUNNING and s.starts == 2,
                             what="the restart of the adopted instance")
    assert status.last_exit is not None and status.last_exit.exit_code == -1
    assert status.last_exit.reason == Reason.CRASHED and "adopted" in status.last_exit.message
    runtime.cleanup()
    assert_nothing_left(runtime)


def test_the_supervisor_exits_when_it_has_nothing_to_supervise(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER)
    identity = InstanceIdentity("svc-idle", "subject", 0)
    runtime.start(identity, package)
    pid = json.loads((runtime.config.run_root / SUPERVISOR_FILE).read_text())["pid"]
    runtime.stop(identity.instance_id)
    wait_until(lambda: process_gone(pid), timeout=runtime.config.supervisor_linger + 10, what="the idle exit")
    assert not (runtime.config.run_root / SUPERVISOR_FILE).exists()
    again = runtime.start(identity, package)  # a new one is started on demand
    assert again.phase == Phase.RUNNING and again.starts == 1
    assert json.loads((runtime.config.run_root / SUPERVISOR_FILE).read_text())["pid"] != pid
