"""The start path of an installed package with the node supervisor resident: the start is on
disk when `start` returns, an init that ends at once is still seen (runc run --detach), and the
supervisor started after a stop picks up a start whose status it was sent (real runc, as root)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import assert_nothing_left, wait_for_log, wait_for_status

from aos_operator.runtime import InstanceIdentity, Phase, Reason, Runtime
from aos_operator.runtime.status import read_status

pytestmark = pytest.mark.root  # runc, mounts, cgroups

PYTHON = "/usr/bin/python3"
SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"


def install(runtime: Runtime, make_package: Callable[..., Path], script: str, **service: object):
    return runtime.install(make_package({"app/main.py": script}, cmd=[PYTHON, "-u", "/app/main.py"],
                                        service_config=service))


def test_a_warm_start_is_on_disk_when_start_returns(runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER)
    keeper = InstanceIdentity("svc-warm-keeper", "subject", 0)  # keeps the supervisor resident
    runtime.start(keeper, package)
    identity = InstanceIdentity("svc-warm", "subject", 0)
    runtime.start(identity, package)
    wait_for_log(runtime, identity.instance_id, "up")
    for _ in range(3):
        stopped = runtime.stop(identity.instance_id)
        assert stopped.phase == Phase.STOPPED
        returned = runtime.start(identity, package.digest, wait=False)
        # what the caller is told is what a reader of the status file sees at once: this start,
        # not the stop before it (the supervisor wrote it before answering)
        on_disk = read_status(runtime.data_dir(identity.instance_id) / "status.json")
        assert on_disk is not None and not on_disk.phase.terminal and on_disk.generation > stopped.generation
        assert not returned.phase.terminal and returned.generation >= on_disk.generation
        running = wait_for_status(runtime, identity.instance_id, lambda s: s.phase == Phase.RUNNING, what="Running")
        assert running.starts == 1 and running.pid
    runtime.cleanup()
    assert_nothing_left(runtime)


def test_an_init_that_exits_at_once_keeps_its_exit_code(runtime: Runtime,
                                                         make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER)
    keeper = InstanceIdentity("svc-quick-keeper", "subject", 0)
    runtime.start(keeper, package)
    quick = install(runtime, make_package, "import sys\nsys.exit(7)\n")
    identity = InstanceIdentity("svc-quick", "subject", 0)
    for _ in range(2):  # a start and a warm start, each with the supervisor resident
        runtime.start(identity, quick, restart=False, wait=False)
        ended = wait_for_status(runtime, identity.instance_id, lambda s: s.phase.terminal, what="ended")
        assert ended.phase == Phase.FAILED and ended.exit_code == 7 and ended.reason == Reason.CRASHED
    runtime.cleanup()
    assert_nothing_left(runtime)


def test_a_setup_error_is_the_answer_of_a_warm_start(runtime: Runtime, make_package: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    package = install(runtime, make_package, SLEEPER)
    keeper = InstanceIdentity("svc-bad-keeper", "subject", 0)
    runtime.start(keeper, package)
    identity = InstanceIdentity("svc-bad", "subject", 0)
    runtime.start(identity, package)
    runtime.stop(identity.instance_id)
    # a run directory that cannot be made: the supervisor's setup fails, and says so in the
    # status it writes before answering
    run_dir = runtime.run_dir(identity.instance_id)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.write_text("not a directory")
    try:
        returned = runtime.start(identity, package.digest, wait=False)
        assert returned.phase == Phase.FAILED and returned.reason == Reason.SETUP_ERROR, returned
    finally:
        run_dir.unlink(missing_ok=True)
    runtime.cleanup()
    assert_nothing_left(runtime)
