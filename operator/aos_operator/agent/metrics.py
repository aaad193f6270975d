"""The agent's Prometheus metrics (`aosctl agent --metrics-address`).

Values that describe the present (each instance's CPU, RAM, restarts and phase; the device's
instance counts and heartbeat age) are read from the runtime and the loop when Prometheus
scrapes, by a custom collector, so a removed instance leaves no stale series behind. Events
that happened are counters: heartbeats, and alerts raised (`count_alert`, which the alert
rules call).

Instance labels: `device`, `instance_id`, `service_id`, and `namespace`/`name` of its
AosServiceInstance. `instance_id` rather than `instance`: Prometheus sets `instance` to the
scrape target itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aos_operator.runtime import InstanceStatus, Phase

INSTANCE_LABELS = ["device", "instance_id", "service_id", "namespace", "name"]

# Registered in each agent's registry (make_registry); module-level so that any room can count.
ALERTS = Counter("aos_instance_alerts", "Resource alerts raised for an instance (alertRules), by parameter",
                 ["instance_id", "service_id", "parameter"], registry=None)
HEARTBEATS = Counter("aos_device_heartbeats", "Heartbeats (Lease renewals, or AosDevice status writes without a Lease) the agent attempted, by result",
                     ["device", "result"], registry=None)


def count_alert(instance_id: str, service_id: str, parameter: str) -> None:
    """One alert raised for `parameter` (cpu, ram, storage, state, download, upload) of an instance."""
    ALERTS.labels(instance_id=instance_id, service_id=service_id, parameter=parameter).inc()


class AgentCollector(Collector):
    """The present state of the node's instances and of the device, at scrape time."""

    def __init__(self, device: str, instances: Callable[[], Iterable[InstanceStatus]],
                 names: Callable[[], Mapping[str, tuple[str, str]]], last_heartbeat: Callable[[], float | None]) -> None:
        self.device = device
        self.instances = instances  # the runtime's statuses, CPU and RAM sampled now
        self.names = names  # instance ID -> (namespace, name) of its AosServiceInstance
        self.last_heartbeat = last_heartbeat  # epoch seconds of the last successful one

    def describe(self) -> Iterator[Any]:
        return iter(())  # values exist only at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        cpu = GaugeMetricFamily("aos_instance_cpu_millicores", "CPU use of an instance, sampled from its cgroup",
                                labels=INSTANCE_LABELS)
        ram = GaugeMetricFamily("aos_instance_memory_bytes", "Memory use of an instance (its memory cgroup)",
                                labels=INSTANCE_LABELS)
        restarts = CounterMetricFamily("aos_instance_restarts", "Restarts of an instance by its restart policy",
                                       labels=INSTANCE_LABELS)
        phase = GaugeMetricFamily("aos_instance_phase", "1 for the phase an instance is in, 0 for the others",
                                  labels=[*INSTANCE_LABELS, "phase"])
        counts = GaugeMetricFamily("aos_device_instances", "Instances on the device by phase", labels=["device", "phase"])
        by_phase = dict.fromkeys(Phase, 0)
        names = self.names()
        for status in self.instances():
            namespace, name = names.get(status.instance_id, ("", ""))
            labels = [self.device, status.instance_id, status.identity.service_id, namespace, name]
            by_phase[status.phase] += 1
            for each in Phase:
                phase.add_metric([*labels, each.value], 1.0 if status.phase == each else 0.0)
            restarts.add_metric(labels, status.restarts)
            if status.cpu_millicores is not None:
                cpu.add_metric(labels, status.cpu_millicores)
            if status.ram_bytes is not None:
                ram.add_metric(labels, status.ram_bytes)
        for each, count in by_phase.items():
            counts.add_metric([self.device, each.value], count)
        yield from (cpu, ram, restarts, phase, counts)
        last = self.last_heartbeat()
        if last is not None:
            age = GaugeMetricFamily("aos_device_heartbeat_age_seconds",
                                    "Seconds since the agent last renewed its AosDevice", labels=["device"])
            age.add_metric([self.device], max(0.0, time.time() - last))
            yield age


def make_registry(collector: AgentCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    registry.register(ALERTS)
    registry.register(HEARTBEATS)
    return registry
