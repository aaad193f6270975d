"""The rollout planner (controller.rollout), pure: rules one by one, then whole simulated rollouts."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aos_operator.api.models import RolloutStrategy
from aos_operator.controller.rollout import (
    COMPLETE,
    FAILED,
    PAUSED,
    PROGRESSING,
    ROLLED_BACK,
    DeviceState,
    InstanceState,
    RolloutState,
    Step,
    Strategy,
    plan_rollout,
    resolve,
)
from aos_operator.errors import SpecError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DIGESTS = {1: "sha256:" + "1" * 64, 2: "sha256:" + "2" * 64, 3: "sha256:" + "3" * 64}


def running(revision: int, since: datetime = T0 - timedelta(hours=1)) -> InstanceState:
    return InstanceState(DIGESTS[revision], "Running", DIGESTS[revision], start_time=since)


def starting(revision: int, previous: int | None = None) -> InstanceState:
    return InstanceState(DIGESTS[revision], "Starting", DIGESTS[previous] if previous else None)


def failed(revision: int, reason: str = "CrashLoop") -> InstanceState:
    return InstanceState(DIGESTS[revision], "Failed", DIGESTS[revision], reason=reason)


def fleet(count: int, revision: int) -> list[DeviceState]:
    return [DeviceState(f"dev-{n:02d}", revision, (running(revision),)) for n in range(count)]


def complete(revision: int) -> RolloutState:
    return RolloutState(revision=revision, stable=revision, phase=COMPLETE, step=0, available=10)


def moved(decision_assign: dict[str, int | None], devices: list[DeviceState], target: int) -> list[str]:
    before = {device.name: device.revision for device in devices}
    return sorted(name for name, revision in decision_assign.items() if revision == target and before[name] != target)


# --- counts and percentages ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "total", "up", "expected"), [
    (2, 10, False, 2), (20, 10, False, 10), (0, 10, False, 0),
    ("25%", 10, False, 2), ("25%", 10, True, 3), ("10%", 200, False, 20), ("0%", 5, True, 0),
    ("100%", 7, False, 7), ("1%", 50, False, 0), ("1%", 50, True, 1),
])
def test_resolve_counts_and_percentages(value: int | str, total: int, up: bool, expected: int) -> None:
    assert resolve(value, total, round_up=up, where="x") == expected


@pytest.mark.parametrize("value", ["150%", "-1%", "ten", "25 %", "", "010%", -1, True])
def test_resolve_refuses_what_is_neither_count_nor_percentage(value: object) -> None:
    with pytest.raises(SpecError, match="field"):
        resolve(value, 10, round_up=False, where="field")  # type: ignore[arg-type]


def test_strategy_from_spec_defaults_and_fields() -> None:
    assert Strategy.from_spec(None) == Strategy("25%", 0.0, (), 0, 600.0)
    spec = RolloutStrategy.model_validate({
        "rollingUpdate": {"maxUnavailable": 3, "minReadySeconds": 5},
        "canary": {"steps": [{"devices": 2, "pauseSeconds": 60}, {"devices": "50%"}]},
        "failureThreshold": "10%", "progressDeadlineSeconds": 30,
    })
    assert Strategy.from_spec(spec) == Strategy(3, 5.0, (Step(2, 60), Step("50%", None)), "10%", 30.0)
    with pytest.raises(SpecError, match=r"canary.steps\[0\].devices"):
        Strategy(steps=(Step("200%", None),)).check()


# --- rolling --------------------------------------------------------------------------------------


def test_first_rollout_puts_every_device_on_the_target_at_once() -> None:
    devices = [DeviceState(f"dev-{n}", None) for n in range(5)]
    decision = plan_rollout(1, Strategy(max_unavailable=1), devices, RolloutState(), T0)
    assert set(decision.assign.values()) == {1}
    assert decision.state.phase == PROGRESSING and decision.state.stable is None
    assert decision.events == []  # the first build is no "rollout started"


def test_new_revision_moves_max_unavailable_devices_and_no_more() -> None:
    devices = fleet(10, 1)
    decision = plan_rollout(2, Strategy(max_unavailable=2), devices, complete(1), T0)
    assert moved(decision.assign, devices, 2) == ["dev-00", "dev-01"]
    assert decision.state.stable == 1 and decision.state.revision == 2
    assert [e.reason for e in decision.events] == ["RolloutStarted"]
    assert decision.updated == 2 and decision.total == 10


def test_unavailable_updated_devices_use_the_budget() -> None:
    devices = fleet(10, 1)
    devices[0] = DeviceState("dev-00", 2, (starting(2, 1),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    decision = plan_rollout(2, Strategy(max_unavailable=2), devices, state, T0)
    assert moved(decision.assign, devices, 2) == ["dev-01"]
    devices[1] = DeviceState("dev-01", 2, (starting(2, 1),))
    assert moved(plan_rollout(2, Strategy(max_unavailable=2), devices, state, T0).assign, devices, 2) == []


def test_an_unavailable_old_device_is_updated_without_budget() -> None:
    devices = fleet(4, 1)
    devices[3] = DeviceState("dev-03", 1, (failed(1, "OOMKilled"),))
    decision = plan_rollout(2, Strategy(max_unavailable=1), devices, complete(1), T0)
    # dev-03 cannot get less available: it moves first, and the budget (1) is already used by it
    assert moved(decision.assign, devices, 2) == ["dev-03"]


def test_percent_budget_rounds_down_but_never_below_one() -> None:
    devices = fleet(3, 1)
    decision = plan_rollout(2, Strategy(max_unavailable="25%"), devices, complete(1), T0)
    assert len(moved(decision.assign, devices, 2)) == 1
    devices = fleet(200, 1)
    decision = plan_rollout(2, Strategy(max_unavailable="10%"), devices, complete(1), T0)
    assert len(moved(decision.assign, devices, 2)) == 20


def test_min_ready_seconds_delays_availability_and_asks_to_wake() -> None:
    devices = fleet(4, 1)
    devices[0] = DeviceState("dev-00", 2, (running(2, since=T0 - timedelta(seconds=3)),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    decision = plan_rollout(2, Strategy(max_unavailable=1, min_ready_seconds=10), devices, state, T0)
    assert moved(decision.assign, devices, 2) == []
    assert decision.available == 0 and decision.wake_in == pytest.approx(7)
    later = plan_rollout(2, Strategy(max_unavailable=1, min_ready_seconds=10), devices, state, T0 + timedelta(seconds=8))
    assert moved(later.assign, devices, 2) == ["dev-01"]


def test_running_the_old_digest_while_assigned_the_new_is_not_available() -> None:
    devices = fleet(2, 1)
    devices[0] = DeviceState("dev-00", 2, (InstanceState(DIGESTS[2], "Running", DIGESTS[1], start_time=T0),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    decision = plan_rollout(2, Strategy(max_unavailable=1), devices, state, T0)
    assert decision.available == 0 and moved(decision.assign, devices, 2) == []


def test_all_updated_and_available_completes_and_becomes_stable() -> None:
    devices = fleet(3, 2)
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    decision = plan_rollout(2, Strategy(), devices, state, T0)
    assert decision.state.phase == COMPLETE and decision.state.stable == 2
    assert [e.reason for e in decision.events] == ["RolloutComplete"]
    again = plan_rollout(2, Strategy(), devices, decision.state, T0)
    assert again.events == [] and again.state.phase == COMPLETE


def test_new_devices_during_a_canary_join_the_stable_side_and_after_it_the_target() -> None:
    devices = [*fleet(4, 1), DeviceState("dev-new", None)]
    strategy = Strategy(max_unavailable=1, steps=(Step(1, None),))
    decision = plan_rollout(2, strategy, devices, complete(1), T0)
    assert decision.assign["dev-new"] == 1
    past = RolloutState(revision=2, stable=1, phase=PROGRESSING, step=1, last_progress_at=T0)
    assert plan_rollout(2, strategy, devices, past, T0).assign["dev-new"] == 2


def test_no_devices_is_no_progress_and_no_error() -> None:
    decision = plan_rollout(2, Strategy(), [], complete(1), T0)
    assert decision.assign == {} and decision.state.phase == PROGRESSING


# --- pause ----------------------------------------------------------------------------------------


def test_spec_paused_holds_every_further_device_and_the_deadline() -> None:
    devices = fleet(10, 1)
    devices[0] = DeviceState("dev-00", 2, (starting(2, 1),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    later = T0 + timedelta(hours=2)
    decision = plan_rollout(2, Strategy(max_unavailable=5, progress_deadline_seconds=60), devices, state, later, paused=True)
    assert moved(decision.assign, devices, 2) == [] and decision.state.phase == PAUSED  # and no abort
    assert [e.reason for e in decision.events] == ["RolloutPaused"]
    again = plan_rollout(2, Strategy(max_unavailable=5, progress_deadline_seconds=60), devices, decision.state,
                         later + timedelta(seconds=10), paused=True)
    assert again.state == decision.state and again.events == []  # nothing to write while it stays paused
    resumed = plan_rollout(2, Strategy(max_unavailable=5, progress_deadline_seconds=60), devices, decision.state,
                           later + timedelta(seconds=30))
    assert len(moved(resumed.assign, devices, 2)) == 4 and resumed.state.phase == PROGRESSING
    assert resumed.state.last_progress_at == later + timedelta(seconds=30)  # the deadline starts again


# --- canary ---------------------------------------------------------------------------------------


def canary_fleet(updated: int, *, available: bool = True) -> list[DeviceState]:
    devices = fleet(10, 1)
    for n in range(updated):
        devices[n] = DeviceState(f"dev-{n:02d}", 2, (running(2) if available else starting(2, 1),))
    return devices


def test_canary_step_updates_its_devices_only() -> None:
    strategy = Strategy(max_unavailable=5, steps=(Step(2, None),))
    decision = plan_rollout(2, strategy, fleet(10, 1), complete(1), T0)
    assert moved(decision.assign, fleet(10, 1), 2) == ["dev-00", "dev-01"]
    assert decision.state.step == 0 and decision.state.phase == PROGRESSING


def test_canary_waits_for_availability_then_pauses_until_resumed() -> None:
    strategy = Strategy(max_unavailable=5, steps=(Step(2, None),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    waiting = plan_rollout(2, strategy, canary_fleet(2, available=False), state, T0)
    assert waiting.state.step_reached_at is None and waiting.state.phase == PROGRESSING
    reached = plan_rollout(2, strategy, canary_fleet(2), waiting.state, T0 + timedelta(seconds=5))
    assert reached.state.phase == PAUSED and reached.state.step_reached_at == T0 + timedelta(seconds=5)
    assert [e.reason for e in reached.events] == ["CanaryStepReached", "RolloutPaused"]
    assert moved(reached.assign, canary_fleet(2), 2) == []
    still = plan_rollout(2, strategy, canary_fleet(2), reached.state, T0 + timedelta(days=3))
    assert still.state.phase == PAUSED and moved(still.assign, canary_fleet(2), 2) == []
    assert plan_rollout(2, strategy, canary_fleet(2), reached.state, T0, resumed_step=-1).state.phase == PAUSED
    go = plan_rollout(2, strategy, canary_fleet(2), reached.state, T0 + timedelta(days=3), resumed_step=0)
    assert go.state.step == 1 and go.state.phase == PROGRESSING
    assert moved(go.assign, canary_fleet(2), 2) == ["dev-02", "dev-03", "dev-04", "dev-05", "dev-06"]


def test_canary_timed_pause_ends_by_the_clock() -> None:
    strategy = Strategy(max_unavailable=1, steps=(Step("20%", 60), Step(5, 0)))
    state = RolloutState(revision=2, stable=1, phase=PAUSED, step=0, step_reached_at=T0, last_progress_at=T0)
    early = plan_rollout(2, strategy, canary_fleet(2), state, T0 + timedelta(seconds=20))
    assert early.state.phase == PAUSED and early.wake_in == pytest.approx(40)
    late = plan_rollout(2, strategy, canary_fleet(2), state, T0 + timedelta(seconds=61))
    assert late.state.step == 1 and moved(late.assign, canary_fleet(2), 2) == ["dev-02"]


def test_canary_steps_of_zero_pause_run_straight_through() -> None:
    strategy = Strategy(max_unavailable="100%", steps=(Step(1, 0), Step(2, 0)))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, step=0, last_progress_at=T0)
    decision = plan_rollout(2, strategy, canary_fleet(2), state, T0)
    assert decision.state.step == 2 and len(moved(decision.assign, canary_fleet(2), 2)) == 8


# --- abort and rollback -----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["CrashLoop", "OOMKilled", "StartError", "OfflineTimeout"])
def test_a_failed_updated_instance_rolls_back_to_the_stable_revision(reason: str) -> None:
    devices = canary_fleet(2)
    devices[1] = DeviceState("dev-01", 2, (failed(2, reason),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    decision = plan_rollout(2, Strategy(steps=(Step(2, None),)), devices, state, T0)
    assert decision.state.phase == ROLLED_BACK and decision.state.failed_revision == 2
    assert decision.assign["dev-00"] == 1 and decision.assign["dev-01"] == 1
    assert all(revision == 1 for revision in decision.assign.values())
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "RolledBack")]
    assert "revision 2 failed" in decision.events[0].message and reason in decision.events[0].message
    # It stays rolled back, and later passes post nothing more.
    later = plan_rollout(2, Strategy(steps=(Step(2, None),)), devices, decision.state, T0 + timedelta(minutes=1))
    assert later.state.phase == ROLLED_BACK and later.events == [] and later.assign["dev-01"] == 1


def test_failures_that_are_not_health_failures_do_not_abort() -> None:
    devices = canary_fleet(2)
    devices[1] = DeviceState("dev-01", 2, (failed(2, "PullFailed"),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    assert plan_rollout(2, Strategy(), devices, state, T0).state.phase == PROGRESSING


def test_failure_threshold_count_and_percent() -> None:
    devices = canary_fleet(4)
    devices[0] = DeviceState("dev-00", 2, (failed(2),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    assert plan_rollout(2, Strategy(failure_threshold=1), devices, state, T0).state.phase == PROGRESSING
    assert plan_rollout(2, Strategy(failure_threshold="25%"), devices, state, T0).state.phase == PROGRESSING
    devices[1] = DeviceState("dev-01", 2, (failed(2, "OOMKilled"),))
    assert plan_rollout(2, Strategy(failure_threshold=1), devices, state, T0).state.phase == ROLLED_BACK
    assert plan_rollout(2, Strategy(failure_threshold="50%"), devices, state, T0).state.phase == PROGRESSING


def test_failures_of_the_old_revision_do_not_abort_the_new() -> None:
    devices = fleet(4, 1)
    devices[3] = DeviceState("dev-03", 1, (failed(1),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    assert plan_rollout(2, Strategy(), devices, state, T0).state.phase == PROGRESSING


def test_progress_deadline_aborts_when_updated_devices_stay_unavailable() -> None:
    devices = canary_fleet(2, available=False)
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    strategy = Strategy(progress_deadline_seconds=60)
    before = plan_rollout(2, strategy, devices, state, T0 + timedelta(seconds=59))
    assert before.state.phase == PROGRESSING and before.wake_in == pytest.approx(1)
    after = plan_rollout(2, strategy, devices, state, T0 + timedelta(seconds=60))
    assert after.state.phase == ROLLED_BACK and "progressDeadlineSeconds" in after.state.message
    assert after.assign["dev-00"] == 1


def test_progress_restarts_the_deadline() -> None:
    devices = canary_fleet(3, available=False)
    devices[0] = DeviceState("dev-00", 2, (running(2),))
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0, available=0)
    decision = plan_rollout(2, Strategy(progress_deadline_seconds=60), devices, state, T0 + timedelta(seconds=59))
    assert decision.state.last_progress_at == T0 + timedelta(seconds=59) and decision.state.available == 1
    later = plan_rollout(2, Strategy(progress_deadline_seconds=60), devices, decision.state, T0 + timedelta(seconds=100))
    assert later.state.phase == PROGRESSING


def test_a_completed_revision_is_never_rolled_back_to_itself() -> None:
    # Hours after the rollout completed: an instance restarts, another crash-loops, and a device
    # joins the selector. Before, each one "rolled back" revision 2 to revision 2 and left the
    # service RolledBack until its spec changed.
    devices = fleet(3, 2)
    done = plan_rollout(2, Strategy(), devices, RolloutState(revision=2, stable=1, phase=PROGRESSING,
                                                             last_progress_at=T0), T0)
    assert done.state.phase == COMPLETE and done.state.stable == 2
    later = T0 + timedelta(hours=2)
    devices[0] = DeviceState("dev-00", 2, (starting(2),))
    devices[1] = DeviceState("dev-01", 2, (failed(2),))
    devices.append(DeviceState("dev-09", None, ()))
    joined = plan_rollout(2, Strategy(), devices, done.state, later)
    assert joined.assign["dev-09"] == 2
    devices[-1] = DeviceState("dev-09", 2, (starting(2),))
    again = plan_rollout(2, Strategy(), devices, joined.state, later + timedelta(seconds=5))
    assert again.state.phase not in (ROLLED_BACK, FAILED) and not again.state.failed_revision
    assert [e.reason for e in joined.events + again.events] == []
    assert set(again.assign.values()) == {2}
    healthy = [DeviceState(d.name, 2, (running(2),)) for d in devices]
    assert plan_rollout(2, Strategy(), healthy, again.state, later + timedelta(minutes=1)).state.phase == COMPLETE


def test_without_a_stable_revision_a_failure_is_failed_not_rolled_back() -> None:
    devices = [DeviceState("dev-00", 1, (failed(1),)), DeviceState("dev-01", 1, (running(1),))]
    decision = plan_rollout(1, Strategy(), devices, RolloutState(), T0)
    assert decision.state.phase == FAILED and decision.assign == {"dev-00": 1, "dev-01": 1}
    assert [e.reason for e in decision.events] == ["RolloutFailed"]


def test_a_new_target_after_a_rollback_starts_a_new_rollout_from_the_same_stable() -> None:
    rolled_back = RolloutState(revision=2, stable=1, phase=ROLLED_BACK, failed_revision=2)
    decision = plan_rollout(3, Strategy(max_unavailable=1), fleet(4, 1), rolled_back, T0)
    assert decision.state.phase == PROGRESSING and decision.state.stable == 1 and decision.state.failed_revision is None
    assert moved(decision.assign, fleet(4, 1), 3) == ["dev-00"]


def test_undo_to_the_stable_revision_brings_the_bad_devices_back() -> None:
    devices = canary_fleet(3, available=False)
    state = RolloutState(revision=2, stable=1, phase=PROGRESSING, last_progress_at=T0)
    decision = plan_rollout(1, Strategy(max_unavailable=1), devices, state, T0)
    # The three unavailable ones on revision 2 go back at once (they cost no budget).
    assert moved(decision.assign, devices, 1) == ["dev-00", "dev-01", "dev-02"]
    assert decision.state.revision == 1 and decision.state.stable is None


# --- whole rollouts, simulated ------------------------------------------------------------------


def simulate(strategy: Strategy, count: int, bad: bool, seed: int, *, resume_at: int | None = None,
             max_ticks: int = 400) -> tuple[list[dict[str, int | None]], list[int], RolloutState, list[str]]:
    """Tick a fleet through a rollout from revision 1 to 2: devices take 1-4 ticks to start a new
    revision; revision 2 crashes when `bad`. Returns assignments per tick, unavailable device
    counts per tick, the final state and the event reasons."""
    rng = random.Random(seed)
    revision = {f"d{n:03d}": 1 for n in range(count)}
    ready_at = {name: 0 for name in revision}
    state, now = complete(1), T0
    history, unavailable, reasons = [], [], []
    for tick in range(max_ticks):
        now = T0 + timedelta(seconds=tick)
        devices = []
        for name, rev in revision.items():
            if tick < ready_at[name]:
                instance = starting(rev)
            elif bad and rev == 2:
                instance = failed(2)
            else:
                instance = running(rev, since=T0 + timedelta(seconds=ready_at[name]) - timedelta(hours=1))
            devices.append(DeviceState(name, rev, (instance,)))
        unavailable.append(sum(1 for d in devices if d.instances[0].phase != "Running"))
        decision = plan_rollout(2, strategy, devices, state, now,
                                resumed_step=0 if resume_at is not None and tick >= resume_at else None)
        reasons.extend(event.reason for event in decision.events)
        for name, rev in decision.assign.items():
            if rev is not None and rev != revision[name]:
                revision[name] = rev
                ready_at[name] = tick + rng.randint(1, 4)
        history.append(dict(decision.assign))
        state = decision.state
        if state.phase in (COMPLETE, ROLLED_BACK) and all(tick >= r for r in ready_at.values()):
            break
    return history, unavailable, state, reasons


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 40), budget=st.one_of(st.integers(1, 10), st.sampled_from(["10%", "25%", "50%"])),
       seed=st.integers(0, 10_000))
def test_simulated_good_rollout_respects_the_budget_and_finishes(count: int, budget: int | str, seed: int) -> None:
    strategy = Strategy(max_unavailable=budget)
    limit = max(1, resolve(budget, count, round_up=False, where="x"))
    _, unavailable, state, reasons = simulate(strategy, count, bad=False, seed=seed)
    assert max(unavailable) <= limit
    assert state.phase == COMPLETE and state.stable == 2
    assert reasons[0] == "RolloutStarted" and reasons[-1] == "RolloutComplete"


@pytest.mark.parametrize("seed", range(8))
def test_simulated_crashing_canary_stops_after_its_step_and_goes_back(seed: int) -> None:
    strategy = Strategy(max_unavailable=2, steps=(Step(2, None),))
    history, _, state, reasons = simulate(strategy, 10, bad=True, seed=seed)
    ever_updated = {name for assign in history for name, rev in assign.items() if rev == 2}
    assert len(ever_updated) == 2  # the canary, never the rest
    assert state.phase == ROLLED_BACK and state.failed_revision == 2
    assert set(history[-1].values()) == {1}
    assert "RolledBack" in reasons


@pytest.mark.parametrize("seed", range(4))
def test_simulated_canary_resumed_runs_to_completion(seed: int) -> None:
    strategy = Strategy(max_unavailable=3, steps=(Step("20%", None),))
    history, unavailable, state, reasons = simulate(strategy, 10, bad=False, seed=seed, resume_at=30)
    assert state.phase == COMPLETE
    assert sum(1 for rev in history[29].values() if rev == 2) == 2  # held at the step until resumed
    assert max(unavailable) <= 3
    assert reasons.count("CanaryStepReached") == 1 and "RolloutPaused" in reasons


def test_a_pass_counts_the_instances_as_its_own_writes_leave_them() -> None:
    """Counted before its writes, a pass that created instances said "0 updated" and the next pass
    wrote the status once more; now the first write says what the pass did."""
    from aos_operator.controller.placement import InstanceView, Plan
    from aos_operator.controller.rollout_pass import _after, _counts

    new, old = "sha256:" + "a" * 64, "sha256:" + "b" * 64

    def body(name: str, digest: str, phase: str | None = None, running: str | None = None) -> dict[str, object]:
        return {"metadata": {"name": name}, "spec": {"device": name, "index": 0, "image": {"digest": digest}},
                "status": {"phase": phase, "imageDigest": running} if phase else {}}

    running = [InstanceView.from_body(body("a", old, "Running", old)), InstanceView.from_body(body("b", old, "Running", old)),
               InstanceView.from_body(body("c", old, "Running", old))]
    work = Plan(create=[body("d", new)], update=[("a", {"spec": {"image": {"digest": new}}})], delete=["c"], desired=3)
    before = _counts(running, {new}, work.desired)
    after = _counts(_after(running, work), {new}, work.desired)
    assert (before.updated, before.ready) == (0, 3)
    assert (after.updated, after.ready, after.failed) == (2, 1, 0), "d created and a patched: updated; a and c no longer ready"


def test_instances_on_a_device_that_is_not_ready_are_neither_ready_nor_available() -> None:
    """A device whose agent went silent (or stopped) keeps its instances, but what the agent last
    reported is not known to hold: not counted ready, and unavailable to the rollout planner."""
    from aos_operator.controller.conditions import rollout_conditions
    from aos_operator.controller.placement import DeviceView, InstanceView
    from aos_operator.controller.rollout_pass import _counts, _device_states, _unreachable

    digest = DIGESTS[1]
    views = [InstanceView.from_body({"metadata": {"name": name}, "spec": {"device": name, "index": 0, "image": {"digest": digest}},
                                     "status": {"phase": "Running", "imageDigest": digest}}) for name in ("dev-a", "dev-b", "dev-c")]
    devices = {"dev-a": DeviceView("dev-a", {}, True, "amd64"), "dev-b": DeviceView("dev-b", {}, False, "amd64")}  # dev-c: gone
    unreachable = _unreachable(views, devices)
    assert unreachable == {"dev-b", "dev-c"}
    counts = _counts(views, {digest}, 3, unreachable)
    assert (counts.ready, counts.updated, counts.unreachable) == (1, 3, 2)
    ready, reconciling, stalled = rollout_conditions(counts)
    assert (ready.status, ready.reason, reconciling.status, stalled.status) == (False, "DeviceNotReady", False, False)
    assert "2 on devices that are not Ready" in ready.message
    assert rollout_conditions(_counts(views, {digest}, 3))[0].status, "all Ready once the devices are"

    states = _device_states({(name, 0) for name in ("dev-a", "dev-b", "dev-c")}, views, {digest: 1}, {}, unreachable)
    by_name = {state.name: state for state in states}
    assert by_name["dev-a"].instances[0].phase == "Running" and by_name["dev-b"].instances[0].phase == "Unknown"
    assert by_name["dev-b"].revision == 1, "still on its revision: it is updated first, without the budget"
    decision = plan_rollout(1, Strategy(), states, RolloutState(revision=1, stable=1, phase=COMPLETE), T0)
    assert decision.available == 1 and decision.state.phase not in (ROLLED_BACK, FAILED)


def test_a_planned_rollout_is_dropped_once_the_body_has_it_or_the_object_is_another() -> None:
    from types import SimpleNamespace

    from aos_operator.controller.rollout_pass import Written, status_seen

    rollout = {"revision": 2, "phase": "Progressing", "progress": "1/3"}
    history = [{"revision": 1, "result": "Superseded"}, {"revision": 2, "result": "Progressing"}]
    op = SimpleNamespace(rollouts={("ns", "svc"): Written("uid-1", rollout, history)})
    status_seen(op, ("ns", "svc"), "uid-1", {"rollout": {**rollout, "progress": "0/3"}, "revisions": history})
    status_seen(op, ("ns", "svc"), "uid-1", None)  # a body from before the first status write
    assert ("ns", "svc") in op.rollouts, "the body is older than the plan: keep it"
    status_seen(op, ("ns", "svc"), "uid-1", {"rollout": dict(rollout), "revisions": [dict(h) for h in history]})
    assert op.rollouts == {}
    op.rollouts[("ns", "svc")] = Written("uid-1", rollout, history)
    status_seen(op, ("ns", "svc"), "uid-2", None)  # deleted and created again under the same name
    assert op.rollouts == {}
