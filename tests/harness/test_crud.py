"""CRUD through the sync `kubernetes` client: stamping, replace, patch types, status isolation, errors."""

from __future__ import annotations

import kubernetes

from tests.harness import KubeEmulator
from tests.harness.conftest import GROUP, VERSION, api_error, off_loop, service

PLURAL = "aosservices"
JSON_PATCH = "application/json-patch+json"


async def create_service(custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str = "svc",
                         **spec: object) -> dict:
    return await off_loop(custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                          service(name, **spec))


async def test_create_returns_the_stamped_object(kube: KubeEmulator, custom, namespace) -> None:
    before = kube.revision
    body = service("svc")
    body["status"] = {"phase": "ignored on create"}
    created = await off_loop(custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, body)
    meta = created["metadata"]
    assert meta["namespace"] == namespace  # from the URL, the body had none
    assert int(meta["resourceVersion"]) == before + 1
    assert meta["generation"] == 1
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert "status" not in created  # a CRD with a status subresource drops status on create
    fetched = await off_loop(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc")
    assert fetched == created


async def test_resource_versions_are_one_global_counter(kube: KubeEmulator, custom, core, namespace) -> None:
    first = await create_service(custom, namespace, "a")
    config_map = await off_loop(core.create_namespaced_config_map, namespace,
                                {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    second = await create_service(custom, namespace, "b")
    versions = [int(first["metadata"]["resourceVersion"]), int(config_map.metadata.resource_version),
                int(second["metadata"]["resourceVersion"])]
    assert versions == sorted(versions) and len(set(versions)) == 3


async def test_duplicate_create_is_409_already_exists(custom, namespace) -> None:
    await create_service(custom, namespace)
    error = await api_error(custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, service("svc"))
    assert error.status == 409 and '"reason": "AlreadyExists"' in error.body.replace('":"', '": "')


async def test_missing_object_is_404_status(custom, namespace) -> None:
    error = await api_error(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "nope")
    assert error.status == 404
    assert '"kind": "Status"' in error.body.replace('":"', '": "') and "nope" in error.body


async def test_creating_in_a_missing_namespace_is_404(custom) -> None:
    error = await api_error(custom.create_namespaced_custom_object, GROUP, VERSION, "absent", PLURAL, service("s"))
    assert error.status == 404 and "absent" in error.body


async def test_generate_name(core, namespace) -> None:
    created = await off_loop(core.create_namespaced_config_map, namespace, {"metadata": {"generateName": "cm-"}})
    assert created.metadata.name.startswith("cm-") and len(created.metadata.name) == len("cm-") + 5


async def test_replace_bumps_generation_and_rejects_stale_versions(custom, namespace) -> None:
    created = await create_service(custom, namespace)
    created["spec"]["config"] = {"x": 2}
    replaced = await off_loop(custom.replace_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc", created)
    assert replaced["spec"]["config"] == {"x": 2}
    assert replaced["metadata"]["generation"] == 2
    assert int(replaced["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    # `created` still carries the old resourceVersion: a stale write is a 409 Conflict.
    error = await api_error(custom.replace_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc", created)
    assert error.status == 409 and "the object has been modified" in error.body


async def test_replace_of_a_custom_resource_needs_a_resource_version(custom, namespace) -> None:
    created = await create_service(custom, namespace)
    del created["metadata"]["resourceVersion"]
    error = await api_error(custom.replace_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc", created)
    assert error.status == 422


async def test_replace_status_changes_only_status(custom, namespace) -> None:
    created = await create_service(custom, namespace)
    created["status"] = {"phase": "Ready"}
    created["spec"]["config"] = {"x": "ignored"}
    replaced = await off_loop(custom.replace_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL,
                              "svc", created)
    assert replaced["status"] == {"phase": "Ready"}
    assert replaced["spec"]["config"] == {"x": 1}
    assert replaced["metadata"]["generation"] == 1


async def test_merge_patch_and_status_isolation(custom, namespace) -> None:
    await create_service(custom, namespace, suspend=False)
    # The main resource ignores .status; spec changes bump the generation.
    patched = await off_loop(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc",
                             {"spec": {"suspend": True}, "status": {"phase": "ignored"}})
    assert patched["spec"]["suspend"] is True and "status" not in patched
    assert patched["metadata"]["generation"] == 2
    # The status subresource changes only .status and never the generation.
    status = await off_loop(custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, "svc",
                            {"status": {"phase": "Ready"}, "spec": {"suspend": False},
                             "metadata": {"labels": {"ignored": "yes"}}})
    assert status["status"] == {"phase": "Ready"}
    assert status["spec"]["suspend"] is True and "labels" not in status["metadata"]
    assert status["metadata"]["generation"] == 2
    # Metadata-only changes keep the generation too.
    labelled = await off_loop(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc",
                              {"metadata": {"labels": {"team": "a"}}})
    assert labelled["metadata"]["labels"] == {"team": "a"} and labelled["metadata"]["generation"] == 2
    assert int(labelled["metadata"]["resourceVersion"]) > int(status["metadata"]["resourceVersion"])


async def test_merge_patch_null_deletes_a_key(custom, namespace) -> None:
    await create_service(custom, namespace, suspend=True)
    patched = await off_loop(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc",
                             {"spec": {"suspend": None}})
    assert "suspend" not in patched["spec"]


async def test_noop_patch_keeps_the_resource_version(custom, namespace) -> None:
    created = await create_service(custom, namespace)
    patched = await off_loop(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc",
                             {"spec": {"config": {"x": 1}}})
    assert patched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_json_patch_with_a_resource_version_test(custom, namespace) -> None:
    created = await create_service(custom, namespace)
    version = created["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": version},
           {"op": "add", "path": "/metadata/finalizers", "value": ["aosedge.io/cleanup"]}]
    # kubernetes 37 sends merge-patch for custom objects unless told: a JSON patch needs _content_type.
    patched = await off_loop(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc", ops,
                             _content_type=JSON_PATCH)
    assert patched["metadata"]["finalizers"] == ["aosedge.io/cleanup"]
    # The same ops again: the version moved on, the `test` fails, and nothing changes (422, as kopf expects).
    error = await api_error(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc", ops,
                            _content_type=JSON_PATCH)
    assert error.status == 422
    current = await off_loop(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc")
    assert current["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]


async def test_merge_patch_with_a_stale_resource_version_is_a_conflict(custom, namespace) -> None:
    created = await create_service(custom, namespace)
    await off_loop(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc",
                   {"spec": {"suspend": True}})
    error = await api_error(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc",
                            {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
                             "spec": {"suspend": False}})
    assert error.status == 409


async def test_strategic_merge_patch_is_415_on_custom_resources(custom, namespace) -> None:
    await create_service(custom, namespace)
    error = await api_error(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc",
                            {"spec": {"suspend": True}}, _content_type="application/strategic-merge-patch+json")
    assert error.status == 415


async def test_a_list_sent_as_merge_patch_is_400(custom, namespace) -> None:
    await create_service(custom, namespace)
    error = await api_error(custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "svc",
                            [{"op": "remove", "path": "/spec/config"}])
    assert error.status == 400


async def test_strategic_merge_patch_works_as_merge_on_builtins(kube: KubeEmulator, core, namespace) -> None:
    await off_loop(core.create_namespaced_config_map, namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    # kubernetes 37 sends a dict patch of a built-in resource as strategic-merge.
    patched = await off_loop(core.patch_namespaced_config_map, "cm", namespace, {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}
    patch_request = list(kube["patch"])[-1]
    assert patch_request.headers["Content-Type"] == "application/strategic-merge-patch+json"


async def test_replace_of_a_builtin(core, namespace) -> None:
    created = await off_loop(core.create_namespaced_config_map, namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    created.data = {"z": "9"}
    replaced = await off_loop(core.replace_namespaced_config_map, "cm", namespace, created)
    assert replaced.data == {"z": "9"}


async def test_cluster_scoped_device_and_status(custom) -> None:
    device = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosDevice", "metadata": {"name": "dev-1"}, "spec": {}}
    created = await off_loop(custom.create_cluster_custom_object, GROUP, VERSION, "aosdevices", device)
    assert "namespace" not in created["metadata"]
    status = await off_loop(custom.patch_cluster_custom_object_status, GROUP, VERSION, "aosdevices", "dev-1",
                            {"status": {"architecture": "arm64"}})
    assert status["status"] == {"architecture": "arm64"}


async def test_lists_carry_kind_api_version_and_resource_version(kube: KubeEmulator, custom, core, namespace) -> None:
    await create_service(custom, namespace, "a")
    await create_service(custom, namespace, "b")
    listing = await off_loop(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
    assert listing["kind"] == "AosServiceList" and listing["apiVersion"] == f"{GROUP}/{VERSION}"
    assert listing["metadata"]["resourceVersion"] == str(kube.revision)
    assert [item["metadata"]["name"] for item in listing["items"]] == ["a", "b"]
    namespaces = await off_loop(core.list_namespace)
    assert {"default", namespace} <= {item.metadata.name for item in namespaces.items}


async def test_list_pagination(custom, namespace) -> None:
    for index in range(5):
        await create_service(custom, namespace, f"s{index}")
    names, token = [], None
    while True:
        page = await off_loop(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                              limit=2, _continue=token)
        names += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert names == ["s0", "s1", "s2", "s3", "s4"]


async def test_crds_are_served_as_objects_and_in_discovery(core, api_client) -> None:
    crds = await off_loop(kubernetes.client.ApiextensionsV1Api(api_client).list_custom_resource_definition)
    assert {crd.metadata.name for crd in crds.items} == {
        "aosservices.aosedge.io", "aosdevices.aosedge.io", "aosserviceinstances.aosedge.io"}
    resources = await off_loop(kubernetes.client.CustomObjectsApi(api_client).get_api_resources, GROUP, VERSION)
    by_name = {resource.name: resource for resource in resources.resources}
    assert by_name["aosdevices"].namespaced is False and by_name["aosservices"].namespaced is True
    assert "aosservices/status" in by_name and by_name["aosservices"].short_names == ["aossvc"]


async def test_seeding_helpers(kube: KubeEmulator) -> None:
    node = kube.create_node("node-1", {"aosedge.io/runner": "runc"})
    assert node["metadata"]["labels"]["aosedge.io/runner"] == "runc" and node["metadata"]["resourceVersion"]
    assert kube.get("nodes", None, "node-1") == node
    assert [obj["metadata"]["name"] for obj in kube.list("nodes", label_selector="aosedge.io/runner")] == ["node-1"]
