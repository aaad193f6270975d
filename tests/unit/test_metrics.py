"""The metrics modules in one process: the agent's collector follows the state it reads (no stale
series), the alert counter that the alert rules call, the operator's timed counters, the
--metrics-address parser; exposition by prometheus_client, parsed back with its parser. Scraped
over HTTP from real processes: tests/e2e/test_metrics_permissions.py."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aos_operator.agent.metrics import AgentCollector, count_alert, make_registry
from aos_operator.controller import metrics as operator_metrics
from aos_operator.errors import InputError
from aos_operator.metrics_http import parse_address
from aos_operator.runtime import InstanceIdentity, InstanceStatus, Phase


def samples(registry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:  # type: ignore[no-untyped-def]
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def status(service: str, phase: Phase, restarts: int = 0) -> InstanceStatus:
    identity = InstanceIdentity(service, "subject", 0)
    return InstanceStatus(identity.instance_id, identity, "sha256:" + "a" * 64, phase=phase, restarts=restarts,
                          cpu_millicores=12.5, ram_bytes=4096)


def test_the_collector_reports_what_is_there_now_and_nothing_stale() -> None:
    current = [status("svc-a", Phase.RUNNING, restarts=2), status("svc-b", Phase.FAILED)]
    beat: list[float | None] = [None]
    names = {current[0].instance_id: ("ns", "svc-a-dev-0")}
    registry = make_registry(AgentCollector("dev", lambda: list(current), lambda: names, lambda: beat[0]))
    first = samples(registry)
    a = {("device", "dev"), ("instance_id", current[0].instance_id), ("service_id", "svc-a"),
         ("namespace", "ns"), ("name", "svc-a-dev-0")}
    assert first[("aos_instance_restarts_total", frozenset(a))] == 2
    assert first[("aos_instance_cpu_millicores", frozenset(a))] == 12.5
    assert first[("aos_instance_memory_bytes", frozenset(a))] == 4096
    assert first[("aos_instance_phase", frozenset(a | {("phase", "Running")}))] == 1
    assert first[("aos_instance_phase", frozenset(a | {("phase", "Failed")}))] == 0
    assert first[("aos_device_instances", frozenset({("device", "dev"), ("phase", "Failed")}))] == 1
    assert not any(name == "aos_device_heartbeat_age_seconds" for name, _ in first)  # none succeeded yet

    gone = current.pop(0).instance_id
    beat[0] = 0.0
    second = samples(registry)
    assert not any(("instance_id", gone) in labels for _, labels in second)
    assert second[("aos_device_instances", frozenset({("device", "dev"), ("phase", "Running")}))] == 0
    assert second[("aos_device_heartbeat_age_seconds", frozenset({("device", "dev")}))] > 0


def test_alerts_are_counted_by_instance_service_and_parameter() -> None:
    registry = make_registry(AgentCollector("dev", list, dict, lambda: None))
    key = ("aos_instance_alerts_total", frozenset({("instance_id", "i-1"), ("service_id", "s-1"), ("parameter", "cpu")}))
    before = samples(registry).get(key, 0)
    count_alert("i-1", "s-1", "cpu")
    count_alert("i-1", "s-1", "cpu")
    assert samples(registry)[key] == before + 2


def test_timed_counts_ok_and_failed_and_observes_both() -> None:
    before = samples(operator_metrics.REGISTRY)
    ok, failed = (("aos_operator_builds_total", frozenset({("result", r)})) for r in ("ok", "failed"))
    count = ("aos_operator_build_duration_seconds_count", frozenset())
    with operator_metrics.timed(operator_metrics.BUILDS, operator_metrics.BUILD_SECONDS):
        pass
    with pytest.raises(ValueError), operator_metrics.timed(operator_metrics.BUILDS, operator_metrics.BUILD_SECONDS):
        raise ValueError("broken")
    after = samples(operator_metrics.REGISTRY)
    assert (after[ok] - before[ok], after[failed] - before[failed], after[count] - before[count]) == (1, 1, 2)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9469", ("127.0.0.1", 9469)), (":9469", ("0.0.0.0", 9469)), ("[::1]:80", ("::1", 80)),
    ("localhost:0", ("localhost", 0)),
])
def test_metrics_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9469", "host:", "host:65536", "host:９", "a b:1", "host:-1"])
def test_bad_metrics_addresses_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="metrics address"):
        parse_address(text)
