"""The node supervisor's pure parts: how a wait status becomes a Termination, the SigCgt check
that decides whether a stop waits the grace period, and its answers to requests."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from aos_operator.runtime.status import Reason
from aos_operator.runtime.supervisor import NodeSupervisor, _termination, catches_signal, select_timeout


def wait_status(code: int | None = None, signum: int | None = None) -> int:
    """A raw wait status as waitpid returns it."""
    return (code << 8) if code is not None else int(signum or 0)


def test_exit_codes_and_reasons() -> None:
    assert (_termination(wait_status(0), 0, False, False).reason) == Reason.COMPLETED
    crashed = _termination(wait_status(7), 0, False, False)
    assert (crashed.exit_code, crashed.reason, crashed.signal) == (7, Reason.CRASHED, None)
    by_signal = _termination(wait_status(signum=signal.SIGSEGV), 0, False, False)
    assert (by_signal.exit_code, by_signal.signal, by_signal.reason) == (139, signal.SIGSEGV, Reason.CRASHED)
    assert _termination(wait_status(signum=signal.SIGKILL), 1, False, False).reason == Reason.OOM_KILLED


def test_a_stop_tells_its_own_exit_from_a_kill() -> None:
    own = _termination(wait_status(42), 0, stopping=True, killed=False)
    assert (own.exit_code, own.reason) == (42, Reason.STOPPED)
    by_term = _termination(wait_status(signum=signal.SIGTERM), 0, stopping=True, killed=False)
    assert (by_term.exit_code, by_term.reason) == (143, Reason.STOPPED)
    killed = _termination(wait_status(signum=signal.SIGKILL), 0, stopping=True, killed=True)
    assert (killed.exit_code, killed.reason) == (137, Reason.KILLED)


def test_an_unknown_exit_status_says_so() -> None:
    unknown = _termination(None, 0, False, False, "adopted")
    assert (unknown.exit_code, unknown.reason, unknown.message) == (-1, Reason.CRASHED, "adopted")
    assert _termination(None, 2, False, False).reason == Reason.OOM_KILLED


def test_catches_signal_reads_the_handler_mask() -> None:
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        assert catches_signal(os.getpid(), signal.SIGUSR1)
        assert not catches_signal(os.getpid(), signal.SIGUSR2)  # default disposition
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert catches_signal(2 ** 22 + 12345, signal.SIGTERM)  # no such process: give it the grace period


def test_requests(tmp_path: Path) -> None:
    node = NodeSupervisor(tmp_path / "state", tmp_path / "run", linger=0)
    assert node.handle({"op": "ping"})["ok"] is True
    assert node.handle({"op": "stop", "id": "nothing", "grace": 1}) == {"ok": True, "managed": False}
    assert node.handle({"op": "start", "id": "../escape"}) == {"ok": False, "error": "no instance ../escape to start"}
    assert node.handle({"op": "reboot"}) == {"ok": False, "error": "unknown op 'reboot'"}


def test_a_deadline_years_away_is_waited_for_an_hour_at_a_time() -> None:
    """epoll refuses a wait of more than about 24 days; an offlineTTL of a year must not crash the
    node supervisor, it wakes up hourly instead."""
    assert select_timeout([100.0 + 365 * 86400.0], 100.0) == 3600.0
    assert select_timeout([105.0, 100.0 + 30 * 86400.0], 100.0) == 5.0
    assert select_timeout([90.0], 100.0) == 0.0
    assert select_timeout([], 100.0) is None
