"""Host devices and resources end to end on a real control plane: two agents, one with a node
config offering a device (sharedCount 1) and a resource, one with none; the operator places by
them, says NoDeviceFits with the missing names, counts the shares over every service on the
device, and the instance sees the device and the resource under real runc."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from aos_operator.api.models import AOS_SERVICE
from tests.conftest import EXAMPLES
from tests.e2e.fleet import Fleet, eventually, fleet_on_control_plane
from tests.e2e.test_operator_agents import CHART_VALUES

pytestmark = pytest.mark.root
NAMESPACE = "devices"

NODE_CONFIG = """devices:
  - name: cam
    hostDevices: ["/dev/null:/dev/aoscam"]
    groups: [root]
    sharedCount: 1
resources:
  - name: vis
    env: [VIS_URL=wss://wwwivi:8088]
    hosts: [{ip: 10.0.0.100, hostname: wwwivi}]
"""

PROBE = """import os, time
print("cam", os.path.exists("/dev/aoscam"), "vis", os.environ.get("VIS_URL"),
      "hosts", "wwwivi" in open("/etc/hosts").read(), flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("devices-fleet")
    (root / "node-config.yaml").write_text(NODE_CONFIG)
    with fleet_on_control_plane(root, CHART_VALUES, NAMESPACE) as fleet:
        fleet.plane.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "namespace": NAMESPACE},
                            "data": {"probe.py": PROBE}})
        fleet.start_operator()
        fleet.start_agent("edge-cam", {"zone": "a", "kubernetes.io/arch": "amd64"},
                          "--node-config", str(root / "node-config.yaml"))
        fleet.start_agent("edge-plain", {"zone": "a", "kubernetes.io/arch": "amd64"})
        yield fleet


def service(name: str, devices: list[dict[str, str]], resources: list[str]) -> dict[str, Any]:
    document = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())
    document["publish"]["service_uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"devices-e2e/{name}"))
    configuration = document["configuration"]
    configuration["cmd"] = "python3 -u /usr/bin/probe.py"
    configuration["devices"] = devices
    configuration["resources"] = resources
    return {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"config": document, "selector": {"matchLabels": {"zone": "a"}},
                 "source": {"configMaps": [{"name": "probe", "items": [
                     {"key": "probe.py", "path": "usr/bin/probe.py", "mode": 0o755}]}]}},
    }


def device_status(fleet: Fleet, name: str) -> dict[str, Any]:
    return (fleet.device(name) or {}).get("status") or {}


def ready_reason(fleet: Fleet, name: str) -> tuple[str | None, str]:
    condition = fleet.condition(fleet.service(NAMESPACE, name), "Ready")
    return condition.get("reason"), condition.get("message", "")


def test_devices_report_what_their_node_config_offers(fleet: Fleet) -> None:
    status = eventually(lambda: (s := device_status(fleet, "edge-cam")).get("devices") and s, 60,
                        lambda: f"edge-cam's devices\n{fleet.diagnostics()}")
    assert status["devices"] == [{"name": "cam", "sharedCount": 1, "used": 0, "free": 1}]
    assert status["resources"] == ["vis"] and status["hostDevices"] == ["cam"]
    plain = eventually(lambda: (s := device_status(fleet, "edge-plain")).get("lastHeartbeat") and s, 60, "edge-plain")
    assert plain["devices"] == [] and plain["resources"] == []


def test_only_the_device_with_the_device_and_resource_gets_the_instance(fleet: Fleet) -> None:
    fleet.api.create(AOS_SERVICE, service("cam-user", [{"name": "cam", "mode": "rw"}], ["vis"]))

    def placed() -> list[dict[str, Any]] | None:
        instances = fleet.instances(NAMESPACE, "cam-user")
        running = [i for i in instances if (i.get("status") or {}).get("phase") == "Running"]
        return instances if running and ready_reason(fleet, "cam-user")[0] == "NoDeviceFits" else None

    instances = eventually(placed, 240, lambda: f"cam-user placed\n{fleet.diagnostics()}")
    assert [i["spec"]["device"] for i in instances] == ["edge-cam"]
    assert instances[0]["spec"]["reserved"]["devices"] == ["cam"]
    reason, message = ready_reason(fleet, "cam-user")
    assert "edge-plain: device cam, resource vis" in message and "edge-cam" not in message
    agent = fleet.agents["edge-cam"]
    instance_id = instances[0]["spec"]["instanceId"]
    output = eventually(lambda: "cam " in agent.log_of(instance_id) and agent.log_of(instance_id), 30, "the probe's line")
    assert "cam True vis wss://wwwivi:8088 hosts True" in output
    status = eventually(lambda: (s := device_status(fleet, "edge-cam"))["devices"][0]["used"] == 1 and s, 30,
                        "the share in use on edge-cam")
    assert status["devices"][0]["free"] == 0


def test_shares_are_counted_over_every_service_on_the_device(fleet: Fleet) -> None:
    fleet.api.create(AOS_SERVICE, service("cam-second", [{"name": "cam", "mode": "r"}], []))
    reason, message = eventually(lambda: (r := ready_reason(fleet, "cam-second"))[0] == "NoDeviceFits" and r, 240,
                                 lambda: f"cam-second NoDeviceFits\n{fleet.diagnostics()}")
    assert "edge-cam: device cam (sharedCount 1, all in use)" in message
    assert "edge-plain: device cam" in message
    assert fleet.instances(NAMESPACE, "cam-second") == []
    events = fleet.plane.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    assert any(e["reason"] == "NoDeviceFits" and e["involvedObject"]["name"] == "cam-second" for e in events)
    # the first service goes: its share is freed, and the second one takes it
    fleet.api.delete(AOS_SERVICE, "cam-user", NAMESPACE)

    def moved() -> list[dict[str, Any]] | None:
        instances = fleet.instances(NAMESPACE, "cam-second")
        return instances if [(i.get("status") or {}).get("phase") for i in instances] == ["Running"] else None

    instances = eventually(moved, 240, lambda: f"cam-second running\n{fleet.diagnostics()}")
    assert instances[0]["spec"]["device"] == "edge-cam"
