"""The test control plane itself (tools/cluster.py): it is the pinned release, it enforces RBAC and
authenticates service-account tokens, its controller manager collects garbage and deletes namespaces,
and its stop leaves no process, port or file behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from tools.cluster import OWNER_FILE, ROOT_PREFIX, ApiError, ControlPlane, ControlPlaneError, sweep_abandoned_roots

PIN = Path(__file__).resolve().parents[2] / "tools" / "control-plane" / "go.mod"


def pinned_version() -> str:
    for line in PIN.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["k8s.io/kubernetes"]:
            return parts[1]
    raise AssertionError(f"{PIN} pins no k8s.io/kubernetes")


def eventually(check, timeout: float = 60.0, what: str = "the condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := check()):
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def gone(plane: ControlPlane, path: str) -> bool:
    try:
        plane.request("GET", path)
    except ApiError as error:
        return error.status == 404
    return False


def test_control_plane_serves_enforces_and_stops_clean() -> None:
    plane = ControlPlane()
    with plane:
        print(f"control plane ready in {plane.startup_seconds:.1f} s")
        assert plane.request("GET", "/version")["gitVersion"] == pinned_version()
        pids = plane.pids()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        ports = [plane.port, plane.etcd_port, plane.etcd_peer_port]
        assert all(listening(port) for port in ports)
        assert plane.root.is_dir() and (plane.root / "etcd").is_dir()

        # RBAC: a user the server knows (client certificate of its CA) but that holds no role is refused.
        nobody = plane.client_kubeconfig("nobody", "nobody")
        assert nobody.is_file()
        from kubernetes import client, config
        api = client.CoreV1Api(config.new_client_from_config(str(nobody)))
        with pytest.raises(client.ApiException) as refused:
            api.list_namespaced_config_map("default")
        assert refused.value.status == 403 and 'User "nobody"' in json.loads(refused.value.body)["message"]

        # Service-account tokens are signed and authenticated; the default RBAC gives them no reads.
        plane.request("POST", "/api/v1/namespaces/default/serviceaccounts",
                      {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "probe"}})
        token = plane.service_account_token("default", "probe", seconds=600)
        review = plane.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
        assert review["status"]["authenticated"] is True
        assert review["status"]["user"]["username"] == "system:serviceaccount:default:probe"

        # Admission: a ValidatingAdmissionPolicy is enforced.
        plane.create({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": "no-forbidden"},
            "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}]},
                "validations": [{"expression": "!has(object.data) || !('forbidden' in object.data)", "message": "no forbidden key"}]},
        })
        plane.create({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": "no-forbidden"}, "spec": {"policyName": "no-forbidden", "validationActions": ["Deny"]},
        })

        def refused_by_policy() -> bool:
            try:
                plane.create({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "probe", "namespace": "default"}, "data": {"forbidden": "x"}},
                             dry_run=True)
            except ApiError as error:
                return "no forbidden key" in str(error)
            return False
        eventually(refused_by_policy, 30, "the policy to refuse a ConfigMap")

        # Garbage collection by ownerReferences.
        owner = plane.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": "default"}})
        plane.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "dependent", "namespace": "default", "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]}})
        plane.request("DELETE", "/api/v1/namespaces/default/configmaps/owner")
        eventually(lambda: gone(plane, "/api/v1/namespaces/default/configmaps/dependent"), 60, "the dependent collected")

        # Namespace deletion empties and removes the namespace.
        plane.ensure_namespace("doomed")
        plane.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "doomed"}})
        plane.request("DELETE", "/api/v1/namespaces/doomed")
        eventually(lambda: gone(plane, "/api/v1/namespaces/doomed"), 60, "the namespace deleted")

    for name, pid in pids.items():
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"{name} (pid {pid}) still runs"
    assert not any(listening(port) for port in ports), "a port is still open"
    assert not plane.root.exists(), "the temporary dir is left"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not _zombie(pid)


def test_a_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etcd").write_text("")
    monkeypatch.setenv("AOS_CONTROL_PLANE_BIN", str(tmp_path))
    plane = ControlPlane()
    with pytest.raises(ControlPlaneError, match=r"etcd is missing or not executable"), plane:
        pass
    assert not plane.root.exists()


def test_a_killed_parent_takes_its_control_plane_with_it(tmp_path: Path) -> None:
    """A test or benchmark killed by a timeout must not leave an apiserver and etcd running."""
    import subprocess
    import sys

    script = ("import json, sys, time\nfrom tools.cluster import ControlPlane\n"
              "plane = ControlPlane(controller_manager=False).start()\n"
              "print(json.dumps([plane.pids(), str(plane.root)]), flush=True)\ntime.sleep(600)\n")
    repo = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=repo, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": f"{repo}:{repo / 'operator'}"})
    try:
        assert parent.stdout is not None
        pids, root = json.loads(parent.stdout.readline())
        assert set(pids) == {"etcd", "kube-apiserver"}
        assert all(alive(pid) for pid in pids.values())
    finally:
        parent.kill()
        parent.wait()
    eventually(lambda: not any(alive(pid) for pid in pids.values()), 30, "the components to die with their parent")
    # Its directory outlives it; the next control plane's start removes it once it is quiet, and only it.
    assert Path(root).is_dir()
    sweep_abandoned_roots()
    assert Path(root).is_dir(), "written in the last 15 minutes: perhaps an owner this /proc cannot see"
    an_hour_ago = time.time() - 3600
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (an_hour_ago, an_hour_ago), follow_symlinks=False)
    living = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    try:
        (living / OWNER_FILE).write_text(json.dumps([os.getpid(), None]))
        sweep_abandoned_roots()
        assert not Path(root).exists()
        assert living.is_dir(), "a live owner's directory stays"
    finally:
        shutil.rmtree(living, ignore_errors=True)
