"""The alert processor (AosEdge's raise / continue / fall rules) with an injected clock, the
conversion of percent rules against node totals, and the alertRules/offlineTTL readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aos_operator.agent.alerts import CONTINUE, FALL, RAISE, AlertMonitor, AlertProcessor, Thresholds
from aos_operator.agent.offline import stays_failed
from aos_operator.errors import PackageError
from aos_operator.runtime import InstanceIdentity, InstanceStatus, Phase, Reason
from aos_operator.runtime.offline import last_online, offline_deadline, record_online
from aos_operator.runtime.service_config import AlertRule, parse_service_config

CPU = AlertRule("cpu", min_timeout=10, min_threshold=20, max_threshold=80, percent=True)


def processor(min_timeout: float = 10, low: float = 20, high: float = 80) -> AlertProcessor:
    return AlertProcessor(Thresholds("cpu", min_timeout, low, high))


def feed(alert: AlertProcessor, samples: list[tuple[float, float]]) -> list[tuple[float, str]]:
    """(time, value) samples in; (time, status) of every event out."""
    return [(at, status) for at, value in samples if (status := alert.check(value, at)) is not None]


def test_raise_only_after_the_value_stays_over_max_for_min_timeout() -> None:
    alert = processor()
    events = feed(alert, [(0, 50), (10, 90), (15, 95), (19, 85), (20, 90)])
    assert events == [(20, RAISE)], "over max since 10, raised at 10 + minTimeout"
    assert alert.raised


def test_a_short_spike_raises_nothing() -> None:
    alert = processor()
    events = feed(alert, [(t, 90 if t % 20 < 10 else 10) for t in range(0, 100, 5)])
    assert events == [], "each spike lasts less than minTimeout and a low sample forgets it"
    assert not alert.raised


def test_continue_every_min_timeout_while_raised_then_fall_after_min_timeout_below_min() -> None:
    alert = processor()
    samples = [(0, 90), (10, 90), (15, 90), (20, 50), (25, 90), (30, 15), (35, 10), (39, 10), (40, 10), (50, 10)]
    assert feed(alert, samples) == [(10, RAISE), (20, CONTINUE), (30, CONTINUE), (40, FALL)]
    assert not alert.raised
    # raised again only after a new minTimeout over max
    assert feed(alert, [(60, 90), (65, 90), (70, 90)]) == [(70, RAISE)]


def test_a_sample_over_min_restarts_the_wait_for_the_fall() -> None:
    alert = processor(min_timeout=10)
    feed(alert, [(0, 90), (10, 90)])
    events = feed(alert, [(12, 10), (18, 10), (19, 30), (25, 10), (34, 10), (35, 10)])
    assert (35, FALL) in events and all(status != FALL for at, status in events if at < 35)


def test_percent_rules_are_points_of_the_node_totals() -> None:
    thresholds = Thresholds.of(CPU, {"cpu": 20000})
    assert thresholds is not None
    assert (thresholds.min_points, thresholds.max_points) == (4000, 16000)
    assert Thresholds.of(AlertRule("state", 0, 1, 2, percent=True), {"cpu": 1}) is None, "no node total: no rule"
    points = Thresholds.of(AlertRule("download", 5, 100, 1000, percent=False), {})
    assert points is not None and (points.min_points, points.max_points) == (100, 1000)


def test_the_monitor_counts_raises_per_instance_and_parameter_and_names_the_threshold() -> None:
    monitor = AlertMonitor()
    rules = (CPU, AlertRule("ram", 0, 10, 50, percent=True))
    monitor.configure("i1", rules, {"cpu": 10000, "ram": 1000})
    assert monitor.sample("i1", {"cpu": 9000, "ram": 100}, 0.0) == []
    (event,) = monitor.sample("i1", {"cpu": 9000, "ram": 100}, 10.0)
    assert (event.parameter, event.status) == ("cpu", RAISE)
    assert "cpu 9000 DMIPS" in event.message and "maxThreshold 8000 DMIPS (80% of the node's 10000)" in event.message
    (ram,) = monitor.sample("i1", {"cpu": 9000, "ram": 600}, 11.0)
    assert ram.parameter == "ram" and ram.status == RAISE, "minTimeout 0: the first sample over max raises"
    assert [a.parameter for a in monitor.raised("i1")] == ["cpu", "ram"]
    monitor.configure("i1", rules, {"cpu": 10000, "ram": 1000})  # the same rules: the state is kept
    assert monitor.raised_counts() == {("i1", "cpu"): 1, ("i1", "ram"): 1}
    monitor.forget("i1")
    assert monitor.raised("i1") == [] and monitor.raised_counts()[("i1", "cpu")] == 1


def test_alert_rules_and_offline_ttl_are_read_from_the_service_config() -> None:
    config = parse_service_config({
        "offlineTtl": "PT1M30S",  # AosEdge's Go tag spelling; keys are case-insensitive
        "alertRules": {
            "cpu": {"minTimeout": "PT5S", "minThreshold": 10, "maxThreshold": 75.5},
            "upload": {"minTimeout": 3, "minThreshold": 100, "maxThreshold": 1000},
            "partitions": [{"name": "storage", "minTimeout": "1m", "minThreshold": 50, "maxThreshold": 90}],
        },
    }, "service config")
    assert config.offline_ttl == 90
    assert config.alert_rules == (
        AlertRule("cpu", 5, 10, 75.5, percent=True),
        AlertRule("upload", 3, 100, 1000, percent=False),
        AlertRule("storage", 60, 50, 90, percent=True),
    )
    assert parse_service_config({}, "service config").offline_ttl == 0


@pytest.mark.parametrize(("document", "field"), [
    ({"offlineTTL": "soon"}, "service config.offlineTTL"),
    ({"alertRules": {"ram": {"maxThreshold": -1}}}, "service config.alertRules.ram.maxThreshold"),
    ({"alertRules": {"cpu": {"minTimeout": "PTX"}}}, "service config.alertRules.cpu.minTimeout"),
    ({"alertRules": {"partitions": [{"maxThreshold": 5}]}}, "service config.alertRules.partitions[0].name"),
    ({"alertRules": {"partitions": "storage"}}, "service config.alertRules.partitions"),
])
def test_bad_rules_are_refused_naming_the_field(document: dict[str, object], field: str) -> None:
    with pytest.raises(PackageError) as raised:
        parse_service_config(document, "service config")
    assert field in str(raised.value)


def test_the_last_contact_record(tmp_path: Path) -> None:
    path = tmp_path / "online.json"
    assert last_online(path) is None and offline_deadline(path, 10) is None, "no record: never expires"
    record_online(path, 1000.0)
    assert last_online(path) == 1000.0
    assert offline_deadline(path, 10) == 1010.0 and offline_deadline(path, 0) is None
    path.write_text(json.dumps({"lastOnline": "yesterday"}))
    assert last_online(path) is None


def test_an_offline_timeout_stays_failed_until_the_spec_changes() -> None:
    failed = InstanceStatus("id", InstanceIdentity("s", "u", 0), "sha256:" + "a" * 64, phase=Phase.FAILED,
                            reason=Reason.OFFLINE_TIMEOUT)
    same = {"metadata": {"generation": 3}, "status": {"observedGeneration": 3}}
    newer = {"metadata": {"generation": 4}, "status": {"observedGeneration": 3}}
    assert stays_failed(same, failed)
    assert not stays_failed(newer, failed), "a new desired state starts it again"
    crashed = InstanceStatus("id", failed.identity, failed.package, phase=Phase.FAILED, reason=Reason.CRASH_LOOP)
    assert not stays_failed(same, crashed)


def test_a_rollout_does_not_count_the_previous_packages_offline_timeout_against_the_new_one() -> None:
    from datetime import UTC, datetime

    from aos_operator.controller.rollout import COMPLETE, DeviceState, InstanceState, RolloutState, Strategy, plan_rollout

    old, new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    previous = RolloutState(revision=1, stable=1, phase=COMPLETE, step=0, available=0)
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def plan(running_digest: str) -> str:
        device = DeviceState("edge", 2, (InstanceState(new, "Failed", running_digest, reason="OfflineTimeout"),))
        return plan_rollout(2, Strategy(), [device], previous, now).state.phase

    assert plan(old) != "RolledBack", "the agent has not taken the new package yet: not its failure"
    assert plan(new) == "RolledBack", "an offline timeout of the new package still counts"
