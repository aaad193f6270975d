"""The agent's alert job: every poll period, sample each running instance that has `alertRules`,
feed the alert monitor, and hand what happened to the agent's loop (events and the instance's
QuotaAlert condition). No Kubernetes here: the loop posts and patches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aos_operator.agent.alerts import AlertEvent, AlertMonitor
from aos_operator.errors import AosError
from aos_operator.runtime import Phase, Runtime
from aos_operator.runtime.service_config import AlertRule
from aos_operator.runtime.usage import instance_usage, node_totals

log = logging.getLogger("aos_operator.agent")
CONDITION = "QuotaAlert"
RAISED_REASON = "QuotaAlert"
FALLEN_REASON = "QuotaAlertCleared"


@dataclass(frozen=True)
class AlertChange:
    """What one poll changed for one instance: the events to post and the alerts raised now."""

    instance_id: str
    events: tuple[AlertEvent, ...]
    raised: tuple[AlertEvent, ...]


def condition_fields(change: AlertChange, since: str) -> dict[str, str]:
    """The QuotaAlert condition of an instance (True while any alert is raised)."""
    if change.raised:
        return {"type": CONDITION, "status": "True", "reason": RAISED_REASON,
                "message": "; ".join(event.message for event in change.raised)[:1000], "lastTransitionTime": since}
    return {"type": CONDITION, "status": "False", "reason": "WithinThresholds",
            "message": "no alert rule is over its threshold", "lastTransitionTime": since}


class InstanceAlerts:
    def __init__(self, runtime: Runtime, monitor: AlertMonitor | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.monitor = monitor or AlertMonitor()
        self.clock = clock
        self._rules: dict[str, tuple[AlertRule, ...]] = {}  # package digest -> its alert rules

    def _rules_of(self, digest: str) -> tuple[AlertRule, ...]:
        if digest not in self._rules:
            try:
                self._rules[digest] = self.runtime.packages.get(digest).service_config.alert_rules
            except AosError as error:
                log.warning("package %s: its alert rules cannot be read: %s", digest, error)
                return ()
        return self._rules[digest]

    def poll(self) -> list[AlertChange]:
        now = self.clock()
        totals = node_totals(self.runtime)
        changes = []
        running = set()
        for status in self.runtime.list():
            if status.phase != Phase.RUNNING or not status.package:
                continue
            rules = self._rules_of(status.package)
            if not rules:
                continue
            running.add(status.instance_id)
            self.monitor.configure(status.instance_id, rules, totals)
            events = self.monitor.sample(status.instance_id, instance_usage(self.runtime, status), now)
            if events:
                changes.append(AlertChange(status.instance_id, tuple(events),
                                           tuple(self.monitor.raised(status.instance_id))))
        for instance_id in set(self.monitor.instances()) - running:
            had = self.monitor.raised(instance_id)
            self.monitor.forget(instance_id)
            if had:  # it stopped or restarted: its alerts end with that run
                changes.append(AlertChange(instance_id, (), ()))
        return changes
