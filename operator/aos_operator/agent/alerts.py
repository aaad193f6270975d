"""Resource alerts (`alertRules`), processed as AosEdge's alert processor does; pure: samples and a
clock in, alert events out.

One processor per instance and rule, fed a sample every poll period (AosEdge: 10 s):
- not raised: the value is >= maxThreshold since some moment; once it has stayed there for
  minTimeout, **raise**. A sample below maxThreshold forgets the moment, so a short spike raises
  nothing.
- raised: **continue** every minTimeout (from the raise or the last continue) while raised;
  once the value has stayed <= minThreshold for minTimeout, **fall**. A sample above
  minThreshold forgets that moment (aos_core_lib_cpp v9; Go forgets it only above max).
Percent rules (cpu, ram, partitions) become points against the node's totals, as AosEdge does:
threshold = round(total * percent / 100), where cpu is in DMIPS, ram and partitions in bytes.
download and upload are points already (bytes counted this traffic period).

`AlertMonitor.raised_counts()` is the in-process counter of raised alerts per instance and
parameter, for the agent's metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aos_operator.runtime.service_config import AlertRule

RAISE, CONTINUE, FALL = "raise", "continue", "fall"
UNITS = {"cpu": "DMIPS", "download": "bytes", "upload": "bytes"}  # everything else is bytes too


@dataclass(frozen=True)
class Thresholds:
    """A rule in points: what the samples are compared with."""

    parameter: str
    min_timeout: float
    min_points: float
    max_points: float
    max_percent: float | None = None  # as written, for messages
    min_percent: float | None = None
    total: float | None = None

    @classmethod
    def of(cls, rule: AlertRule, totals: Mapping[str, float]) -> Thresholds | None:
        """The rule against the node's totals; None when a percent rule has no total here."""
        if not rule.percent:
            return cls(rule.parameter, rule.min_timeout, rule.min_threshold, rule.max_threshold)
        total = totals.get(rule.parameter)
        if not total:
            return None
        return cls(rule.parameter, rule.min_timeout, round(total * rule.min_threshold / 100),
                   round(total * rule.max_threshold / 100), rule.max_threshold, rule.min_threshold, total)

    def describe_max(self) -> str:
        unit = UNITS.get(self.parameter, "bytes")
        if self.max_percent is None:
            return f"maxThreshold {self.max_points:g} {unit}"
        return f"maxThreshold {self.max_points:g} {unit} ({self.max_percent:g}% of the node's {self.total:g})"

    def describe_min(self) -> str:
        unit = UNITS.get(self.parameter, "bytes")
        if self.min_percent is None:
            return f"minThreshold {self.min_points:g} {unit}"
        return f"minThreshold {self.min_points:g} {unit} ({self.min_percent:g}% of the node's {self.total:g})"


@dataclass(frozen=True)
class AlertEvent:
    instance_id: str
    parameter: str
    status: str  # raise, continue or fall
    value: float
    at: float
    thresholds: Thresholds

    @property
    def message(self) -> str:
        unit = UNITS.get(self.parameter, "bytes")
        rule, value = self.thresholds, f"{self.parameter} {self.value:g} {unit}"
        if self.status == FALL:
            return f"{value}: at or below {rule.describe_min()} for {rule.min_timeout:g} s; the alert fell"
        still = "still " if self.status == CONTINUE else ""
        return f"{value}: {still}at or above {rule.describe_max()} (for at least {rule.min_timeout:g} s)"


class AlertProcessor:
    """The state machine of one rule for one instance."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.raised = False
        self._max_since: float | None = None  # above max since (not raised); last raise/continue (raised)
        self._min_since: float | None = None
        self.last_value: float | None = None

    def check(self, value: float, now: float) -> str | None:
        """Feed one sample; returns raise, continue, fall or None."""
        self.last_value = value
        rule = self.thresholds
        if not self.raised:
            if value < rule.max_points:
                self._max_since = None
                return None
            if self._max_since is None:
                self._max_since = now
            if now - self._max_since >= rule.min_timeout:
                self.raised, self._max_since, self._min_since = True, now, None
                return RAISE
            return None
        if value <= rule.min_points:
            if self._min_since is None:
                self._min_since = now
            if now - self._min_since >= rule.min_timeout:
                self.raised, self._max_since, self._min_since = False, None, None
                return FALL
        else:
            self._min_since = None
        assert self._max_since is not None
        if now - self._max_since >= rule.min_timeout and rule.min_timeout > 0:
            self._max_since = now
            return CONTINUE
        return None


class AlertMonitor:
    """The processors of every instance; thread-safe, so metrics may read the counters at any time."""

    def __init__(self) -> None:
        self._processors: dict[str, dict[str, AlertProcessor]] = {}
        self._rules: dict[str, tuple[tuple[AlertRule, ...], tuple[tuple[str, float], ...]]] = {}
        self._raised_counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def configure(self, instance_id: str, rules: Iterable[AlertRule], totals: Mapping[str, float]) -> None:
        """(Re)build an instance's processors when its rules or the node's totals changed."""
        rules = tuple(rules)
        key = (rules, tuple(sorted(totals.items())))
        with self._lock:
            if self._rules.get(instance_id) == key:
                return
            self._rules[instance_id] = key
            processors = {}
            for rule in rules:
                thresholds = Thresholds.of(rule, totals)
                if thresholds is not None:
                    processors[rule.parameter] = AlertProcessor(thresholds)
            self._processors[instance_id] = processors

    def sample(self, instance_id: str, values: Mapping[str, float], now: float) -> list[AlertEvent]:
        """Feed an instance's samples (parameter -> value; a missing one is not checked this time)."""
        events = []
        with self._lock:
            for parameter, processor in self._processors.get(instance_id, {}).items():
                value = values.get(parameter)
                if value is None:
                    continue
                status = processor.check(value, now)
                if status is None:
                    continue
                if status == RAISE:
                    counter = (instance_id, parameter)
                    self._raised_counts[counter] = self._raised_counts.get(counter, 0) + 1
                events.append(AlertEvent(instance_id, parameter, status, value, now, processor.thresholds))
        return events

    def raised(self, instance_id: str) -> list[AlertEvent]:
        """The instance's alerts that are raised now (with the last sample), for its condition."""
        with self._lock:
            return [AlertEvent(instance_id, parameter, CONTINUE, processor.last_value or 0.0, 0.0, processor.thresholds)
                    for parameter, processor in sorted(self._processors.get(instance_id, {}).items())
                    if processor.raised]

    def forget(self, instance_id: str) -> None:
        """The instance stopped: its alerts end with it (the counters stay)."""
        with self._lock:
            self._processors.pop(instance_id, None)
            self._rules.pop(instance_id, None)

    def instances(self) -> list[str]:
        with self._lock:
            return list(self._processors)

    def raised_counts(self) -> dict[tuple[str, str], int]:
        """How many alerts were raised, per (instance ID, parameter), since the agent started."""
        with self._lock:
            return dict(self._raised_counts)
