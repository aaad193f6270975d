"""The operator's device liveness book (controller/liveness.py), on a clock the test moves. On the
real server: tests/e2e/test_operator_agents.py (an agent cut off the API is marked, then Ready)."""

from __future__ import annotations

from typing import Any

from aos_operator.controller.liveness import SILENT_REASON, LivenessBook, silent_patch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def device(ready: str = "True", beat: str = "t0") -> dict[str, Any]:
    return {"status": {"lastHeartbeat": beat, "conditions": [
        {"type": "Ready", "status": ready, "reason": "AgentRunning"}, {"type": "Other", "status": "True"}]}}


def lease(renewed: str, duration: int = 40) -> dict[str, Any]:
    return {"spec": {"holderIdentity": "edge", "renewTime": renewed, "leaseDurationSeconds": duration}}


def book(grace: float = 40.0) -> tuple[LivenessBook, Clock]:
    clock = Clock()
    liveness = LivenessBook(grace, clock)
    liveness.synced = True
    return liveness, clock


def silent_names(liveness: LivenessBook) -> list[str]:
    return [name for name, _, _ in liveness.silent()]


def test_a_renewed_lease_keeps_a_device_alive_and_a_stale_one_marks_it_after_the_grace() -> None:
    liveness, clock = book()
    liveness.device_seen("edge", device())
    for second in range(0, 120, 10):
        clock.now = 1000.0 + second
        liveness.lease_seen(lease(f"r{second}"), "edge")
        assert silent_names(liveness) == [], "renewed every 10 s"
    clock.now += 40
    assert silent_names(liveness) == [], "not before the grace has passed"
    clock.now += 1
    ((name, seconds, conditions),) = liveness.silent()
    assert name == "edge" and seconds == 41 and [c["type"] for c in conditions] == ["Ready", "Other"]


def test_what_counts_is_a_change_seen_not_an_event() -> None:
    liveness, clock = book()
    liveness.device_seen("edge", device())
    liveness.lease_seen(lease("r1"), "edge")
    clock.now += 30
    liveness.lease_seen(lease("r1"), "edge")  # the same renewTime again: e.g. a relist
    liveness.device_seen("edge", device())  # a label change: the same lastHeartbeat
    clock.now += 11
    assert silent_names(liveness) == ["edge"]


def test_a_status_heartbeat_counts_for_agents_without_a_lease() -> None:
    liveness, clock = book(grace=20.0)
    liveness.device_seen("edge", device(beat="t0"))
    clock.now += 15
    liveness.device_seen("edge", device(beat="t1"))
    clock.now += 15
    assert silent_names(liveness) == []
    clock.now += 6
    assert silent_names(liveness) == ["edge"]


def test_a_longer_lease_widens_the_grace() -> None:
    liveness, clock = book(grace=20.0)
    liveness.device_seen("edge", device())
    liveness.lease_seen(lease("r1", duration=60), "edge")
    clock.now += 59
    assert silent_names(liveness) == []
    clock.now += 2
    assert silent_names(liveness) == ["edge"]


def test_nothing_is_marked_unsynced_nor_before_a_grace_since_the_start_nor_twice() -> None:
    liveness, clock = book()
    liveness.device_seen("edge", device())
    liveness.device_seen("stopped", device(ready="False"))
    clock.now += 39
    assert silent_names(liveness) == [], "the operator just started: its agent may beat any moment"
    clock.now += 2
    liveness.synced = False
    assert silent_names(liveness) == [], "the Lease watch is down: silence proves nothing"
    liveness.synced = True
    assert silent_names(liveness) == ["edge"], "a device its agent marked not Ready is left alone"
    liveness.marked("edge")
    assert silent_names(liveness) == []
    liveness.device_seen("edge", None)
    liveness.device_seen("edge", device())  # registered again: heard now
    assert silent_names(liveness) == []


def test_the_patch_sets_ready_unknown_and_keeps_the_other_conditions() -> None:
    conditions = device()["status"]["conditions"]
    patch = silent_patch(conditions, 52.4, 40.0)["status"]["conditions"]
    assert [c["type"] for c in patch] == ["Other", "Ready"]
    ready = patch[1]
    assert (ready["status"], ready["reason"]) == ("Unknown", "AgentSilent") and SILENT_REASON == "AgentSilent"
    assert "for 52 s (grace 40 s)" in ready["message"]
