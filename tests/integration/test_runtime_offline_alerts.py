"""offlineTTL in the node supervisor and the agent's alert job, by effect under real runc (root).

The last-contact record is written here as the agent writes it; the Kubernetes side (events,
conditions, an agent cut off its API server) is in tests/e2e/test_offline_alerts.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import assert_nothing_left, process_gone, wait_for_log, wait_for_status, wait_until

from aos_operator.agent.alerts import FALL, RAISE
from aos_operator.agent.instance_alerts import InstanceAlerts
from aos_operator.runtime import InstanceIdentity, Phase, Reason, Runtime
from aos_operator.runtime.offline import online_record_path, record_online
from aos_operator.runtime.runtime import SUPERVISOR_FILE

pytestmark = pytest.mark.root

PYTHON = "/usr/bin/python3"
SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"
# Burns one core until /tmp/calm exists, then sleeps: a CPU alert that rises and falls.
BURNER = """
import os, time
print('burning', flush=True)
while not os.path.exists('/tmp/calm'):
    for _ in range(100000):
        pass
print('calm', flush=True)
time.sleep(3600)
"""


def install(runtime: Runtime, make_package: Callable[..., Path], script: str, **service: object):
    return runtime.install(make_package({"app/main.py": script}, cmd=[PYTHON, "-u", "/app/main.py"],
                                        service_config=service))


def record(runtime: Runtime, age: float = 0.0) -> None:
    record_online(online_record_path(runtime.config.state_root), time.time() - age)


def test_an_instance_offline_longer_than_its_ttl_is_stopped_and_fails_with_offline_timeout(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER, offlineTTL="PT2S")
    identity = InstanceIdentity("svc-ttl", "subject", 0)
    record(runtime)
    started = runtime.start(identity, package)
    assert started.phase == Phase.RUNNING
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.phase.terminal, timeout=30, what="the stop")
    assert (status.phase, status.reason) == (Phase.FAILED, Reason.OFFLINE_TIMEOUT)
    assert "offlineTTL of 2 s" in status.message
    assert status.last_exit is not None and status.last_exit.reason == Reason.KILLED, \
        "stopped as a stop request does (SIGTERM; this init has no handler, so SIGKILL)"
    assert process_gone(started.pid)
    assert_nothing_left(runtime)


def test_an_instance_whose_contact_is_renewed_keeps_running_and_others_are_not_affected(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    limited = install(runtime, make_package, SLEEPER, offlineTTL="PT2S")
    unlimited = install(runtime, make_package, SLEEPER + "\n")  # no offlineTTL: may run offline forever
    record(runtime)
    renewed = InstanceIdentity("svc-renewed", "subject", 0)
    forever = InstanceIdentity("svc-forever", "subject", 0)
    first = runtime.start(renewed, limited)
    runtime.start(forever, unlimited)
    stop = threading.Event()

    def renew() -> None:  # as the agent's successful API calls do
        while not stop.wait(0.3):
            record(runtime)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        time.sleep(5)  # more than twice the TTL
        assert runtime.status(renewed.instance_id).phase == Phase.RUNNING
        assert runtime.status(renewed.instance_id).pid == first.pid, "not restarted either"
    finally:
        stop.set()
        renewer.join()
    status = wait_for_status(runtime, renewed.instance_id, lambda s: s.phase.terminal, timeout=30,
                             what="the stop once the contact is no longer renewed")
    assert status.reason == Reason.OFFLINE_TIMEOUT
    assert runtime.status(forever.instance_id).phase == Phase.RUNNING, "a service without offlineTTL runs on"


def test_no_start_while_expired_and_no_record_means_no_limit(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = install(runtime, make_package, SLEEPER, offlineTTL="PT10S")
    identity = InstanceIdentity("svc-expired", "subject", 0)
    unrecorded = runtime.start(InstanceIdentity("svc-expired", "subject", 1), package)
    assert unrecorded.phase == Phase.RUNNING, "no record (aosctl run, no control plane): nothing is enforced"
    record(runtime, age=60)
    status = runtime.start(identity, package)
    assert (status.phase, status.reason) == (Phase.FAILED, Reason.OFFLINE_TIMEOUT)
    assert status.pid is None and status.starts == 0, "never started"
    assert identity.instance_id not in [c["id"] for c in runtime.runc.list()]


def test_the_restart_policy_does_not_restart_an_expired_instance_after_a_supervisor_restart(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    """The agent's restart while offline: a new supervisor adopts the instances; one whose
    container ended meanwhile would be restarted by the policy, but its TTL has run out."""
    package = install(runtime, make_package, SLEEPER, offlineTTL="PT1H",
                      runParameters={"startInterval": "PT30S", "startBurst": 5, "restartInterval": "PT0.2S"})
    identity = InstanceIdentity("svc-adopted-ttl", "subject", 0)
    record(runtime)
    started = runtime.start(identity, package)
    wait_for_log(runtime, identity.instance_id, "up")
    supervisor = json.loads((runtime.config.run_root / SUPERVISOR_FILE).read_text())["pid"]
    os.kill(supervisor, signal.SIGTERM)  # leaves the container running
    wait_until(lambda: process_gone(supervisor), what="the supervisor to exit")
    os.kill(started.pid, signal.SIGKILL)
    wait_until(lambda: process_gone(started.pid), what="the container to end")
    record(runtime, age=2 * 3600)  # offline for two hours meanwhile
    statuses = {s.instance_id: s for s in Runtime(runtime.config).recover()}
    status = wait_for_status(runtime, identity.instance_id, lambda s: s.phase.terminal, what="the decision")
    assert (status.phase, status.reason) == (Phase.FAILED, Reason.OFFLINE_TIMEOUT), statuses
    assert status.starts == 1, "not started again"
    assert_nothing_left(runtime)


def test_a_cpu_burner_raises_a_cpu_alert_and_it_falls_when_the_service_calms_down(
        runtime: Runtime, make_package: Callable[..., Path]) -> None:
    # One busy core of this node's cores is 100 / cores percent of its DMIPS; 10 % is well below
    # that even on a loaded machine, and an idle service is far below 3 %.
    package = install(runtime, make_package, BURNER, quotas={"tmpLimit": 65536}, alertRules={
        "cpu": {"minTimeout": "PT1S", "minThreshold": 3, "maxThreshold": 10},
    })
    quiet = install(runtime, make_package, SLEEPER, alertRules={
        "cpu": {"minTimeout": "PT1S", "minThreshold": 3, "maxThreshold": 10},
    })
    burner, sleeper = InstanceIdentity("svc-burner", "subject", 0), InstanceIdentity("svc-quiet", "subject", 0)
    started = runtime.start(burner, package)
    runtime.start(sleeper, quiet)
    wait_for_log(runtime, burner.instance_id, "burning")
    alerts = InstanceAlerts(runtime)
    events = []

    def poll_until(status: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for change in alerts.poll():
                events.extend(change.events)
            if any(e.status == status for e in events):
                return
            time.sleep(0.25)
        raise AssertionError(f"no {status} within {timeout:g} s; events {events}")

    poll_until(RAISE)
    (raised,) = [e for e in events if e.status == RAISE]
    assert (raised.instance_id, raised.parameter) == (burner.instance_id, "cpu")
    assert raised.value >= raised.thresholds.max_points
    assert raised.thresholds.max_points == round(runtime.node.dmips * 10 / 100), "percent of the node's DMIPS"
    assert alerts.monitor.raised_counts() == {(burner.instance_id, "cpu"): 1}
    assert [a.parameter for a in alerts.monitor.raised(burner.instance_id)] == ["cpu"]
    Path(f"/proc/{started.pid}/root/tmp/calm").write_text("now")
    wait_for_log(runtime, burner.instance_id, "calm")
    poll_until(FALL)
    assert alerts.monitor.raised(burner.instance_id) == []
    assert all(e.instance_id == burner.instance_id for e in events), "the sleeping service raised nothing"
    runtime.cleanup()
    assert_nothing_left(runtime)
