"""The rollout planner: which revision each device of a service should run now. Pure.

Input: the revision to roll out (the target), the strategy, every device the service runs on
with the revision its instances are assigned and their states, the planner's memory from the
last pass (`RolloutState`, kept in `status.rollout`), whether the rollout is paused or a canary
pause was resumed, and the clock. Output: a revision per device, the new memory, the events to
post, and when to look again. The reconciler turns revisions into instance patches.

Rules (README, Rollouts):
- Devices are the unit: all instances of a service on one device run the same revision.
- A device is available when every instance of it is Running the digest it is assigned and has
  run for `minReadySeconds` since its last (re)start.
- At most `maxUnavailable` devices are unavailable at once; a device that is already
  unavailable may be updated without using the budget (it cannot get less available).
- Canary steps raise the number of updated devices step by step; each step waits until its
  devices are available, then pauses (a duration, or until resumed).
- More than `failureThreshold` Failed updated instances (for a health reason), or no updated
  device becoming available for `progressDeadlineSeconds` (pauses excluded), aborts: every
  updated device goes back to the stable revision, the last one that completed. A target that
  has completed is not aborted any more: what fails later is the service's health.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from aos_operator.api.models import RolloutStrategy
from aos_operator.errors import SpecError

FAILURE_REASONS = frozenset({"CrashLoop", "OOMKilled", "StartError", "OfflineTimeout"})
PROGRESSING, PAUSED, COMPLETE, ROLLED_BACK, FAILED = "Progressing", "Paused", "Complete", "RolledBack", "Failed"
DEFAULT_MAX_UNAVAILABLE = "25%"
_PERCENT = re.compile(r"(0|[1-9][0-9]{0,2})%")


def resolve(value: int | str, total: int, *, round_up: bool, where: str) -> int:
    """A count, or a percentage of `total` (rounded as asked), bounded to 0..total."""
    if isinstance(value, bool):
        raise SpecError(f"{where}: expected a count or a percentage such as 25%, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(f"{where}: {value} is negative; use a count >= 0 or a percentage")
        return min(value, total)
    match = _PERCENT.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or int(match.group(1)) > 100:
        raise SpecError(f"{where}: {value!r} is neither a count nor a percentage 0%..100%")
    share = total * int(match.group(1)) / 100
    return min(total, math.ceil(share) if round_up else math.floor(share))


@dataclass(frozen=True)
class Step:
    devices: int | str
    pause_seconds: float | None  # None: until resumed


@dataclass(frozen=True)
class Strategy:
    max_unavailable: int | str = DEFAULT_MAX_UNAVAILABLE
    min_ready_seconds: float = 0.0
    steps: tuple[Step, ...] = ()
    failure_threshold: int | str = 0
    progress_deadline_seconds: float = 600.0

    @classmethod
    def from_spec(cls, spec: RolloutStrategy | None) -> Strategy:
        if spec is None:
            return cls()
        rolling = spec.rollingUpdate
        return cls(
            max_unavailable=rolling.maxUnavailable if rolling else DEFAULT_MAX_UNAVAILABLE,
            min_ready_seconds=float(rolling.minReadySeconds) if rolling else 0.0,
            steps=tuple(Step(s.devices, s.pauseSeconds) for s in spec.canary.steps) if spec.canary else (),
            failure_threshold=spec.failureThreshold,
            progress_deadline_seconds=float(spec.progressDeadlineSeconds),
        )

    def check(self) -> None:
        """Refuse values the schema lets through but the planner cannot use (e.g. "150%")."""
        resolve(self.max_unavailable, 100, round_up=False, where="spec.strategy.rollingUpdate.maxUnavailable")
        resolve(self.failure_threshold, 100, round_up=False, where="spec.strategy.failureThreshold")
        for number, step in enumerate(self.steps):
            resolve(step.devices, 100, round_up=True, where=f"spec.strategy.canary.steps[{number}].devices")


@dataclass(frozen=True)
class InstanceState:
    digest: str | None  # assigned
    phase: str | None = None
    running_digest: str | None = None
    reason: str | None = None
    start_time: datetime | None = None


@dataclass(frozen=True)
class DeviceState:
    name: str
    revision: int | None  # the revision its instances are assigned; None when unknown or it has none
    instances: tuple[InstanceState, ...] = ()

    @property
    def new(self) -> bool:
        return not self.instances


@dataclass(frozen=True)
class RolloutState:
    """What the planner remembers between passes (status.rollout)."""

    revision: int | None = None
    stable: int | None = None
    phase: str | None = None
    step: int = 0
    step_reached_at: datetime | None = None
    last_progress_at: datetime | None = None
    available: int = 0
    failed_revision: int | None = None
    message: str = ""

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> RolloutState:
        status = status or {}

        def when(key: str) -> datetime | None:
            value = status.get(key)
            if isinstance(value, datetime):
                return value
            return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) and value else None

        def number(key: str) -> int | None:
            value = status.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return cls(
            revision=number("revision"),
            stable=number("stableRevision"),
            phase=status.get("phase") if isinstance(status.get("phase"), str) else None,
            step=number("step") or 0,
            step_reached_at=when("stepReachedAt"),
            last_progress_at=when("lastProgressAt"),
            available=number("availableDevices") or 0,
            failed_revision=number("failedRevision"),
            message=str(status.get("message") or ""),
        )


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Decision:
    assign: dict[str, int | None]  # device -> revision; None: leave what it has
    state: RolloutState
    events: list[Event] = field(default_factory=list)
    wake_in: float | None = None  # seconds until a timer (pause, minReady, deadline) may change the plan
    total: int = 0
    updated: int = 0
    available: int = 0

    def status(self, at: str) -> dict[str, Any]:
        """status.rollout as written to the API (times as RFC 3339)."""
        state = self.state

        def stamp(value: datetime | None) -> str | None:
            return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None

        out: dict[str, Any] = {
            "revision": state.revision, "stableRevision": state.stable, "phase": state.phase, "step": state.step,
            "stepReachedAt": stamp(state.step_reached_at), "lastProgressAt": stamp(state.last_progress_at),
            "updatedDevices": self.updated, "availableDevices": self.available, "totalDevices": self.total,
            "failedRevision": state.failed_revision, "message": state.message,
            "progress": f"{self.updated}/{self.total}",
        }
        return {key: value for key, value in out.items() if value is not None}


def _available(instance: InstanceState, min_ready: float, now: datetime) -> tuple[bool, float | None]:
    """Is it available, and if it will be by time alone, in how many seconds."""
    if instance.phase != "Running" or instance.digest is None or instance.running_digest != instance.digest:
        return False, None
    if min_ready <= 0:
        return True, None
    if instance.start_time is None:
        return False, None
    ran = (now - instance.start_time).total_seconds()
    return (True, None) if ran >= min_ready else (False, min_ready - ran)


def _failed(instance: InstanceState) -> bool:
    if instance.phase != "Failed" or instance.reason not in FAILURE_REASONS:
        return False
    # An OfflineTimeout of the previous package, reported before the agent took the new one (which
    # is what starts it again), says nothing of the new package.
    return not (instance.reason == "OfflineTimeout" and instance.running_digest not in (None, instance.digest))


def _soonest(*values: float | None) -> float | None:
    present = [value for value in values if value is not None]
    return max(0.0, min(present)) if present else None


def plan_rollout(
    target: int,
    strategy: Strategy,
    devices: Sequence[DeviceState],
    previous: RolloutState,
    now: datetime,
    *,
    paused: bool = False,
    resumed_step: int | None = None,
) -> Decision:
    """Which revision each device gets now, toward `target`; see the module docstring."""
    events: list[Event] = []
    state = previous
    if state.revision != target:
        stable = previous.revision if previous.phase == COMPLETE else previous.stable
        if stable == target:
            stable = previous.stable if previous.stable != target else None
        state = RolloutState(revision=target, stable=stable, phase=PROGRESSING, last_progress_at=now)
        if previous.revision is not None:
            events.append(Event("Normal", "RolloutStarted", f"rolling out revision {target}"
                                + (f" (stable: revision {stable})" if stable else "")))
    devices = sorted(devices, key=lambda device: device.name)
    total = len(devices)
    wake: list[float | None] = []
    available: dict[str, bool] = {}
    for device in devices:
        results = [_available(instance, strategy.min_ready_seconds, now) for instance in device.instances]
        available[device.name] = bool(results) and all(ok for ok, _ in results)
        wake.extend(later for ok, later in results if not ok)
    updated = [device for device in devices if device.revision == target and not device.new]
    updated_available = sum(1 for device in updated if available[device.name])

    def decision(assign: dict[str, int | None], state: RolloutState, updated_count: int) -> Decision:
        return Decision(assign, state, events, _soonest(*wake), total, updated_count, updated_available)

    keep = {device.name: device.revision for device in devices}
    if total == 0:  # nothing to roll out to (yet); the rollout goes on when devices appear
        return decision({}, replace(state, message="no device selected"), 0)

    # After an abort, the target stays rolled back until the spec (and so the target) changes.
    if state.phase in (ROLLED_BACK, FAILED):
        fallback = state.stable if state.phase == ROLLED_BACK else target
        assign = {device.name: (fallback if device.revision == target or device.new else device.revision)
                  for device in devices}
        back = sum(1 for revision in assign.values() if revision == target)
        return decision(assign, state, back)

    # Abort rules, for a target that has not completed yet. Once it has (it is the stable
    # revision), there is nothing to go back to: a device that joins later, or an instance that
    # crashes or whose device goes silent, is the service's health (Ready), not a failed rollout.
    # Before, such a device "rolled back" the completed revision to itself after the deadline.
    aborting = state.stable != target
    updated_instances = [instance for device in updated for instance in device.instances]
    failed = [instance for instance in updated_instances if _failed(instance)] if aborting else []
    threshold = resolve(strategy.failure_threshold, len(updated_instances), round_up=False,
                        where="spec.strategy.failureThreshold")
    reason = ""
    if len(failed) > threshold:
        kinds = ", ".join(sorted({instance.reason or "" for instance in failed}))
        reason = f"{len(failed)} of {len(updated_instances)} updated instances failed ({kinds})"
    # The deadline does not run while paused; it starts again when the pause ends.
    spec_pause_ended = state.phase == PAUSED and not paused and state.step_reached_at is None
    if updated_available > state.available or state.last_progress_at is None or spec_pause_ended:
        state = replace(state, last_progress_at=now)
    stuck = [device for device in updated if not available[device.name]] if aborting else []
    if not reason and stuck and not paused and state.last_progress_at is not None:
        waited = (now - state.last_progress_at).total_seconds()
        if waited >= strategy.progress_deadline_seconds:
            reason = (f"{len(stuck)} updated device(s) not available within progressDeadlineSeconds "
                      f"({strategy.progress_deadline_seconds:.0f} s): {', '.join(d.name for d in stuck[:5])}")
        else:
            wake.append(strategy.progress_deadline_seconds - waited)
    state = replace(state, available=updated_available)
    if reason:
        if state.stable is None:
            message = f"revision {target} failed: {reason}; no earlier revision completed, nothing to go back to"
            state = replace(state, phase=FAILED, failed_revision=target, message=message)
            events.append(Event("Warning", "RolloutFailed", message))
            return decision(keep, state, len(updated))
        message = f"revision {target} failed: {reason}; rolled back to revision {state.stable}"
        state = replace(state, phase=ROLLED_BACK, failed_revision=target, message=message)
        events.append(Event("Warning", "RolledBack", message))
        assign = {device.name: (state.stable if device.revision == target or device.new else device.revision)
                  for device in devices}
        return decision(assign, state, 0)

    # How many devices may be on the target now: canary steps first, then all.
    steps = strategy.steps
    phase, message = PROGRESSING, ""
    while state.step < len(steps):
        step = steps[state.step]
        wanted = max(1, resolve(step.devices, total, round_up=True, where=f"canary.steps[{state.step}].devices"))
        limit = wanted
        if len(updated) < wanted or updated_available < len(updated):
            message = f"canary step {state.step + 1}/{len(steps)}: {updated_available} of {wanted} device(s) available"
            break
        reached = state.step_reached_at or now
        if state.step_reached_at is None:
            events.append(Event("Normal", "CanaryStepReached",
                                f"revision {target}: canary step {state.step + 1}/{len(steps)}, {wanted} device(s) available"))
            state = replace(state, step_reached_at=reached)
        if step.pause_seconds is None:
            if resumed_step is not None and resumed_step >= state.step:
                state = replace(state, step=state.step + 1, step_reached_at=None, last_progress_at=now)
                continue
            phase = PAUSED
            message = f"canary step {state.step + 1}/{len(steps)} done; paused until `aosctl rollout resume`"
            limit = len(updated)
            break
        left = step.pause_seconds - (now - reached).total_seconds()
        if left <= 0:
            state = replace(state, step=state.step + 1, step_reached_at=None, last_progress_at=now)
            continue
        phase = PAUSED
        until = (reached + timedelta(seconds=step.pause_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = f"canary step {state.step + 1}/{len(steps)} done; paused until {until}"
        wake.append(left)
        limit = len(updated)
        break
    else:
        limit = total  # past the canary: the rolling rule for the rest
    if paused:
        phase, message, limit = PAUSED, "paused (spec.paused)", len(updated)

    # Who moves: unavailable old devices first (free), then available ones within the budget.
    max_unavailable = max(1, resolve(strategy.max_unavailable, total, round_up=False,
                                     where="spec.strategy.rollingUpdate.maxUnavailable"))
    assign = dict(keep)
    for device in devices:
        if device.new:  # nothing to make unavailable: new devices join the stable side until the canary is past
            past_canary = state.step >= len(steps)
            assign[device.name] = target if state.stable is None or (past_canary and not paused) else state.stable
    count = len(updated) + sum(1 for device in devices if device.new and assign[device.name] == target)
    unavailable = sum(1 for device in devices if not available[device.name])
    budget = max_unavailable - unavailable
    old = [device for device in devices if not device.new and device.revision != target]
    for device in sorted(old, key=lambda device: available[device.name]):
        if count >= limit:
            break
        if available[device.name]:
            if budget <= 0:
                break
            budget -= 1
        assign[device.name] = target
        count += 1

    if count >= total and updated_available == total and state.step >= len(steps):
        if state.phase != COMPLETE:
            events.append(Event("Normal", "RolloutComplete", f"revision {target} runs on all {total} device(s)"))
        state = replace(state, phase=COMPLETE, stable=target, message=f"revision {target} on all {total} device(s)")
    else:
        if not message:
            message = f"{updated_available} of {total} device(s) updated and available, {count} assigned"
        if phase == PAUSED and state.phase != PAUSED:
            events.append(Event("Normal", "RolloutPaused", message))
        state = replace(state, phase=phase, message=message)
    return decision(assign, state, count)
