"""Agents are confined like kubelets under NodeRestriction, proven on the real kube-apiserver: the
chart's agent RBAC plus its ValidatingAdmissionPolicy keyed on the node name that a Pod-bound
service-account token carries. Agent A may create and update only its own AosDevice and write
only the status of instances whose spec.device is its node; it cannot touch AosServices, other
devices' objects or Leases, instance specs, or Secrets. Also what the agent logs when the API
refuses it or cuts its watch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from aos_operator.api.client import Connection, KubeClient, error_text
from aos_operator.api.models import GROUP, VERSION
from tests.cluster.install import Installation, install
from tools.cluster import ControlPlane

VALUES = {"agent": {"admissionPolicy": {"enabled": True}}}
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def installation() -> Iterator[Installation]:
    with ControlPlane(controller_manager=False) as plane:
        installed = install(plane, VALUES)
        plane.ensure_namespace("apps")
        for node in ("edge-a", "edge-b"):
            plane.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
            plane.create(instance(node))
        yield installed


def instance(device: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AosServiceInstance",
        "metadata": {"name": f"svc-{device}-0", "namespace": "apps"},
        "spec": {"service": "svc", "device": device, "index": 0, "serviceId": "svc", "subject": "local",
                 "instanceId": f"id-{device}", "image": {"reference": f"r.example/svc@{DIGEST}", "digest": DIGEST}},
    }


def device(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosDevice", "metadata": {"name": name}}


def custom(kubeconfig: Path) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))


def refused(call: Callable[[], Any]) -> client.ApiException:
    """The API's refusal of `call`; retried while a just-created policy is not yet loaded."""
    deadline = time.monotonic() + 30
    while True:
        try:
            call()
        except client.ApiException as error:
            return error
        if time.monotonic() > deadline:
            raise AssertionError("the API accepted a write the agent must not make")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def agent_a(installation: Installation) -> client.CustomObjectsApi:
    return custom(installation.agent_kubeconfig("edge-a"))


def test_an_agent_registers_its_own_device_but_no_other(agent_a: client.CustomObjectsApi) -> None:
    error = refused(lambda: agent_a.create_cluster_custom_object(GROUP, VERSION, "aosdevices", device("edge-b")))
    assert error.status == 422  # a ValidatingAdmissionPolicy denies with Invalid
    assert "an agent may write only the AosDevice of its own node edge-a" in error.body
    created = agent_a.create_cluster_custom_object(GROUP, VERSION, "aosdevices", device("edge-a"))
    assert created["metadata"]["name"] == "edge-a"
    patched = agent_a.patch_cluster_custom_object_status(
        GROUP, VERSION, "aosdevices", "edge-a", {"status": {"cpuCores": 2}})
    assert patched["status"]["cpuCores"] == 2


def test_an_agent_writes_the_status_of_its_own_instances_only(
        installation: Installation, agent_a: client.CustomObjectsApi) -> None:
    own = agent_a.patch_namespaced_custom_object_status(
        GROUP, VERSION, "apps", "aosserviceinstances", "svc-edge-a-0", {"status": {"phase": "Running"}})
    assert own["status"]["phase"] == "Running"
    error = refused(lambda: agent_a.patch_namespaced_custom_object_status(
        GROUP, VERSION, "apps", "aosserviceinstances", "svc-edge-b-0", {"status": {"phase": "Running"}}))
    assert error.status == 422
    assert "an agent may write only the status of instances on its own node edge-a" in error.body


def test_an_agent_renews_the_lease_of_its_own_node_only(installation: Installation) -> None:
    """The agent's own call (KubeClient.renew_lease: create, then merge patches) under the chart's Role."""
    kube = KubeClient(Connection(kubeconfig=str(installation.agent_kubeconfig("edge-a"))), user_agent="aos-agent/edge-a")
    namespace, labels = installation.namespace, {"aosedge.io/device": "edge-a"}
    error = refused(lambda: kube.renew_lease("edge-b", namespace, "edge-b", 40, {"aosedge.io/device": "edge-b"}))
    assert error.status == 422 and "an agent may renew only the Lease of its own node edge-a" in error.body
    first = kube.renew_lease("edge-a", namespace, "edge-a", 40, labels)
    second = kube.renew_lease("edge-a", namespace, "edge-a", 40, labels)
    assert first["metadata"]["uid"] == second["metadata"]["uid"] and second["spec"]["holderIdentity"] == "edge-a"
    assert second["spec"]["renewTime"] > first["spec"]["renewTime"] and second["metadata"]["labels"] == labels
    elsewhere = refused(lambda: kube.renew_lease("edge-a", "apps", "edge-a", 40, labels))
    assert elsewhere.status == 403, "Leases only in the release's namespace"
    operator = KubeClient(Connection(kubeconfig=str(installation.operator_kubeconfig())), user_agent="aos-operator")
    items, _ = operator.list_leases("", "aosedge.io/device")
    assert [item["metadata"]["name"] for item in items] == ["edge-a"], "the operator lists them in every namespace"


def test_rbac_keeps_an_agent_off_specs_services_deletes_and_secrets(
        installation: Installation, agent_a: client.CustomObjectsApi) -> None:
    attempts = {
        "patch an instance's spec": lambda: agent_a.patch_namespaced_custom_object(
            GROUP, VERSION, "apps", "aosserviceinstances", "svc-edge-a-0", {"spec": {"subject": "x"}}),
        "delete an instance": lambda: agent_a.delete_namespaced_custom_object(
            GROUP, VERSION, "apps", "aosserviceinstances", "svc-edge-a-0"),
        "create an AosService": lambda: agent_a.create_namespaced_custom_object(
            GROUP, VERSION, "apps", "aosservices", {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosService",
                                                    "metadata": {"name": "x"}, "spec": {}}),
        "delete another device": lambda: agent_a.delete_cluster_custom_object(GROUP, VERSION, "aosdevices", "edge-b"),
    }
    for what, attempt in attempts.items():
        error = refused(attempt)
        assert error.status == 403, f"{what}: {error.status} {error.body}"
        assert "forbidden" in error.body, what
    core = client.CoreV1Api(config.new_client_from_config(str(installation.agent_kubeconfig("edge-a"))))
    with pytest.raises(client.ApiException) as secrets:
        core.list_namespaced_secret(installation.namespace)
    assert secrets.value.status == 403


def test_a_token_without_a_node_is_refused(installation: Installation) -> None:
    plane = installation.plane
    token = plane.service_account_token(installation.namespace, installation.agent_service_account)
    unbound = custom(plane.token_kubeconfig("agent-unbound", token))
    error = refused(lambda: unbound.create_cluster_custom_object(GROUP, VERSION, "aosdevices", device("edge-c")))
    assert error.status == 422 and "carries no node name" in error.body


def test_the_operator_is_not_bound_by_the_agent_policy(installation: Installation) -> None:
    operator = custom(installation.operator_kubeconfig())
    listed = operator.list_cluster_custom_object(GROUP, VERSION, "aosserviceinstances")
    assert {item["spec"]["device"] for item in listed["items"]} >= {"edge-a", "edge-b"}
    with pytest.raises(client.ApiException) as status_write:  # the chart gives it no instance status writes
        operator.patch_namespaced_custom_object_status(
            GROUP, VERSION, "apps", "aosserviceinstances", "svc-edge-b-0", {"status": {"phase": "Failed"}})
    assert status_write.value.status == 403


def test_an_agent_refused_its_lease_heart_beats_by_status(installation: Installation, tmp_path: Path) -> None:
    """The agent's real loop, with a Lease namespace its RBAC does not cover: it says so once and
    writes its AosDevice status every beat instead, so the operator still sees it alive."""
    import threading

    from aos_operator.agent.loop import AgentLoop, AgentSettings
    from aos_operator.runtime import NodeFacts
    from tests.e2e.rollout_fleet import RolloutDevice

    kubeconfig = installation.agent_kubeconfig("edge-b")
    settings = AgentSettings(device="edge-b", node="edge-b", run_dir=tmp_path, heartbeat_seconds=0.5,
                             lease_namespace="apps", connection=Connection(kubeconfig=str(kubeconfig)))
    kube = KubeClient(settings.connection, user_agent="aos-agent/edge-b")
    node = NodeFacts(cores=2, dmips=20000, architecture="amd64", cgroup_version=1, swap_accounting=True)
    loop = AgentLoop(settings, kube, RolloutDevice(lambda digest: True), node)  # type: ignore[arg-type]
    thread = threading.Thread(target=loop._heartbeat, daemon=True)
    thread.start()
    try:
        api = custom(kubeconfig)
        beats: set[str] = set()  # lastHeartbeat has whole seconds; a beat every 0.5 s
        deadline = time.monotonic() + 30
        while len(beats) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                device = api.get_cluster_custom_object(GROUP, VERSION, "aosdevices", "edge-b")
            except client.ApiException:
                continue  # not registered yet
            beats.add((device.get("status") or {}).get("lastHeartbeat") or "")
        beats.discard("")
        # With its Lease an unchanged status would keep one lastHeartbeat; refused, it is written every beat.
        assert len(beats) >= 3, f"status writes when the Lease is refused: {sorted(beats)}"
    finally:
        loop.stop.set()
        thread.join(timeout=10)
        kube.close()


def test_a_refusal_is_logged_as_one_line_with_the_servers_reason(agent_a: client.CustomObjectsApi) -> None:
    """What the agent and the operator log of an API error: the code and the server's own message,
    not the client's dump of headers and body."""
    policy = error_text(refused(lambda: agent_a.create_cluster_custom_object(GROUP, VERSION, "aosdevices", device("edge-b"))))
    assert policy.startswith("422 Unprocessable Entity: ")
    assert "an agent may write only the AosDevice of its own node edge-a" in policy
    rbac = error_text(refused(lambda: agent_a.delete_cluster_custom_object(GROUP, VERSION, "aosdevices", "edge-b")))
    assert rbac.startswith("403 Forbidden: ") and 'cannot delete resource "aosdevices"' in rbac
    for text in (policy, rbac):
        assert "\n" not in text and "HTTP response headers" not in text and "Audit-Id" not in text


def test_aosctl_rollout_names_the_refusal(installation: Installation) -> None:
    """`aosctl rollout pause` with credentials that may not patch AosServices (an agent's)."""
    import io

    from aos_operator.controller.rollout_cli import ApiFailure, Rollouts

    kube = KubeClient(Connection(kubeconfig=str(installation.agent_kubeconfig("edge-a"))), user_agent="aosctl-rollout")
    try:
        with pytest.raises(ApiFailure) as failure:
            Rollouts(kube, "apps", "svc", io.StringIO()).pause()
    finally:
        kube.close()
    message = failure.value.message
    assert message.startswith("aosservice/svc in apps: API server answered 403 Forbidden: ")
    assert 'cannot patch resource "aosservices"' in message and "\n" not in message


def test_the_agent_logs_a_cut_watch_in_one_line_and_its_own_stop_not_at_all(
        installation: Installation, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import threading

    from aos_operator.agent.loop import AgentLoop, AgentSettings
    from aos_operator.runtime import NodeFacts
    from tests.cluster.proxy import ProxyThread
    from tests.e2e.rollout_fleet import RolloutDevice

    proxy = ProxyThread("edge-a", "127.0.0.1", installation.plane.port).start()
    settings = AgentSettings(device="edge-a", node="edge-a", run_dir=tmp_path, lease_namespace=installation.namespace,
                             connection=Connection(kubeconfig=str(installation.agent_kubeconfig("edge-a", server=proxy.url))))
    kube = KubeClient(settings.connection, user_agent="aos-agent/edge-a")
    node = NodeFacts(cores=2, dmips=20000, architecture="amd64", cgroup_version=1, swap_accounting=True)
    loop = AgentLoop(settings, kube, RolloutDevice(lambda digest: True), node)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="aos_operator.agent")

    def cut_warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("watch of AosServiceInstances failed")]

    def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    thread = threading.Thread(target=loop._watch, daemon=True)
    thread.start()
    try:
        until(lambda: proxy.proxy.bytes_to_client > 0, "the agent's list through the proxy")
        time.sleep(1.0)  # the watch request sent
        proxy.block("reset")
        until(lambda: bool(cut_warnings()), "a warning for the cut watch")
        assert all("\n" not in message and "HTTP response headers" not in message for message in cut_warnings())
        proxy.unblock()
        answered = proxy.proxy.bytes_to_client
        until(lambda: proxy.proxy.bytes_to_client > answered, "the agent listing again")
        time.sleep(1.0)
        caplog.clear()
        loop.stop.set()
        proxy.block("reset")  # the stream of an agent that is stopping ends with an error too
        thread.join(timeout=15)
        assert not thread.is_alive()
        assert cut_warnings() == [], "an agent's own stop is not a failed watch"
    finally:
        loop.stop.set()
        proxy.close()
        kube.close()
