"""The rollout step of a reconciler pass: indexes and status in, the planner, instance writes out.

Thin glue around `rollout.plan_rollout` (the decisions) and `revisions` (the history): it turns
kopf's index entries into device states, the planner's revision per device into instance
patches (by digest, never a rebuild), and the planner's memory and events into status and
Kubernetes Events. Patches this operator made but its index has not seen yet count as made, so
a pass that runs before the watch catches up cannot update more devices than the budget allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from aos_operator.api.models import AOS_SERVICE_INSTANCE, AosServiceSpec, ImageStatus
from aos_operator.controller import revisions
from aos_operator.controller.conditions import READY, RECONCILING, STALLED, Counts, Wanted, rollout_conditions
from aos_operator.controller.placement import (
    DeviceView,
    InstanceView,
    PackageRef,
    Plan,
    Reservation,
    ServiceView,
    describe_misfits,
    no_device_fits,
    plan,
    wanted_keys,
)
from aos_operator.controller.rollout import (
    COMPLETE,
    FAILED,
    PAUSED,
    ROLLED_BACK,
    Decision,
    DeviceState,
    InstanceState,
    RolloutState,
    Strategy,
    plan_rollout,
)


@dataclass(frozen=True)
class Written:
    """status.rollout and status.revisions as this operator's last pass of a service left them,
    until a watch event's body has them (`status_seen`). The operator is their only writer, so
    they are never older than the body's copy, which lags behind until the watch delivers the
    status patch (or the next one, if that write failed). A pass planned from that stale copy
    would undo the last one (e.g. dispatch a rolled-back revision again)."""

    uid: str
    rollout: dict[str, Any]
    revisions: list[dict[str, Any]]


def status_seen(op: Any, key: tuple[str, str], uid: str, status: Mapping[str, Any] | None) -> None:
    """A watch event of the service: once the body has what the last pass planned (only this
    operator writes it), the plan is not kept. Kept, it was a second copy of every service's
    rollout and revision history for the operator's whole life."""
    written = op.rollouts.get(key)
    if written is None:
        return
    status = status or {}
    # The server stores them as written (tests/cluster/test_placement_burst.py checks it).
    if written.uid != uid or (status.get("rollout") == written.rollout and status.get("revisions") == written.revisions):
        del op.rollouts[key]


@dataclass
class Outcome:
    decision: Decision
    conditions: list[Wanted]
    status: dict[str, Any]  # rollout, revisions, counts for the status patch
    wake_in: float | None


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _package(item: Mapping[str, Any] | None, architecture: str | None) -> PackageRef | None:
    for image in (item or {}).get("images") or ():
        if (image.get("architecture") or "") == (architecture or ""):
            repository = image["ref"].split("@", 1)[0].rsplit(":", 1)[0]
            return PackageRef(repository, image["digest"], image.get("architecture") or "")
    return None


def _unreachable(instances: Sequence[InstanceView], devices: Mapping[str, DeviceView]) -> frozenset[str]:
    """The devices of these instances that are not Ready (or gone): what their agents last
    reported is not known to hold, as Kubernetes marks the pods of a node that is not Ready."""
    return frozenset(name for name in {instance.device for instance in instances}
                     if name not in devices or not devices[name].ready)


def _device_states(wanted: set[tuple[str, int]], instances: Sequence[InstanceView], digest_revision: Mapping[str, int],
                   pending: dict[str, str], unreachable: frozenset[str] = frozenset()) -> list[DeviceState]:
    by_device: dict[str, list[InstanceState]] = {name: [] for name, _ in wanted}
    for instance in instances:
        if instance.deleting or (instance.device, instance.index) not in wanted:
            continue
        written = pending.get(instance.name)
        if written is not None and written != instance.digest:
            by_device[instance.device].append(InstanceState(written))  # patched, not yet seen: not available
            continue
        pending.pop(instance.name, None)
        if instance.device in unreachable:  # not available, whatever its phase was
            by_device[instance.device].append(InstanceState(instance.digest, "Unknown", None, None, instance.start_time))
            continue
        by_device[instance.device].append(InstanceState(instance.digest, instance.phase, instance.running_digest,
                                                        instance.reason, instance.start_time))
    states = []
    for name, found in sorted(by_device.items()):
        numbers = {digest_revision.get(state.digest or "") for state in found}
        revision = numbers.pop() if len(numbers) == 1 else None
        states.append(DeviceState(name, revision, tuple(found)))
    return states


def _counts(instances: Sequence[InstanceView], target_digests: set[str], desired: int,
            unreachable: frozenset[str] = frozenset()) -> Counts:
    ready = updated = failed = lost = 0
    for instance in instances:
        if instance.deleting:
            continue
        if instance.device in unreachable:
            lost += 1
        elif instance.phase == "Running" and instance.digest and instance.running_digest == instance.digest:
            ready += 1
        if instance.digest in target_digests:
            updated += 1
        if instance.phase == "Failed":
            failed += 1
    return Counts(desired=desired, ready=ready, updated=updated, failed=failed, unreachable=lost)


def _after(instances: Sequence[InstanceView], work: Plan) -> list[InstanceView]:
    """The instances as this pass's writes leave them. Counted before them, a pass that creates
    instances reported them as not updated, and the next pass wrote the status once more to say so."""
    patched = {name: patch["spec"]["image"]["digest"] for name, patch in work.update}
    gone = set(work.delete)
    kept = [replace(view, digest=patched[view.name]) if view.name in patched else view
            for view in instances if view.name not in gone]
    return kept + [InstanceView.from_body(body) for body in work.create]


def _conditions(decision: Decision, counts: Counts) -> list[Wanted]:
    state = decision.state
    if state.phase == ROLLED_BACK:
        return [Wanted(READY, False, "RolledBack", state.message), Wanted(RECONCILING, False, "RolledBack", state.message),
                Wanted(STALLED, False, "RolledBack", "running the stable revision; a new spec starts a new rollout")]
    if state.phase == FAILED:
        return [Wanted(READY, False, "RolloutFailed", state.message),
                Wanted(RECONCILING, False, "RolloutFailed", state.message),
                Wanted(STALLED, True, "RolloutFailed", state.message)]
    if state.phase == PAUSED:
        return [Wanted(READY, False, "RolloutPaused", state.message), Wanted(RECONCILING, False, "RolloutPaused", state.message),
                Wanted(STALLED, False, "RolloutPaused")]
    wanted = rollout_conditions(counts)
    if state.phase != COMPLETE and counts.desired and wanted[0].status:
        return [Wanted(READY, False, "RollingOut", state.message), Wanted(RECONCILING, True, "RollingOut", state.message),
                Wanted(STALLED, False, "RollingOut")]
    return wanted


def _no_device_fits(misfits: Mapping[str, list[str]]) -> list[Wanted]:
    """Some instances are not placed: the devices lack host devices, resources, free shares, or CPU or RAM.
    Stalled until the node configs or the other services change; what runs keeps running."""
    message = "instances not placed, the devices lack: " + describe_misfits(misfits)
    return [Wanted(READY, False, "NoDeviceFits", message), Wanted(RECONCILING, False, "NoDeviceFits", message),
            Wanted(STALLED, True, "NoDeviceFits", message)]


def _history(history: revisions.History, previous: RolloutState, decision: Decision, at: str) -> revisions.History:
    state = decision.state
    if state.revision != previous.revision:
        if previous.revision is not None and previous.phase not in (COMPLETE, ROLLED_BACK, FAILED):
            history = revisions.mark(history, previous.revision, "Superseded")
        history = revisions.mark(history, state.revision or 0, state.phase or "", rolled_out_at=at)
    current = revisions.by_number(history, state.revision or 0)
    if current is not None and current.get("result") != state.phase:
        message = state.message if state.phase in (ROLLED_BACK, FAILED) else None
        history = revisions.mark(history, state.revision or 0, state.phase or "", message=message)
    return history


async def run(op: Any, body: Any, spec: AosServiceSpec, view: ServiceView, devices: Mapping[str, DeviceView],
              instances: list[InstanceView], images: Sequence[ImageStatus], source_digest: str,
              reserved_elsewhere: Mapping[str, Reservation] | None = None) -> Outcome:
    """Plan this pass's rollout step and write the instance changes; the caller writes the status."""
    meta, status = body["metadata"], dict(body.get("status") or {})
    key = (meta["namespace"], meta["name"])
    written = op.rollouts.get(key)
    if isinstance(written, Written) and written.uid == meta.get("uid"):
        status.update(rollout=written.rollout, revisions=written.revisions)
    now = datetime.now(UTC)
    at = stamp(now)
    history = revisions.of(status)
    built = revisions.by_source(history, source_digest)
    if built is None:
        history, built_number = revisions.add(history, [image.model_dump(exclude_none=True) for image in images],
                                              source_digest, view.version, at)
    else:
        built_number = built["revision"]
    target = built_number
    annotations = meta.get("annotations") or {}
    pinned = str(annotations.get(revisions.ANNOTATION_ROLLBACK_TO) or "")
    if (pinned.isdigit() and annotations.get(revisions.ANNOTATION_ROLLBACK_FROM) == source_digest
            and revisions.by_number(history, int(pinned))):
        target = int(pinned)  # `aosctl rollout undo` for this spec; a new spec ends it
    strategy = Strategy.from_spec(spec.strategy)
    strategy.check()
    if target != built_number:  # an undo goes back to a revision that ran before: no canary, the rolling rule
        strategy = replace(strategy, steps=())
    previous = RolloutState.from_status(status.get("rollout"))
    pending = op.pending.setdefault(key, {})
    # Every device a placement step looks at must match the selector (eligible, keeps, no_device_fits):
    # select once here, not over the whole fleet in each of them, and once per fleet snapshot.
    device_list = op.selections.select(view.selector, devices)
    wanted = wanted_keys(view, device_list, instances, reserved_elsewhere)
    unreachable = _unreachable(instances, devices)
    states = _device_states(wanted, instances, revisions.revision_of_digest(history), pending, unreachable)
    resumed = revisions.parse_resume(annotations.get(revisions.ANNOTATION_RESUME), target)
    decision = plan_rollout(target, strategy, states, previous, now, paused=spec.paused, resumed_step=resumed)

    items = {number: revisions.by_number(history, number) for number in set(decision.assign.values()) if number}

    def package_for(device: DeviceView) -> PackageRef | None:
        number = decision.assign.get(device.name)
        if number is None:
            return None
        return _package(items.get(number), device.architecture) or view.packages.get(device.architecture or "")

    work = plan(view, device_list, instances, package_for, reserved_elsewhere, wanted)
    namespace = view.namespace
    for instance in work.create:
        # Reserved at once, as a scheduler assumes the pod it binds: the book learns of an instance
        # from its watch event, and passes of other services that ran before it arrived (in a burst,
        # most of them) placed theirs on a device that was already full.
        instance_name = instance["metadata"]["name"]
        op.reservations.update(namespace, instance_name, instance)
        try:
            await op.call(op.kube.create, AOS_SERVICE_INSTANCE, instance)
        except ApiException as error:
            if error.status != 409:  # already there: the index has not seen it yet
                op.reservations.update(namespace, instance_name, None)
                raise
        except BaseException:
            op.reservations.update(namespace, instance_name, None)  # its watch event re-adds it if it was made
            raise
    for name, patch in work.update:
        await op.call(op.kube.patch, AOS_SERVICE_INSTANCE, name, patch, namespace)
        pending[name] = patch["spec"]["image"]["digest"]
    for name in work.delete:
        await op.call(op.kube.delete, AOS_SERVICE_INSTANCE, name, namespace)
    if work.create:
        kopf.event(body, type="Normal", reason="InstancesCreated", message=f"{len(work.create)} instance(s)")
    if work.update:
        moved = sorted({patch["spec"]["device"] for _, patch in work.update})
        kopf.event(body, type="Normal", reason="InstancesUpdated",
                   message=f"revision(s) {sorted({decision.assign[d] for d in moved if decision.assign.get(d)})} "
                           f"on {len(moved)} device(s): {', '.join(moved[:10])}{' ...' if len(moved) > 10 else ''}")
    if work.delete:
        kopf.event(body, type="Normal", reason="InstancesDeleted", message=", ".join(work.delete[:20]))
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1000])

    history = _history(history, previous, decision, at)
    history = revisions.prune(history, spec.revisionHistoryLimit, (decision.state.revision, decision.state.stable,
                                                                    built_number))
    op.rollouts[key] = Written(str(meta.get("uid")), decision.status(at), [dict(item) for item in history])
    target_item = revisions.by_number(history, target)
    counts = _counts(_after(instances, work), revisions.digests(target_item) if target_item else set(), work.desired,
                     unreachable)
    conditions = _conditions(decision, counts)
    misfits = no_device_fits(view, device_list, instances, reserved_elsewhere, wanted)
    if misfits and decision.state.phase not in (ROLLED_BACK, FAILED, PAUSED):
        conditions = _no_device_fits(misfits)
    return Outcome(
        decision=decision,
        conditions=conditions,
        status={
            "rollout": decision.status(at), "revisions": history, "desired": counts.desired, "ready": counts.ready,
            "updated": counts.updated, "failed": counts.failed, "readyRatio": counts.ratio,
        },
        wake_in=decision.wake_in,
    )
