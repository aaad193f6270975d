"""The status lines of `aosctl run` (runtime/foreground.py): what a person reads about a crash."""

from __future__ import annotations

import threading

from aos_operator.runtime.foreground import _describe
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.status import InstanceStatus, Phase, Reason, Termination


def status(**fields: object) -> InstanceStatus:
    return InstanceStatus("id", InstanceIdentity("s", "local", 0), "sha256:" + "0" * 64, **fields)  # type: ignore[arg-type]


def test_running_after_a_crash_says_so() -> None:
    text = _describe(status(phase=Phase.RUNNING, restarts=2,
                            last_exit=Termination(exit_code=1, reason=Reason.CRASHED, finished_at=0.0)))
    assert text == "Running, previous run exited with code 1 (Crashed), restarted 2 times"


def test_a_crash_loop_of_a_service_that_exits_0_explains_itself() -> None:
    text = _describe(status(phase=Phase.FAILED, reason=Reason.CRASH_LOOP, restarts=3,
                            last_exit=Termination(exit_code=0, reason=Reason.COMPLETED, finished_at=0.0)))
    assert text.startswith("Failed (CrashLoop), last exit code 0 (Completed), restarted 3 times")
    assert "--no-restart" in text
    crashed = _describe(status(phase=Phase.FAILED, reason=Reason.CRASH_LOOP,
                               last_exit=Termination(exit_code=4, reason=Reason.CRASHED, finished_at=0.0)))
    assert "--no-restart" not in crashed


def test_a_stop_on_request_is_said_once() -> None:
    text = _describe(status(phase=Phase.STOPPED, reason=Reason.STOPPED,
                            last_exit=Termination(exit_code=137, reason=Reason.KILLED, finished_at=0.0)))
    assert text == "Stopped on request, last exit code 137 (Killed)"


def test_stop_on_signals_covers_the_terminal_closing() -> None:
    import os
    import signal

    from aos_operator.runtime.foreground import stop_on_signals

    stop = threading.Event()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGHUP)
    assert stop.is_set()
