"""Device liveness, the job of Kubernetes' node lifecycle controller for AosDevices.

An agent renews its device's Lease every beat (`aosctl agent --lease-namespace`), or without one
writes the AosDevice status every beat. When the operator has seen neither for the grace period
(the Lease's duration, and at least `--device-grace`), it sets the device's Ready condition to
Unknown, reason AgentSilent. Placement then gives it no new instances; it keeps the ones it has,
since an edge device may run offline for a while. The agent's next status write makes it Ready.

What counts is when this process saw a renewal change, on its own monotonic clock, not the time
an agent wrote into it: a device's clock may be off. Nothing is marked while the Lease watch is
not listed, nor before a grace period has passed since the operator started.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aos_operator.api.client import API_ERRORS, KubeClient, error_text, status_error
from aos_operator.api.models import AOS_DEVICE, LABEL_DEVICE, device_ready
from aos_operator.controller.conditions import now

log = logging.getLogger("aos_operator.controller.liveness")
SILENT_REASON = "AgentSilent"
ERRORS = (*API_ERRORS, ValueError)  # ValueError: a stream that is not JSON


@dataclass
class _Seen:
    mark: Any  # what each renewal changes: a Lease's renewTime, a status's lastHeartbeat
    at: float  # when it last changed (monotonic)


class LivenessBook:
    """The last sign of life of each device, from Lease and AosDevice events (on the event loop)."""

    def __init__(self, grace_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace_seconds
        self.clock = clock
        self.started = clock()
        self.synced = False  # the Lease watch has listed, and its stream holds
        self._leases: dict[str, tuple[_Seen, float]] = {}  # device -> renewal seen, the Lease's duration
        self._statuses: dict[str, _Seen] = {}
        self._ready: dict[str, tuple[bool, list[dict[str, Any]]]] = {}  # device -> Ready is True, its conditions

    @staticmethod
    def _noted(seen: _Seen | None, mark: Any, now: float) -> _Seen:
        return seen if seen is not None and seen.mark == mark else _Seen(mark, now)

    def lease_seen(self, body: Mapping[str, Any] | None, name: str) -> None:
        """A Lease event (body None: deleted) of device `name`."""
        if body is None:
            self._leases.pop(name, None)
            return
        spec = body.get("spec") or {}
        duration = float(spec.get("leaseDurationSeconds") or 0)
        seen, _ = self._leases.get(name, (None, 0.0))
        self._leases[name] = (self._noted(seen, spec.get("renewTime"), self.clock()), duration)

    def device_seen(self, name: str, body: Mapping[str, Any] | None) -> None:
        if body is None:
            self._statuses.pop(name, None)
            self._ready.pop(name, None)
            return
        status = body.get("status") or {}
        self._statuses[name] = self._noted(self._statuses.get(name), status.get("lastHeartbeat"), self.clock())
        conditions = [dict(c) for c in status.get("conditions") or [] if isinstance(c, Mapping)]
        self._ready[name] = (device_ready(body), conditions)

    def marked(self, name: str) -> None:
        if name in self._ready:
            self._ready[name] = (False, self._ready[name][1])

    def silent(self) -> list[tuple[str, float, list[dict[str, Any]]]]:
        """Ready devices not heard from for their grace period: (name, seconds silent, conditions)."""
        if not self.synced:
            return []
        now = self.clock()
        found = []
        for name, (ready, conditions) in self._ready.items():
            if not ready:
                continue
            lease = self._leases.get(name)
            grace = max(self.grace, lease[1] if lease else 0.0)
            heard = max([self.started, *(seen.at for seen in (lease[0] if lease else None, self._statuses.get(name))
                                         if seen is not None)])
            if now - heard > grace:
                found.append((name, now - heard, conditions))
        return found


def silent_patch(conditions: list[dict[str, Any]], seconds: float, grace: float) -> dict[str, Any]:
    """The status patch that marks a device silent; its other conditions are kept."""
    ready = {"type": "Ready", "status": "Unknown", "reason": SILENT_REASON, "lastTransitionTime": now(),
             "message": f"no heartbeat from the agent for {seconds:.0f} s (grace {grace:.0f} s); the device keeps "
                        "its instances and gets no new ones until its agent reports again"}
    return {"status": {"conditions": [c for c in conditions if c.get("type") != "Ready"] + [ready]}}


def follow_leases(kube: KubeClient, book: LivenessBook, loop: asyncio.AbstractEventLoop,
                  stop: threading.Event) -> None:
    """List, then watch, the agents' Leases (labelled with their device) in every namespace, in a
    thread; each event goes to the book on the event loop."""
    delay = 1.0

    def post(call: Callable[..., None], *args: Any) -> None:
        if stop.is_set():
            return  # the operator is stopping; its loop may be closed already
        try:
            loop.call_soon_threadsafe(call, *args)
        except RuntimeError:  # closed between the check and the call
            stop.set()

    def device_of(body: Mapping[str, Any]) -> str:
        return str((body.get("spec") or {}).get("holderIdentity") or "")  # the agent writes its device's name

    while not stop.is_set():
        try:
            items, version = kube.list_leases("", LABEL_DEVICE)
            for item in items:
                if name := device_of(item):
                    post(book.lease_seen, item, name)
            post(setattr, book, "synced", True)
            delay = 1.0
            while not stop.is_set():
                for event in kube.watch_leases("", LABEL_DEVICE, version, timeout_seconds=60):
                    kind, body = event.get("type"), event.get("object")
                    if kind == "ERROR":
                        raise status_error(body)
                    if not isinstance(body, dict):
                        raise ValueError(f"the Lease watch sent {kind} without an object")
                    version = (body.get("metadata") or {}).get("resourceVersion") or version
                    if kind != "BOOKMARK" and (name := device_of(body)):
                        post(book.lease_seen, None if kind == "DELETED" else body, name)
                    if stop.is_set():
                        return
        except ERRORS as error:
            post(setattr, book, "synced", False)
            log.warning("watch of the agents' Leases failed, will list again in %.0f s: %s", delay, error_text(error))
        except Exception:  # a bug here must not leave the book "synced" on data that no longer moves
            post(setattr, book, "synced", False)
            log.exception("the Lease watch failed; no device is marked until it has listed again")
        stop.wait(delay)
        delay = min(delay * 2, 30.0)


async def mark_silent(kube: KubeClient, book: LivenessBook, every: float) -> None:
    """Follow the Leases (a thread of its own, not the executor: a blocked watch must not hold up
    the exit) and every `every` seconds mark the Ready devices the book has not heard from."""
    stop = threading.Event()
    threading.Thread(target=follow_leases, args=(kube, book, asyncio.get_running_loop(), stop),
                     name="aos-lease-watch", daemon=True).start()
    try:
        while True:
            await asyncio.sleep(every)
            for name, seconds, conditions in book.silent():
                log.warning("AosDevice %s: no heartbeat for %.0f s; marking it Ready=Unknown (%s)", name, seconds,
                            SILENT_REASON)
                try:
                    await asyncio.to_thread(kube.patch, AOS_DEVICE, name, silent_patch(conditions, seconds, book.grace),
                                            status=True)
                    book.marked(name)  # its event confirms it; until then, no second patch
                except ERRORS as error:
                    log.warning("could not mark AosDevice %s silent, will try again: %s", name, error_text(error))
    finally:
        stop.set()
