"""Metrics and permissions end to end on a real control plane (tools/cluster.py): `aosctl operator`
and one `aosctl agent` (real runc, the chart's identities) serving /metrics, scraped over HTTP and
parsed with prometheus_client's own parser while the state changes; a service that declares
`permissions` gets AOS_SECRET through operator, package and agent, and the agent's node answers
for it on the permission socket.

The steps share one fleet and run in order: an idle device, an invalid service, a valid one with
permissions, its deletion.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aos_operator.api.models import AOS_SERVICE
from aos_operator.runtime.permission_server import query_permissions
from tests.conftest import EXAMPLES
from tests.e2e.fleet import Fleet, eventually, fleet_on_control_plane
from tools.cluster import free_port

pytestmark = pytest.mark.root
NAMESPACE = "metrics"
NAME = "secret-printer"
DEVICE = "edge-m"
PERMISSIONS = {"vis": {"Signal.Doors.*": "rw", "Signal.Speed": "r"}}
SCRIPT = ("import os, time\nprint('secret=' + os.environ.get('AOS_SECRET', 'none'), flush=True)\n"
          "while True:\n    time.sleep(1)\n")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_on_control_plane(tmp_path_factory.mktemp("metrics-fleet"), {}, NAMESPACE) as fleet:
        fleet.operator_port, fleet.agent_port = free_port(), free_port()  # type: ignore[attr-defined]
        fleet.start_operator("--metrics-address", f"127.0.0.1:{fleet.operator_port}")  # type: ignore[attr-defined]
        fleet.start_agent(DEVICE, {"kubernetes.io/arch": "amd64"}, "--no-network",
                          "--metrics-address", f"127.0.0.1:{fleet.agent_port}")  # type: ignore[attr-defined]
        yield fleet


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:PORT/metrics, parsed by prometheus_client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape_when_up(port: int) -> Samples | None:
    """As scrape, None while nothing listens yet (the process is starting)."""
    try:
        return scrape(port)
    except urllib.error.URLError as error:
        if isinstance(error.reason, ConnectionRefusedError):
            return None
        raise


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The one sample of `metric` whose labels include `labels` (None when there is none)."""
    found = [v for (sample, sample_labels), v in samples.items()
             if sample == metric and labels.items() <= dict(sample_labels).items()]
    assert len(found) <= 1, f"{metric} {labels}: {len(found)} samples"
    return found[0] if found else None


def service(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"config": config, "selector": {"matchLabels": {"aosedge.io/device": DEVICE}},
                 "source": {"configMaps": [{"name": "printer-files", "items": [
                     {"key": "main.py", "path": "app/main.py", "mode": 0o755}]}]}},
    }


def config() -> dict[str, Any]:
    document = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())
    settings = document["configuration"]
    settings.update(cmd="python3 -u /app/main.py", permissions=PERMISSIONS)
    settings.pop("env")
    for key in ("upload_speed", "download_speed"):
        settings["quotas"].pop(key)
    document["publish"]["service_uid"] = str(uuid.uuid4())
    return document


def test_an_idle_device_reports_no_instances_and_its_heartbeats(fleet: Fleet) -> None:
    port = fleet.agent_port  # type: ignore[attr-defined]
    first = eventually(lambda: (s := scrape_when_up(port)) and value(s, "aos_device_heartbeats_total", device=DEVICE, result="ok")
                       and s, 60, lambda: f"a heartbeat in the agent's metrics\n{fleet.diagnostics()}")
    assert value(first, "aos_device_instances", device=DEVICE, phase="Running") == 0
    age = value(first, "aos_device_heartbeat_age_seconds", device=DEVICE)
    assert age is not None and age >= 0
    assert not any(name.startswith("aos_instance_") and name != "aos_instance_alerts" for name, _ in first)
    beats = value(first, "aos_device_heartbeats_total", device=DEVICE, result="ok")
    eventually(lambda: (value(scrape(port), "aos_device_heartbeats_total", device=DEVICE, result="ok") or 0) > beats,
               30, "the heartbeat counter to grow")


def test_an_invalid_config_counts_an_error_by_reason(fleet: Fleet) -> None:
    port = fleet.operator_port  # type: ignore[attr-defined]
    before = value(eventually(lambda: scrape_when_up(port), 60, "the operator's metrics"), "aos_operator_errors_total",
                   reason="InvalidConfig") or 0
    broken = config()
    broken["configuration"]["quotas"]["mem"] = "lots"
    fleet.plane.create(service(broken))
    eventually(lambda: (value(scrape(port), "aos_operator_errors_total", reason="InvalidConfig") or 0) > before,
               60, lambda: f"InvalidConfig in the operator's metrics\n{fleet.diagnostics()}")
    # the error is counted while the pass ends, the pass once it has ended
    samples = eventually(lambda: (s := scrape(port)) and (value(s, "aos_operator_reconcile_passes_total", result="ok")
                                                          or 0) >= 1 and s, 30, "a finished pass")
    assert (value(samples, "aos_operator_builds_total", result="ok") or 0) == 0  # nothing was built
    fleet.api.delete(AOS_SERVICE, NAME, NAMESPACE)
    eventually(lambda: fleet.service(NAMESPACE, NAME) is None, 60, "the invalid service gone")


def test_a_running_service_with_permissions_shows_in_both_and_gets_its_secret(fleet: Fleet) -> None:
    operator_port, agent_port = fleet.operator_port, fleet.agent_port  # type: ignore[attr-defined]
    passes = value(scrape(operator_port), "aos_operator_reconcile_passes_total", result="ok") or 0
    fleet.plane.create({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "printer-files", "namespace": NAMESPACE}, "data": {"main.py": SCRIPT}})
    fleet.plane.create(service(config()))
    instance = eventually(lambda: [i for i in fleet.instances(NAMESPACE, NAME)
                                   if (i.get("status") or {}).get("phase") == "Running"], 180,
                          lambda: f"a Running instance\n{fleet.diagnostics()}")[0]
    instance_id, name = instance["spec"]["instanceId"], instance["metadata"]["name"]
    labels = {"device": DEVICE, "instance_id": instance_id, "namespace": NAMESPACE, "name": name}

    samples = eventually(lambda: (s := scrape(agent_port)) and value(s, "aos_instance_memory_bytes", **labels) and s,
                         60, "the instance in the agent's metrics")
    assert value(samples, "aos_instance_phase", phase="Running", **labels) == 1
    assert value(samples, "aos_instance_phase", phase="Pending", **labels) == 0
    assert value(samples, "aos_instance_restarts_total", **labels) == 0
    assert value(samples, "aos_instance_memory_bytes", **labels) > 0
    assert value(samples, "aos_instance_cpu_millicores", **labels) is not None
    assert value(samples, "aos_device_instances", device=DEVICE, phase="Running") == 1

    operator = scrape(operator_port)
    assert value(operator, "aos_operator_builds_total", result="ok") == 1
    assert value(operator, "aos_operator_pushes_total", result="ok") == 1
    assert value(operator, "aos_operator_build_duration_seconds_count") == 1
    assert value(operator, "aos_operator_push_duration_seconds_count") == 1
    assert value(operator, "aos_operator_reconcile_passes_total", result="ok") > passes
    assert value(operator, "aos_operator_reconcile_duration_seconds_count") >= value(
        operator, "aos_operator_reconcile_passes_total", result="ok")

    # permissions: the config's map reached the device; the process has its secret; the node answers
    agent = fleet.agents[DEVICE]
    log = eventually(lambda: "secret=" in agent.log_of(instance_id) and agent.log_of(instance_id), 30, "the secret line")
    secret = re.search(r"secret=(\S+)", log).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", secret)
    answer = query_permissions(agent.run_dir, secret, "vis", "Signal.Doors.FrontLeft", "w")
    assert answer["ok"] and answer["allowed"] and answer["permissions"] == PERMISSIONS["vis"]
    assert answer["instance"]["instanceId"] == instance_id
    assert query_permissions(agent.run_dir, str(uuid.uuid4()), "vis")["code"] == "UnknownSecret"

    # deleted: its series go with it, none stays behind at its last values
    fleet.api.delete(AOS_SERVICE, NAME, NAMESPACE)
    eventually(lambda: value(scrape(agent_port), "aos_instance_phase", phase="Running", **labels) is None, 120,
               lambda: f"the instance's series gone\n{fleet.diagnostics()}")
    assert value(scrape(agent_port), "aos_device_instances", device=DEVICE, phase="Running") == 0
