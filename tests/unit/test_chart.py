"""The Helm chart: lint, render, Kubernetes validity, values schema, every option wired, RBAC of least
privilege, pod security, NOTES, CRD copies and the plain manifests (rendered with helm-python-sdk)."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.conftest import REPO
from tests.kubernetes_objects import SERVICE_MONITOR_CRD, CustomResourceSchemas, load_documents, validation_errors
from tools import chart_manifests
from tools.chart_manifests import CHART_DIR, Document, render

ALL_VALUES_FILE = REPO / "tests" / "data" / "chart-all-values.yaml"
DIGEST = "sha256:" + "ab" * 32


def all_values() -> dict[str, Any]:
    return yaml.safe_load(ALL_VALUES_FILE.read_text())


@cache
def chart_defaults() -> dict[str, Any]:
    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.values


def merged(values: dict[str, Any]) -> dict[str, Any]:
    """The values a release would use: the chart's defaults coalesced with these."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.merge_values(values)


def get_path(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        values = values[key]
    return values


def set_path(values: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    target = changed
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = copy.deepcopy(value)
    return changed


def overlay(values: dict[str, Any], *changes: tuple[tuple[str, ...], Any]) -> dict[str, Any]:
    for path, value in changes:
        values = set_path(values, path, value)
    return values


# Variants of the all-values file for options that exclude each other; together they give every
# option a setting in which it matters.
SCENARIOS: dict[str, list[tuple[tuple[str, ...], Any]]] = {
    "all-values": [],
    "in-cluster-registry": [
        (("registry", "inCluster", "enabled"), True),
        (("registry", "inCluster", "persistence", "existingClaim"), ""),
        (("registry", "external", "host"), ""),
        (("registry", "external", "insecure"), False),
        (("registry", "external", "authSecretName"), ""),
        (("registry", "external", "ca", "secretName"), ""),
    ],
    "in-cluster-registry-existing-claim": [
        (("registry", "inCluster", "enabled"), True),
        (("registry", "external", "host"), ""),
        (("registry", "external", "ca", "secretName"), ""),
    ],
    "in-cluster-registry-no-persistence": [
        (("registry", "inCluster", "enabled"), True),
        (("registry", "inCluster", "persistence", "enabled"), False),
        (("registry", "external", "host"), ""),
        (("registry", "external", "ca", "secretName"), ""),
    ],
    "ca-from-configmap": [
        (("registry", "external", "ca", "secretName"), ""),
        (("registry", "external", "ca", "configMapName"), "fleet-registry-ca"),
    ],
    "image-digest": [(("image", "digest"), DIGEST)],
    "no-agent": [(("agent", "enabled"), False)],
    "agent-network": [(("agent", "network", "enabled"), True)],
    "no-metrics": [(("operator", "metrics", "enabled"), False), (("agent", "metrics", "enabled"), False)],
    "service-monitor": [(("serviceMonitor", "enabled"), True)],
    "given-service-accounts": [
        (("operator", "serviceAccount", "create"), False),
        (("agent", "serviceAccount", "create"), False),
    ],
}

# Options no setting can change: the agent must stay privileged; `global` is for parent charts.
FIXED_OPTIONS = {("agent", "privileged"), ("global",)}


def scenario_values(name: str) -> dict[str, Any]:
    return overlay(all_values(), *SCENARIOS[name])


def documents_of(values: dict[str, Any] | None = None) -> list[Document]:
    return render(values)


def objects(documents: list[Document], kind: str) -> list[dict[str, Any]]:
    return [document.obj for document in documents if document.kind == kind]


def one(documents: list[Document], kind: str, component: str) -> dict[str, Any]:
    found = [obj for obj in objects(documents, kind) if obj["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} of the {component}, found {len(found)}"
    return found[0]


# --- lint and render ---------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, ALL_VALUES_FILE], ids=["defaults", "all-values"])
def test_chart_lints_clean_in_strict_mode(values_file: Any) -> None:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm_python.lint(CHART_DIR, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [message for message in report["messages"] if message["severity"] >= 2] == []


def test_lint_reports_a_broken_template(tmp_path: Any) -> None:
    broken = tmp_path / "aos-operator"
    with helm_python.Chart.load(CHART_DIR) as chart:
        chart.save_dir(tmp_path)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.image.repository | nope }}\n")
    report = helm_python.lint(broken, strict=True)
    assert any("broken.yaml" in error for error in report["errors"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_for_kubernetes(scenario: str) -> None:
    documents = documents_of(scenario_values(scenario))
    custom = CustomResourceSchemas([*objects(documents, "CustomResourceDefinition"), SERVICE_MONITOR_CRD])
    peering_crds = documents_of({"operator": {"peering": {"enabled": True}}})
    for crd in objects(peering_crds, "CustomResourceDefinition"):
        custom.add(crd)
    errors = [error for document in documents for error in validation_errors(document.obj, custom)]
    assert errors == []


def test_default_render_has_the_expected_objects() -> None:
    kinds = sorted((document.kind, document.obj["metadata"]["name"]) for document in documents_of())
    assert kinds == sorted(
        [
            ("CustomResourceDefinition", "aosdevices.aosedge.io"),
            ("CustomResourceDefinition", "aoslayers.aosedge.io"),
            ("CustomResourceDefinition", "aosserviceinstances.aosedge.io"),
            ("CustomResourceDefinition", "aosservices.aosedge.io"),
            ("ServiceAccount", "aos-operator-operator"),
            ("ServiceAccount", "aos-operator-agent"),
            ("ClusterRole", "aos-operator-operator"),
            ("ClusterRole", "aos-operator-agent"),
            ("ClusterRoleBinding", "aos-operator-operator"),
            ("ClusterRoleBinding", "aos-operator-agent"),
            ("Role", "aos-operator-agent-lease"),
            ("RoleBinding", "aos-operator-agent-lease"),
            ("Deployment", "aos-operator-operator"),
            ("DaemonSet", "aos-operator-agent"),
            ("Deployment", "aos-operator-registry"),
            ("Service", "aos-operator-registry"),
            ("Service", "aos-operator-operator-metrics"),
            ("Service", "aos-operator-agent-metrics"),
            ("PersistentVolumeClaim", "aos-operator-registry"),
        ]
    )


def test_namespaced_objects_name_the_release_namespace() -> None:
    for document in documents_of():
        if document.kind not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert document.obj["metadata"]["namespace"] == "aos-system", document.source


def test_every_object_has_the_common_labels() -> None:
    for document in documents_of({"commonLabels": {"team": "edge"}}):
        if document.source.startswith("crds/"):
            continue  # Helm installs crds/ verbatim
        labels = document.obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart"):
            assert key in labels, f"{document.source}: no {key}"
        assert labels["team"] == "edge"


def test_selectors_match_their_pod_templates_and_omit_the_version() -> None:
    documents = documents_of()
    for workload in objects(documents, "Deployment") + objects(documents, "DaemonSet"):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert "app.kubernetes.io/version" not in selector
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    for kind, component in (("Deployment", "registry"), ("Deployment", "operator"), ("DaemonSet", "agent")):
        service = one(documents, "Service", component)
        workload = one(documents, kind, component)
        assert service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        names = {port["name"] for container in pod_spec(workload)["containers"] for port in container.get("ports", ())}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= names


# --- values.schema.json --------------------------------------------------------------------------


@cache
def schema() -> dict[str, Any]:
    return json.loads((CHART_DIR / "values.schema.json").read_text())


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return node


# Options whose value is a Kubernetes object handed to the pod spec as a whole, or a document
# handed to a component as a whole (the agent's node config).
KUBERNETES_TYPED = {"resources", "affinity", "updateStrategy", "nodeConfig"}


def option_paths(node: dict[str, Any] | None = None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every option the schema defines: the paths of its leaves (scalars, lists, maps, Kubernetes objects)."""
    root = schema()
    node = resolve(node or root, root)
    if "properties" not in node or (path and path[-1] in KUBERNETES_TYPED):
        yield path
        return
    for key, child in node["properties"].items():
        yield from option_paths(child, path + (key,))


# Schema nodes that describe Kubernetes types the chart passes through unchanged; the API server
# validates them (and the render test validates them against the Kubernetes schemas).
PASS_THROUGH = {"nodeAffinity", "podAffinity", "podAntiAffinity", "valueFrom", "nodeConfig", "global"}


def test_schema_is_valid_draft7_and_closes_every_object() -> None:
    root = schema()
    jsonschema.Draft7Validator.check_schema(root)

    def walk(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            yield where, node
            for key, child in node.items():
                yield from walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                yield from walk(child, f"{where}/{index}")

    for where, node in walk(root, ""):
        if node.get("type") != "object":
            continue
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{where}: an object with options must reject unknown keys"
        elif isinstance(node.get("additionalProperties"), dict):
            continue  # a map: its keys are data, its values typed
        else:
            assert where.rsplit("/", 1)[-1] in PASS_THROUGH, f"{where}: an open object that is neither a map nor a known pass-through"


def test_schema_and_values_yaml_define_the_same_options() -> None:
    defaults = chart_defaults()
    for path in option_paths():
        if path == ("global",):
            continue
        get_path(defaults, path)  # KeyError: an option without a default in values.yaml

    def leaves(values: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        for key, value in values.items():
            if isinstance(value, dict) and value and path + (key,) not in set(option_paths()):
                yield from leaves(value, path + (key,))
            else:
                yield path + (key,)

    assert set(leaves(defaults)) <= set(option_paths()), "values.yaml has keys the schema does not define"


def test_default_values_satisfy_the_schema() -> None:
    jsonschema.Draft7Validator(schema()).validate(chart_defaults())


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"imagePullSecret": [{"name": "x"}]}, "'imagePullSecret' not allowed"),
        ({"operator": {"logLevl": "debug"}}, "at '/operator': additional properties 'logLevl' not allowed"),
        ({"agent": {"hostPaths": {"runDirectory": "/run/x"}}}, "'runDirectory' not allowed"),
        ({"registry": {"inCluster": {"persistence": {"sizze": "1Gi"}}}}, "'sizze' not allowed"),
        ({"agent": {"tolerations": [{"key": "a", "effects": "NoSchedule"}]}}, "'effects' not allowed"),
        ({"agent": {"resources": {"request": {"cpu": "1"}}}}, "'request' not allowed"),
    ],
)
def test_render_fails_on_a_misspelled_key(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as error:
        render(values)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"agent": {"heartbeatSeconds": "10"}}, "at '/agent/heartbeatSeconds': got string, want integer"),
        ({"agent": {"hostPID": "yes"}}, "at '/agent/hostPID': got string, want boolean"),
        ({"operator": {"watchNamespaces": "team-a"}}, "at '/operator/watchNamespaces': got string, want array"),
        ({"operator": {"logLevel": "trace"}}, "/operator/logLevel"),
        ({"operator": {"securityContext": {"runAsUser": 0}}}, "/operator/securityContext/runAsUser"),
        ({"agent": {"privileged": False}}, "/agent/privileged"),
        ({"image": {"digest": "sha256:1234"}}, "/image/digest"),
        ({"registry": {"inCluster": {"image": {"tag": "latest"}}}}, "/registry/inCluster/image/tag"),
        ({"agent": {"hostPaths": {"dataDir": "var/lib/aos"}}}, "/agent/hostPaths/dataDir"),
        ({"operator": {"podAnnotations": {"a": 1}}}, "/operator/podAnnotations/a"),
    ],
)
def test_render_fails_on_a_wrong_type_or_value(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as error:
        render(values)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"registry": {"inCluster": {"enabled": False}}}, "registry.external.host is required"),
        ({"registry": {"external": {"host": "registry.example.com"}}}, "set registry.inCluster.enabled=false"),
        (
            {"registry": {"inCluster": {"enabled": False}, "external": {"host": "r.example.com", "ca": {"secretName": "a", "configMapName": "b"}}}},
            "set secretName or configMapName, not both",
        ),
        ({"operator": {"serviceAccount": {"create": False}}}, "operator.serviceAccount.name is required"),
    ],
)
def test_render_explains_contradicting_values(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as error:
        render(values)
    assert expected in str(error.value)


def test_the_all_values_file_changes_every_option() -> None:
    defaults, values = chart_defaults(), merged(all_values())
    variants = [merged(scenario_values(name)) for name in SCENARIOS]
    unchanged = [
        path for path in option_paths()
        if path not in FIXED_OPTIONS and all(get_path(variant, path) == get_path(defaults, path) for variant in [values, *variants])
    ]
    assert unchanged == []


def rendered_text(chart: helm_python.Chart, values: dict[str, Any]) -> dict[str, str] | str:
    """The raw rendered templates (no YAML parsing: this runs a few hundred times)."""
    try:
        return chart.render(values, name=chart_manifests.RELEASE_NAME, namespace=chart_manifests.RELEASE_NAMESPACE)
    except (helm_python.HelmValuesError, helm_python.HelmRenderError) as error:
        return f"render refused: {error}"


def test_every_option_changes_what_is_rendered() -> None:
    """Reverting any one option to its default changes the output in some scenario: no option is dead."""
    defaults = chart_defaults()
    scenarios = {name: merged(scenario_values(name)) for name in SCENARIOS}
    dead = []
    with helm_python.Chart.load(CHART_DIR) as chart:
        outputs = {name: rendered_text(chart, values) for name, values in scenarios.items()}
        for path in option_paths():
            if path in FIXED_OPTIONS:
                continue
            default = get_path(defaults, path)
            if not any(
                get_path(values, path) != default and rendered_text(chart, set_path(values, path, default)) != outputs[name]
                for name, values in scenarios.items()
            ):
                dead.append(".".join(path))
    assert dead == [], "options that change nothing in any scenario"


def test_fixed_options_really_are_fixed() -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"agent": {"privileged": False}})


# --- RBAC ---------------------------------------------------------------------------------------

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}
OPERATOR_NAMESPACED = {
    ("aosedge.io", "aosservices"): {"get", "list", "watch", "patch"},
    ("aosedge.io", "aosservices/status"): {"get", "patch"},
    ("aosedge.io", "aosserviceinstances"): {"get", "list", "watch", "create", "patch", "delete"},
    ("aosedge.io", "aosserviceinstances/status"): {"get"},
    ("aosedge.io", "aoslayers"): {"get", "list", "watch", "patch"},
    ("aosedge.io", "aoslayers/status"): {"get", "patch"},
    ("", "configmaps"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
}
OPERATOR_CLUSTER = {
    ("aosedge.io", "aosdevices"): {"get", "list", "watch"},
    ("aosedge.io", "aosdevices/status"): {"patch"},  # a silent device is marked Ready=Unknown
    ("coordination.k8s.io", "leases"): {"list", "watch"},  # the agents' Leases, in whatever namespace
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
AGENT = {
    ("aosedge.io", "aosdevices"): {"get", "list", "watch", "create", "patch", "update"},
    ("aosedge.io", "aosdevices/status"): {"get", "patch", "update"},
    ("aosedge.io", "aosserviceinstances"): {"get", "list", "watch"},
    ("aosedge.io", "aosserviceinstances/status"): {"get", "patch"},
    ("", "nodes"): {"get"},
    ("", "events"): {"create"},  # a used-up traffic limit
}
AGENT_LEASE = {("coordination.k8s.io", "leases"): {"create", "patch"}}  # in the release's namespace only


def peering(resource: str) -> dict[tuple[str, str], set[str]]:
    return {(group, resource): {"get", "list", "watch", "patch"} for group in ("kopf.dev", "zalando.org")}


Permissions = dict[str, dict[tuple[str, str], set[str]]]


def permissions(documents: list[Document]) -> dict[tuple[str, str], Permissions]:
    """What each ServiceAccount may do: scope ('*' for cluster-wide, else a namespace) -> (group, resource) -> verbs."""
    roles = {("ClusterRole", None, obj["metadata"]["name"]): obj for obj in objects(documents, "ClusterRole")}
    roles |= {("Role", obj["metadata"]["namespace"], obj["metadata"]["name"]): obj for obj in objects(documents, "Role")}
    granted: dict[tuple[str, str], Permissions] = defaultdict(lambda: defaultdict(lambda: defaultdict(set)))
    for binding in objects(documents, "ClusterRoleBinding") + objects(documents, "RoleBinding"):
        namespace = binding["metadata"].get("namespace")
        reference = binding["roleRef"]
        role = roles[(reference["kind"], namespace if reference["kind"] == "Role" else None, reference["name"])]
        scope = namespace if binding["kind"] == "RoleBinding" else "*"
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted[(subject["namespace"], subject["name"])][scope][(group, resource)] |= set(rule["verbs"])
    return {account: {scope: dict(rules) for scope, rules in scopes.items()} for account, scopes in granted.items()}


def test_default_rbac_is_exactly_what_the_operator_and_agent_use() -> None:
    granted = permissions(documents_of())
    assert granted == {
        ("aos-system", "aos-operator-operator"): {"*": OPERATOR_NAMESPACED | OPERATOR_CLUSTER},
        ("aos-system", "aos-operator-agent"): {"*": AGENT, "aos-system": AGENT_LEASE},
    }


def test_peering_adds_only_the_cluster_peering_resources() -> None:
    granted = permissions(documents_of({"operator": {"peering": {"enabled": True}}}))
    assert granted[("aos-system", "aos-operator-operator")] == {"*": OPERATOR_NAMESPACED | OPERATOR_CLUSTER | peering("clusterkopfpeerings")}


def test_watched_namespaces_get_roles_and_the_cluster_role_keeps_only_cluster_reads() -> None:
    values = {"operator": {"watchNamespaces": ["team-a", "team-b"], "peering": {"enabled": True}}}
    granted = permissions(documents_of(values))
    namespaced = OPERATOR_NAMESPACED | peering("kopfpeerings")
    assert granted[("aos-system", "aos-operator-operator")] == {"*": OPERATOR_CLUSTER, "team-a": namespaced, "team-b": namespaced}
    assert granted[("aos-system", "aos-operator-agent")] == {"*": AGENT, "aos-system": AGENT_LEASE}


def test_the_agent_never_writes_services_or_instance_specs() -> None:
    for name in SCENARIOS:
        documents = documents_of(scenario_values(name))
        for (_, account), scopes in permissions(documents).items():
            if "agent" not in account:
                continue
            for rules in scopes.values():
                for (group, resource), verbs in rules.items():
                    if resource.startswith("aosservices"):
                        assert not verbs & WRITE_VERBS, f"{name}: agent may {verbs & WRITE_VERBS} {resource}"
                    if resource == "aosserviceinstances":
                        assert not verbs & WRITE_VERBS, f"{name}: agent may {verbs & WRITE_VERBS} instances"


def test_no_wildcards_and_no_secrets_in_any_role() -> None:
    for name in SCENARIOS:
        for role in objects(documents := documents_of(scenario_values(name)), "ClusterRole") + objects(documents, "Role"):
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{name}: {role['metadata']['name']}: wildcard in {field}"
                assert "secrets" not in rule["resources"], f"{name}: {role['metadata']['name']} reads secrets"


# --- pod security ------------------------------------------------------------------------------

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Where a pod spec breaks the Pod Security Standard 'restricted'."""
    problems = []
    context = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} is {kinds}")
    for container in pod.get("initContainers", []) + pod["containers"]:
        security = container.get("securityContext", {})
        name = container["name"]
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if security.get("capabilities", {}).get("drop") != ["ALL"] or security.get("capabilities", {}).get("add"):
            problems.append(f"{name}: capabilities are not drop [ALL]")
        if not (security.get("runAsNonRoot", context.get("runAsNonRoot")) is True):
            problems.append(f"{name}: runAsNonRoot is not true")
        if security.get("runAsUser", context.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = security.get("seccompProfile", context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        if security.get("readOnlyRootFilesystem") is not True:  # beyond 'restricted': our own rule
            problems.append(f"{name}: root filesystem is writable")
        if "resources" not in container:
            problems.append(f"{name}: no resources")
    return problems


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_and_registry_pods_are_restricted(scenario: str) -> None:
    documents = documents_of(scenario_values(scenario))
    for workload in objects(documents, "Deployment"):
        assert restricted_violations(pod_spec(workload)) == [], workload["metadata"]["name"]


def test_only_the_agent_is_privileged() -> None:
    documents = documents_of()
    agent = one(documents, "DaemonSet", "agent")
    pod = pod_spec(agent)
    assert pod["containers"][0]["securityContext"]["privileged"] is True
    assert pod["containers"][0]["securityContext"]["runAsUser"] == 0
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert set(restricted_violations(pod)) >= {"hostNetwork is set", "hostPID is set", "agent: privileged"}
    privileged = [
        workload["metadata"]["name"]
        for workload in objects(documents, "Deployment") + objects(documents, "DaemonSet")
        if any(container.get("securityContext", {}).get("privileged") for container in pod_spec(workload)["containers"])
    ]
    assert privileged == ["aos-operator-agent"]


def test_agent_mounts_the_host_paths_the_contract_names() -> None:
    pod = pod_spec(one(documents_of(), "DaemonSet", "agent"))
    host_paths = {volume["name"]: volume["hostPath"] for volume in pod["volumes"] if "hostPath" in volume}
    mounts = {mount["name"]: mount for mount in pod["containers"][0]["volumeMounts"]}
    assert {name: (host_paths[name]["path"], mounts[name]["mountPath"], mounts[name].get("readOnly", False)) for name in host_paths} == {
        "cgroup": ("/sys/fs/cgroup", "/sys/fs/cgroup", False),
        "run": ("/run/aos", "/run/aos", False),
        "data": ("/var/lib/aos", "/var/lib/aos", False),
        "host-root": ("/", "/host", True),
        # the instance network: named netns must reach the node, the node-wide lock, CNI plugins
        "netns": ("/run/netns", "/run/netns", False),
        "run-lock": ("/run/lock", "/run/lock", False),
        "cni-bin": ("/opt/cni/bin", "/opt/cni/bin", True),
    }
    assert mounts["netns"]["mountPropagation"] == "Bidirectional"
    args = pod["containers"][0]["args"]
    for flag in ("--network-pool=10.231.0.0/16", "--network-prefix=24", "--cni-dir=/usr/lib/cni",
                 "--traffic-uncounted=127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"):
        assert flag in args
    assert args[0] == "agent"
    for flag in ("--base-rootfs=/host", "--run-dir=/run/aos", "--data-dir=/var/lib/aos", "--device=$(NODE_NAME)"):
        assert flag in args
    env = {variable["name"]: variable for variable in pod["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    probe = pod["containers"][0]["livenessProbe"]["exec"]["command"]
    assert probe == ["aosctl", "agent-health", "--run-dir=/run/aos"]
    assert pod["nodeSelector"] == {"aosedge.io/edge": "true"}


def test_agent_without_network_gets_no_network_mounts() -> None:
    pod = pod_spec(one(documents_of({"agent": {"network": {"enabled": False}}}), "DaemonSet", "agent"))
    assert "--no-network" in pod["containers"][0]["args"]
    assert not {"netns", "run-lock", "cni-bin"} & {volume["name"] for volume in pod["volumes"]}


def test_operator_runs_standalone_with_one_replica_and_kopf_liveness() -> None:
    operator = one(documents_of(), "Deployment", "operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    container = pod_spec(operator)["containers"][0]
    assert container["args"][0] == "operator"
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert not any(arg.startswith("--peering") for arg in container["args"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/var/cache/aos-operator", "/tmp"} <= mounts
    assert "--work-dir=/var/cache/aos-operator" in container["args"]


def test_peering_option_ships_crds_a_peering_object_and_the_flag() -> None:
    documents = documents_of({"operator": {"peering": {"enabled": True, "name": "fleet"}}})
    crds = {obj["metadata"]["name"] for obj in objects(documents, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds
    peerings = objects(documents, "ClusterKopfPeering")
    assert [obj["metadata"]["name"] for obj in peerings] == ["fleet"]
    assert "post-install" in peerings[0]["metadata"]["annotations"]["helm.sh/hook"]
    assert documents[-1].obj is peerings[0], "hooks render last"
    operator = one(documents, "Deployment", "operator")
    assert "--peering=fleet" in pod_spec(operator)["containers"][0]["args"]
    assert operator["spec"]["strategy"]["type"] == "RollingUpdate"


def test_registry_flags_follow_the_registry_choice() -> None:
    def args(values: dict[str, Any], component: str) -> list[str]:
        workload = one(documents_of(values), "DaemonSet" if component == "agent" else "Deployment", component)
        return pod_spec(workload)["containers"][0]["args"]

    in_cluster = args({}, "operator")
    assert "--registry=aos-operator-registry.aos-system.svc:5000" in in_cluster
    assert "--registry-insecure" in in_cluster and "--registry-insecure" in args({}, "agent")
    external = scenario_values("all-values")
    for component in ("operator", "agent"):
        flags = args(external, component)
        assert "--registry-auth=/etc/aos/registry-auth/config.json" in flags
        assert "--registry-ca=/etc/aos/registry-ca/ca.crt" in flags
    assert "--registry=registry.example.com:5443/fleet" in args(external, "operator")
    assert not any(flag.startswith("--registry=") for flag in args(external, "agent"))
    pod = pod_spec(one(documents_of(external), "Deployment", "operator"))
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["registry-auth"]["secret"] == {
        "secretName": "fleet-registry-credentials",
        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
    }
    assert volumes["registry-ca"]["secret"]["items"] == [{"key": "root.pem", "path": "ca.crt"}]


def test_admission_policy_confines_the_agent_to_its_node() -> None:
    import celpy

    documents = documents_of({"agent": {"admissionPolicy": {"enabled": True}}})
    policy = objects(documents, "ValidatingAdmissionPolicy")[0]["spec"]
    environment = celpy.Environment()

    def evaluate(expression: str, activation: dict[str, Any]) -> Any:
        program = environment.program(environment.compile(expression))
        return program.evaluate(celpy.json_to_cel(activation))

    def admitted(username: str, node: str | None, resource: str, obj: dict[str, Any]) -> bool:
        extra = {"authentication.kubernetes.io/node-name": [node]} if node else {}
        request = {"userInfo": {"username": username, "extra": extra}, "resource": {"resource": resource}}
        activation: dict[str, Any] = {"request": request, "object": obj}
        if not all(evaluate(condition["expression"], activation) for condition in policy["matchConditions"]):
            return True  # the policy does not apply to this user
        activation["variables"] = {variable["name"]: evaluate(variable["expression"], activation) for variable in policy["variables"]}
        return all(evaluate(validation["expression"], activation) for validation in policy["validations"])

    agent = "system:serviceaccount:aos-system:aos-operator-agent"
    device = {"metadata": {"name": "node-a"}}
    instance = {"metadata": {"name": "i"}, "spec": {"device": "node-a"}}
    assert admitted(agent, "node-a", "aosdevices", device)
    assert not admitted(agent, "node-b", "aosdevices", device)
    assert admitted(agent, "node-a", "aosserviceinstances", instance)
    assert not admitted(agent, "node-b", "aosserviceinstances", instance)
    assert not admitted(agent, None, "aosdevices", device)
    assert admitted("system:serviceaccount:aos-system:aos-operator-operator", None, "aosdevices", device)


# --- NOTES, CRDs, manifests ------------------------------------------------------------------------


def test_notes_tell_how_to_apply_and_check_a_first_service() -> None:
    notes = chart_manifests.render_notes()
    for text in ("kubectl label node", "aosedge.io/edge=true", "kubectl apply -f", "kind: AosService",
                 "kubectl get aossvc", "kubectl get aosinst", "kubectl get aosdev", "aos-operator-registry.aos-system.svc:5000"):
        assert text in notes
    example = notes.split("cat <<'YAML' | kubectl apply -f -\n", 1)[1].split("     YAML\n", 1)[0]
    service = yaml.safe_load("\n".join(line[5:] for line in example.splitlines()))
    custom = CustomResourceSchemas(load_documents(path) [0] for path in sorted((REPO / "crds").glob("*.yaml")))
    assert validation_errors(service, custom) == []


def test_chart_crds_are_the_repository_crds_byte_for_byte() -> None:
    repository = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    chart = {path.name: path.read_bytes() for path in (CHART_DIR / "crds").glob("*.yaml")}
    assert repository, "no CRDs in crds/"
    assert chart == repository, "charts/aos-operator/crds/ differs from crds/: run `make crds`"


def test_install_manifest_is_in_sync_with_the_chart() -> None:
    committed = (REPO / "manifests" / "install.yaml").read_text()
    assert committed == chart_manifests.install_manifest(), "manifests/install.yaml is stale: run `make manifests`"


def test_install_manifest_applies_in_order_and_validates() -> None:
    documents = load_documents(REPO / "manifests" / "install.yaml")
    kinds = [document["kind"] for document in documents]
    assert kinds[0] == "Namespace" and documents[0]["metadata"]["name"] == "aos-system"
    assert documents[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert kinds.index("Deployment") > kinds.index("CustomResourceDefinition")
    assert kinds.index("ClusterRoleBinding") > kinds.index("ServiceAccount")
    custom = CustomResourceSchemas(document for document in documents if document["kind"] == "CustomResourceDefinition")
    assert [error for document in documents for error in validation_errors(document, custom)] == []


def test_write_atomically_leaves_no_partial_file(tmp_path: Any) -> None:
    target = tmp_path / "install.yaml"
    target.write_text("old")
    chart_manifests.write_atomically(target, "new")
    assert target.read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["install.yaml"]


def test_app_version_matches_the_package_version() -> None:
    from aos_operator import __version__

    with helm_python.Chart.load(CHART_DIR) as chart:
        assert chart.metadata["appVersion"] == __version__


@pytest.mark.parametrize("values_file", [None, "all"], ids=["defaults", "all-values"])
def test_every_flag_the_chart_passes_is_one_aosctl_accepts(values_file: str | None) -> None:
    """The chart and the CLI must not drift apart: parse the rendered args with aosctl's own parser."""
    from aos_operator.cli import _parser

    documents = documents_of() if values_file is None else documents_of(all_values())
    checked = 0
    for kind, component in (("Deployment", "operator"), ("DaemonSet", "agent")):
        container = pod_spec(one(documents, kind, component))["containers"][0]
        args = [arg.replace("$(NODE_NAME)", "node-1") for arg in container["args"]]
        parsed = _parser().parse_args(args)  # exits (SystemExit) on an unknown flag
        assert parsed.command == component
        probe = container.get("livenessProbe", {}).get("exec", {}).get("command")
        if probe:
            assert _parser().parse_args(probe[1:]).command == "agent-health"
        checked += 1
    assert checked == 2
