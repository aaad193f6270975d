"""The chart's metrics values: the operator's and the agents' --metrics-address, container ports and
metrics Services, the optional ServiceMonitor (checked against the fields the Prometheus
Operator's CRD defines, tests/kubernetes_objects.py), and its refusal when nothing is scraped."""

from __future__ import annotations

import helm_python
import pytest

from tests.kubernetes_objects import SERVICE_MONITOR_CRD, CustomResourceSchemas, validation_errors
from tools.chart_manifests import render


def component(documents, kind: str, name: str) -> dict:  # type: ignore[no-untyped-def]
    [obj] = [d.obj for d in documents if d.kind == kind and d.obj["metadata"]["labels"].get("app.kubernetes.io/component") == name]
    return obj


def container(documents, kind: str, name: str) -> dict:  # type: ignore[no-untyped-def]
    return component(documents, kind, name)["spec"]["template"]["spec"]["containers"][0]


def test_metrics_are_served_by_default_on_the_documented_ports() -> None:
    documents = render()
    operator, agent = container(documents, "Deployment", "operator"), container(documents, "DaemonSet", "agent")
    assert "--metrics-address=:8081" in operator["args"]
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in operator["ports"]
    assert "--metrics-address=:9469" in agent["args"]
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9469, "protocol": "TCP"}]
    services = {d.obj["metadata"]["name"]: d.obj for d in documents if d.kind == "Service"}
    assert services["aos-operator-agent-metrics"]["spec"]["clusterIP"] == "None"  # every agent pod is a target
    assert services["aos-operator-operator-metrics"]["spec"]["ports"][0]["port"] == 8081
    assert not [d for d in documents if d.kind == "ServiceMonitor"]


def test_metrics_can_be_turned_off() -> None:
    documents = render({"operator": {"metrics": {"enabled": False}}, "agent": {"metrics": {"enabled": False}}})
    assert not any("--metrics-address" in arg for kind, name in (("Deployment", "operator"), ("DaemonSet", "agent"))
                   for arg in container(documents, kind, name)["args"])
    assert "ports" not in container(documents, "DaemonSet", "agent")
    assert not [d for d in documents if d.kind == "Service" and "metrics" in d.obj["metadata"]["name"]]


def test_the_service_monitor_selects_the_metrics_services() -> None:
    documents = render({"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}}})
    monitors = {d.obj["metadata"]["name"]: d.obj for d in documents if d.kind == "ServiceMonitor"}
    assert set(monitors) == {"aos-operator-operator", "aos-operator-agent"}
    schemas = CustomResourceSchemas([SERVICE_MONITOR_CRD])
    services = [d.obj for d in documents if d.kind == "Service"]
    for monitor in monitors.values():
        assert validation_errors(monitor, schemas) == []
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        endpoint = monitor["spec"]["endpoints"][0]
        assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("metrics", "/metrics", "15s")
        wanted = monitor["spec"]["selector"]["matchLabels"]
        [selected] = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
        assert selected["metadata"]["name"].endswith("-metrics")
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["aos-system"]}
    assert monitors["aos-operator-agent"]["spec"]["endpoints"][0]["relabelings"][0]["targetLabel"] == "node"
    # without the agent, only the operator is monitored
    alone = render({"serviceMonitor": {"enabled": True}, "agent": {"enabled": False}})
    assert [d.obj["metadata"]["name"] for d in alone if d.kind == "ServiceMonitor"] == ["aos-operator-operator"]


def test_a_service_monitor_with_nothing_to_scrape_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="nothing to scrape"):
        render({"serviceMonitor": {"enabled": True}, "operator": {"metrics": {"enabled": False}},
                "agent": {"metrics": {"enabled": False}}})


@pytest.mark.parametrize("values", [{"serviceMonitor": {"interval": "30 s"}}, {"agent": {"metrics": {"port": 0}}},
                                    {"operator": {"metrics": {"prot": 1}}}])
def test_bad_metrics_values_are_refused(values: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(helm_python.HelmValuesError):
        render(values)
