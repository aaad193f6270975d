"""Install what the chart gives the operator and the agents on a real control plane, and their identities.

The chart (charts/aos-operator, rendered with helm-python-sdk as `helm install` would) decides the
CRDs, the ServiceAccounts, the RBAC objects and the agent's ValidatingAdmissionPolicy; the tests
apply exactly those and nothing more, then log each component in as the chart's identity:
the operator with a token of its ServiceAccount, each agent with a token bound to a Pod of the
agent DaemonSet on that node (the Pod never runs: there is no kubelet), so the token carries the
node's name as a pod-bound token on a real node does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO
from tools.chart_manifests import RELEASE_NAME, RELEASE_NAMESPACE, namespace_document, render
from tools.cluster import ApiError, ControlPlane

CRD_DIR = REPO / "crds"
# What the tests take from the chart: identities and what they may do. Workloads stay out (no kubelet).
IDENTITY_KINDS = (
    "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
)


def crd_documents() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))]


def apply_crds(plane: ControlPlane) -> list[str]:
    """Create the CRDs exactly as crds/ ships them and wait until the server serves them."""
    names = []
    for crd in crd_documents():
        try:
            plane.create(crd)
        except ApiError as error:
            if error.status != 409:
                raise
            plane.apply(crd)
        names.append(crd["metadata"]["name"])
    plane.wait_established(names)
    return names


@dataclass
class Installation:
    """The chart's identities installed on one control plane."""

    plane: ControlPlane
    values: dict[str, Any]
    objects: list[dict[str, Any]] = field(default_factory=list)
    namespace: str = RELEASE_NAMESPACE

    def _find(self, kind: str, name_suffix: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"].endswith(name_suffix):
                return obj
        raise LookupError(f"the chart rendered no {kind} named *{name_suffix}")

    @property
    def operator_service_account(self) -> str:
        return str(self._find("ServiceAccount", "-operator")["metadata"]["name"])

    @property
    def agent_service_account(self) -> str:
        return str(self._find("ServiceAccount", "-agent")["metadata"]["name"])

    def operator_kubeconfig(self, server: str | None = None) -> Path:
        token = self.plane.service_account_token(self.namespace, self.operator_service_account)
        return self.plane.token_kubeconfig("operator", token, server=server)

    def agent_pod(self, node: str) -> dict[str, Any]:
        """A Pod of the agent DaemonSet on `node`, as the DaemonSet controller would create it."""
        daemonset = self._find("DaemonSet", "-agent")
        template = copy.deepcopy(daemonset["spec"]["template"])
        # The server picks the suffix, as for the DaemonSet controller's Pods: five random hex
        # digits of our own collided about once in 50 runs at 200 agents.
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {**template.get("metadata", {}), "generateName": f"{daemonset['metadata']['name']}-",
                         "namespace": self.namespace},
            "spec": {**template["spec"], "nodeName": node},
        }
        try:
            return dict(self.plane.create(pod))
        except ApiError as error:
            raise ApiError(error.status, f"the agent DaemonSet's Pod for {node}: {error}") from None

    def agent_kubeconfig(self, node: str, server: str | None = None) -> Path:
        """The agent of `node` logged in with a token bound to its Pod (it names the node)."""
        pod = self.agent_pod(node)
        token = self.plane.service_account_token(self.namespace, self.agent_service_account, bound_pod=pod)
        return self.plane.token_kubeconfig(f"agent-{node}", token, server=server)


def install(plane: ControlPlane, values: Mapping[str, Any] | None = None) -> Installation:
    """The CRDs from crds/, the release's Namespace and the chart's identity objects, applied as the admin."""
    apply_crds(plane)
    chosen = dict(values or {})
    documents = render(chosen, name=RELEASE_NAME, namespace=RELEASE_NAMESPACE)
    namespace = namespace_document().obj
    plane.create(namespace)
    installation = Installation(plane, chosen, [d.obj for d in documents])
    for obj in installation.objects:
        if obj["kind"] in IDENTITY_KINDS:
            plane.create(obj)
    return installation
