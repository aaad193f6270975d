"""offlineTTL and alertRules end to end: the real control plane (tools/cluster.py), `aosctl operator`
and one `aosctl agent` (real runc, the chart's identity and RBAC, the agent admission policy on),
the real registry. The agent's API is cut through its loopback TCP proxy (tests/cluster/proxy.py).

The steps share one fleet and run in order: a CPU alert raised and fallen (events, condition),
then an instance stopped for OfflineTimeout while its agent is cut off, kept stopped across an
agent restart and the return of the contact, and started again by a new desired state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from aos_operator.api.models import AOS_SERVICE
from tests.e2e.fleet import Fleet, eventually, fleet_on_control_plane
from tests.e2e.test_operator_agents import CHART_VALUES, config, config_map
from tests.e2e.test_metrics_permissions import scrape, value
from tools.cluster import free_port

pytestmark = [pytest.mark.root, pytest.mark.slow]
NAMESPACE = "demo"
DEVICE = "edge-alerts"
BURNER, TTL = "cpu-burner", "offline-ttl"
# Burns a core for 15 s, then sleeps: the CPU alert rises and falls.
BURN = ("python3 -u -c \"import time; end = time.time() + 15; print('burning'); "
        "exec('while time.time() < end: pass'); print('calm'); time.sleep(10 ** 6)\"")
SLEEP = "python3 -u -c \"import time; print('up'); time.sleep(10 ** 6)\""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_on_control_plane(tmp_path_factory.mktemp("offline-alerts"), CHART_VALUES, NAMESPACE) as fleet:
        fleet.plane.create(config_map())
        fleet.start_operator()
        fleet.metrics_port = free_port()  # type: ignore[attr-defined]
        fleet.start_agent(DEVICE, {"alerts": "e2e", "kubernetes.io/arch": "amd64"}, "--alert-poll", "0.5",
                          "--no-network", "--metrics-address", f"127.0.0.1:{fleet.metrics_port}")  # type: ignore[attr-defined]
        yield fleet


def service(name: str, command: str, **configuration: Any) -> dict[str, Any]:
    document = config()
    document["publish"]["service_uid"] = {BURNER: "5a0d3c4e-1b2f-4c6d-8e9f-0a1b2c3d4e51",
                                          TTL: "5a0d3c4e-1b2f-4c6d-8e9f-0a1b2c3d4e52"}[name]
    document["configuration"]["cmd"] = command
    document["configuration"]["quotas"].pop("cpu")  # the burner must be able to burn
    document["configuration"].update(configuration)
    return {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"config": document, "selector": {"matchLabels": {"alerts": "e2e"}},
                 "source": {"configMaps": [{"name": "hello-files", "items": [
                     {"key": "hello.cfg", "path": "etc/hello.cfg"}]}]}},
    }


def instance_of(fleet: Fleet, name: str) -> dict[str, Any] | None:
    instances = fleet.instances(NAMESPACE, name)
    return instances[0] if instances else None


def running(fleet: Fleet, name: str, digest: str | None = None) -> dict[str, Any] | None:
    instance = instance_of(fleet, name)
    status = (instance or {}).get("status") or {}
    if status.get("phase") == "Running" and (digest is None or status.get("imageDigest") == digest):
        return instance
    return None


def events_about(fleet: Fleet, instance: dict[str, Any]) -> list[dict[str, Any]]:
    events = fleet.plane.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    return [event for event in events if event["involvedObject"]["name"] == instance["metadata"]["name"]
            and event["involvedObject"]["kind"] == "AosServiceInstance"]


def test_a_cpu_burner_raises_an_alert_event_and_condition_which_fall_when_it_calms_down(fleet: Fleet) -> None:
    # 10 % of the node's DMIPS: one busy core is 100 / cores %, an idle service far below 3 %.
    fleet.api.create(AOS_SERVICE, service(BURNER, BURN, alerts={
        "cpu": {"minTime": "PT1S", "minThreshold": 3, "maxThreshold": 10}}))
    instance = eventually(lambda: running(fleet, BURNER), 240, lambda: f"the burner Running\n{fleet.diagnostics()}")
    raised = eventually(lambda: [e for e in events_about(fleet, instance) if e["reason"] == "QuotaAlert"], 60,
                        lambda: f"a QuotaAlert event\n{fleet.diagnostics()}")
    assert raised[0]["type"] == "Warning"
    assert raised[0]["message"].startswith("cpu ") and "maxThreshold" in raised[0]["message"]
    assert "% of the node's" in raised[0]["message"]
    assert raised[0]["source"]["component"] == f"aos-agent/{DEVICE}"
    instance_id = instance["spec"]["instanceId"]
    counted = value(scrape(fleet.metrics_port), "aos_instance_alerts_total",  # type: ignore[attr-defined]
                    instance_id=instance_id, parameter="cpu")
    assert counted is not None and counted >= 1, "the raise counts in the agent's metrics"
    condition = eventually(lambda: fleet.condition(instance_of(fleet, BURNER), "QuotaAlert").get("status") == "True"
                           and fleet.condition(instance_of(fleet, BURNER), "QuotaAlert"), 30, "QuotaAlert=True")
    assert condition["reason"] == "QuotaAlert" and condition["message"].startswith("cpu ")
    fallen = eventually(lambda: [e for e in events_about(fleet, instance) if e["reason"] == "QuotaAlertCleared"], 90,
                        lambda: f"the fall (the service calms down after 15 s)\n{fleet.diagnostics()}")
    assert fallen[0]["type"] == "Normal" and "minThreshold" in fallen[0]["message"]
    after = eventually(lambda: fleet.condition(instance_of(fleet, BURNER), "QuotaAlert").get("status") == "False"
                       and fleet.condition(instance_of(fleet, BURNER), "QuotaAlert"), 30, "QuotaAlert=False")
    assert after["reason"] == "WithinThresholds"
    assert instance_of(fleet, BURNER)["status"]["phase"] == "Running", "an alert stops nothing"
    fleet.api.delete(AOS_SERVICE, BURNER, NAMESPACE)


def test_offline_ttl_stops_the_instance_and_only_a_new_desired_state_starts_it_again(fleet: Fleet) -> None:
    agent = fleet.agents[DEVICE]
    fleet.api.create(AOS_SERVICE, service(TTL, SLEEP, offlineTTL="PT4S"))
    instance = eventually(lambda: running(fleet, TTL), 240, lambda: f"the service Running\n{fleet.diagnostics()}")
    instance_id = instance["spec"]["instanceId"]
    assert (agent.data_dir / "online.json").is_file(), "the agent keeps its last contact on disk"
    eventually(lambda: instance_id in agent.containers(), 30, "the container")

    agent.proxy.block()
    eventually(lambda: instance_id not in agent.containers(), 60, "the container stopped while offline")
    assert running(fleet, TTL), "the API has not heard yet"

    # The agent restarts while still offline: it adopts nothing and starts nothing.
    agent.process.stop()
    agent.process.start()
    eventually(lambda: agent.process.log.read_text().count("instance(s) found on the node") >= 2, 60,
               "the restarted agent looked at the node")
    time.sleep(3)
    assert instance_id not in agent.containers(), "an expired instance is not started by a restart"

    agent.proxy.unblock()
    failed = eventually(lambda: (i := instance_of(fleet, TTL)) and (i.get("status") or {}).get("reason") == "OfflineTimeout"
                        and i, 60, lambda: f"OfflineTimeout reported\n{fleet.diagnostics()}")
    assert failed["status"]["phase"] == "Failed"
    assert "offlineTTL of 4 s" in failed["status"]["message"]
    time.sleep(6)  # the agent's re-list and several operator resyncs: the same desired state
    assert instance_id not in agent.containers(), "contact alone does not start it again (as on AosEdge)"
    assert instance_of(fleet, TTL)["status"]["reason"] == "OfflineTimeout"

    # A new desired state (a new package) starts it again.
    old = failed["spec"]["image"]["digest"]
    document = fleet.service(NAMESPACE, TTL)["spec"]["config"]
    document["configuration"]["env"] = [*document["configuration"]["env"], "NEXT=1"]
    fleet.api.patch(AOS_SERVICE, TTL, {"spec": {"config": document}}, NAMESPACE)
    started = eventually(lambda: (i := running(fleet, TTL)) and i["status"]["imageDigest"] != old and i, 240,
                         lambda: f"started again by the new package\n{fleet.diagnostics()}")
    assert started["spec"]["instanceId"] == instance_id
    eventually(lambda: instance_id in agent.containers(), 30, "the container again")
    fleet.api.delete(AOS_SERVICE, TTL, NAMESPACE)
