"""The operator's Aos layers against the real registry: an AosLayer built from ConfigMap files or
taken from an image's first layer, pushed to its own repository; a service package that lists it
in layers[1..], byte for byte the package `aosctl build --layer` makes of the same files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from aos_operator.api.models import AosLayerSpec
from aos_operator.controller import builder, layers
from aos_operator.controller.settings import OperatorSettings
from aos_operator.controller.source import SourceFile
from aos_operator.image import open_package
from aos_operator.packaging import build_service, load_local_layer, order_layers, push_package, registry_client
from aos_operator.image.store import BlobStore
from aos_operator.service import load_service
from registry_support import RegistryServer
from tests.conftest import EXAMPLES

MODULE = "VERSION = '1.2'\n"
LAYERS_ENTRY = "configuration:\n  layers:\n    - uid: pylibs\n      minVersion: 1.0.0\n"


def settings(registry: RegistryServer, tmp_path: Path) -> OperatorSettings:
    return OperatorSettings(registry=f"{registry.host}/aos", work_dir=tmp_path / "work", registry_insecure=True)


def config_maps(name: str, namespace: str) -> dict[str, Any] | None:
    return {"data": {"module.py": MODULE}} if (name, namespace) == ("pylibs-files", "ns") else None


def layer_spec(**source: Any) -> AosLayerSpec:
    return AosLayerSpec.model_validate({"uid": "pylibs", "version": "1.2.0", "source": source or {"configMaps": [
        {"name": "pylibs-files", "items": [{"key": "module.py", "path": "usr/lib/pylibs/module.py"}]}]}})


def view(status: dict[str, Any], name: str = "pylibs") -> layers.LayerView:
    found = layers.LayerView.from_body({"metadata": {"namespace": "ns", "name": name}, "status": status})
    assert found is not None
    return found


def layered_service(tmp_path: Path) -> Path:
    copy = tmp_path / "service"
    shutil.copytree(EXAMPLES / "hello-world", copy)
    config = copy / "meta" / "config.yaml"
    config.write_text(config.read_text().replace("configuration:\n", LAYERS_ENTRY, 1))
    return copy


def test_the_operator_package_with_a_layer_is_the_one_aosctl_build_makes(registry: RegistryServer, tmp_path: Path) -> None:
    client = registry_client(insecure=True)
    status = layers.build_and_push(settings(registry, tmp_path), client, layer_spec(), "ns", config_maps)
    assert status["ref"].startswith(f"{registry.host}/aos/ns/layers/pylibs:1.2.0@sha256:")
    by_tag = status["ref"].split("@", 1)[0]
    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{by_tag}"],
                               capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Layers"] == [status["digest"]]

    service_dir = layered_service(tmp_path)
    service, _ = load_service(service_dir)
    source = service_dir / "src"
    files = tuple(SourceFile(str(path.relative_to(source)), path.stat().st_mode & 0o777, path.read_bytes())
                  for path in sorted(source.rglob("*")) if path.is_file())
    repository = f"{registry.host}/aos/ns/hello"
    before = client.stats.snapshot()
    (image,) = builder.build_and_push(settings(registry, tmp_path), client, service, builder.Source(files=files),
                                      repository, [view(status)])
    after = client.stats.snapshot()
    assert after["blobs_mounted"] - before["blobs_mounted"] >= 1, "the layer blob is mounted from its repository"

    # the same files as a local layer directory, built by aosctl's path
    (tmp_path / "layer" / "src" / "usr" / "lib" / "pylibs").mkdir(parents=True)
    (tmp_path / "layer" / "src" / "usr" / "lib" / "pylibs" / "module.py").write_text(MODULE)
    (tmp_path / "layer" / "layer.yaml").write_text("uid: pylibs\nversion: 1.2.0\n")
    local = load_local_layer(tmp_path / "layer", BlobStore(tmp_path / "blobs"))
    expected = build_service(service, source, oci_layout=tmp_path / "layout", source_date_epoch=0,
                             layers=order_layers(service, [("layer", local)]))
    assert image.digest == expected.manifest_digest

    pulled = tmp_path / "pulled"
    client.pull(image.ref, pulled)
    package = open_package(pulled)
    package.verify()
    assert len(package.image_config()["rootfs"]["diff_ids"]) == 2
    assert json.loads(package.manifest_bytes)["layers"][1]["digest"] == status["digest"]
    client.close()


def test_a_layer_from_an_image_reuses_its_first_layer(registry: RegistryServer, tmp_path: Path) -> None:
    client = registry_client(insecure=True)
    service, _ = load_service(EXAMPLES / "hello-world")
    built = build_service(service, EXAMPLES / "hello-world" / "src", oci_layout=tmp_path / "origin")
    origin_digest = push_package(client, open_package(tmp_path / "origin"), f"{registry.host}/team/base:1")
    before = client.stats.snapshot()
    status = layers.build_and_push(settings(registry, tmp_path), client,
                                   layer_spec(image={"reference": f"{registry.host}/team/base@{origin_digest}"}), "ns",
                                   config_maps)
    after = client.stats.snapshot()
    assert (status["digest"], status["diffId"], status["size"]) == (built.layer.digest, built.diff_id, built.layer.size)
    assert after["blobs_mounted"] - before["blobs_mounted"] == 1
    manifest = json.loads(client.pull_manifest(status["ref"]).data)
    assert manifest["layers"][0]["mediaType"] == "application/vnd.aos.image.layer.v1.tar+gzip"
    assert manifest["layers"][0]["annotations"]["io.aosedge.layer.version"] == "1.2.0"
    client.close()
