"""Status conditions (metav1.Condition) and the AosService status computed from its instances. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
CONFIG_VALID, IMAGE_PUSHED = "ConfigValid", "ImagePushed"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Wanted:
    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    current: Iterable[Mapping[str, Any]] | None, wanted: Iterable[Wanted], generation: int | None, at: str | None = None
) -> list[dict[str, Any]]:
    """New conditions; lastTransitionTime moves only when a condition's status changes."""
    at = at or now()
    previous = {condition.get("type"): condition for condition in current or ()}
    merged: dict[str, dict[str, Any]] = {key: dict(value) for key, value in previous.items() if key}
    for condition in wanted:
        status = "True" if condition.status else "False"
        old = previous.get(condition.type)
        transition = old.get("lastTransitionTime") if old and old.get("status") == status else at
        merged[condition.type] = {
            "type": condition.type,
            "status": status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": transition or at,
            "observedGeneration": generation,
        }
    order = {READY: 0, RECONCILING: 1, STALLED: 2}
    return sorted(merged.values(), key=lambda c: (order.get(c["type"], 3), c["type"]))


@dataclass(frozen=True)
class Counts:
    desired: int
    ready: int
    updated: int
    failed: int
    unreachable: int = 0  # on a device that is not Ready (its agent stopped or silent): not counted ready

    @property
    def ratio(self) -> str:
        return f"{self.ready}/{self.desired}"


def rollout_conditions(counts: Counts) -> list[Wanted]:
    """Ready and Reconciling from the instance counts, once the package is built and pushed."""
    if counts.desired == 0:
        return [
            Wanted(READY, False, "NoMatchingDevices", "no Ready AosDevice matches the selector and architecture"),
            Wanted(RECONCILING, False, "NoMatchingDevices"),
            Wanted(STALLED, False, "NoMatchingDevices"),
        ]
    if counts.ready == counts.desired and counts.updated == counts.desired:
        message = f"{counts.ready} of {counts.desired} instances running the current package"
        return [Wanted(READY, True, "InstancesReady", message), Wanted(RECONCILING, False, "InstancesReady", message),
                Wanted(STALLED, False, "InstancesReady")]
    message = f"{counts.ready} of {counts.desired} instances ready, {counts.updated} updated, {counts.failed} failed"
    if counts.failed:
        # A failed instance has used up its restarts: it needs a new config or package, not time.
        return [Wanted(READY, False, "InstancesFailed", message), Wanted(RECONCILING, False, "InstancesFailed", message),
                Wanted(STALLED, True, "InstancesFailed", message)]
    if counts.unreachable:
        # What their agents last said is not known to hold; they come back with their devices.
        message += f", {counts.unreachable} on devices that are not Ready"
        return [Wanted(READY, False, "DeviceNotReady", message), Wanted(RECONCILING, False, "DeviceNotReady", message),
                Wanted(STALLED, False, "DeviceNotReady")]
    return [Wanted(READY, False, "RollingOut", message), Wanted(RECONCILING, True, "RollingOut", message),
            Wanted(STALLED, False, "RollingOut")]
