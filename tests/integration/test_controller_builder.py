"""The operator's builds against the real registry: a ConfigMap-like file source, and the layer of an
existing image reused by digest (mounted, not uploaded again)."""

from __future__ import annotations

import json
from pathlib import Path

from aos_operator.api.models import AosServiceSpec
from aos_operator.controller import builder
from aos_operator.controller.settings import OperatorSettings
from aos_operator.controller.source import SourceFile
from aos_operator.image import open_package
from aos_operator.packaging import build_service, push_package, registry_client
from aos_operator.service import load_service, parse_config_data
from aos_operator.service.loader import select_service
from registry_support import RegistryServer
from tests.conftest import EXAMPLES

V2_CONFIG = {
    "schemaVersion": 2,
    "items": [{
        "identity": {"codename": "greeter", "type": "service"},
        "version": "2.0.0",
        "images": [{"archInfo": {"architecture": "amd64"}, "cmd": "python3 -u /usr/bin/services/hello_world.py"}],
        "configuration": {"quotas": {"ramLimit": "48MiB"}},
    }],
}


def settings(registry: RegistryServer, tmp_path: Path) -> OperatorSettings:
    return OperatorSettings(registry=f"{registry.host}/aos", work_dir=tmp_path / "work", registry_insecure=True)


def test_image_source_reuses_the_layer_by_digest(registry: RegistryServer, tmp_path: Path) -> None:
    client = registry_client(insecure=True)
    service, result = load_service(EXAMPLES / "hello-world")
    built = build_service(service, EXAMPLES / "hello-world" / "src", oci_layout=tmp_path / "origin")
    origin = f"{registry.host}/team/base:1"
    origin_digest = push_package(client, open_package(tmp_path / "origin"), origin)

    spec = AosServiceSpec.model_validate(
        {"config": V2_CONFIG, "source": {"image": {"reference": f"{registry.host}/team/base@{origin_digest}"}}}
    )
    description = select_service(parse_config_data(spec.config, "test"))
    source = builder.gather_source(spec, "ns", lambda name, namespace: None, client)
    repository = builder.repository_for(settings(registry, tmp_path), "ns", "greeter")
    before = client.stats.snapshot()
    (image,) = builder.build_and_push(settings(registry, tmp_path), client, description, source, repository)
    after = client.stats.snapshot()

    assert image.ref == f"{registry.host}/aos/ns/greeter:2.0.0@{image.digest}"
    manifest = json.loads(client.pull_manifest(image.ref).data)
    assert manifest["layers"] == [{"mediaType": built.layer.media_type, "digest": built.layer.digest, "size": built.layer.size}]
    assert after["blobs_mounted"] - before["blobs_mounted"] == 1, "the layer is mounted from its repository"
    uploaded = after["blob_bytes_uploaded"] - before["blob_bytes_uploaded"]
    assert uploaded < built.layer.size, "only the two small config blobs are uploaded"
    config = json.loads(client.pull_manifest(image.ref).data)["config"]
    pulled = tmp_path / "config.json"
    client.pull_blob(repository, config["digest"], config["size"], pulled)
    image_config = json.loads(pulled.read_text())
    assert image_config["rootfs"]["diff_ids"] == [built.diff_id]
    assert image_config["config"]["Cmd"] == ["python3", "-u", "/usr/bin/services/hello_world.py"]
    # the source's identity is in the content digest: another origin digest means another build
    assert builder.source_digest(spec, source, repository).startswith("sha256:")
    other = builder.Source(image=source.image, image_manifest=source.image_manifest + b" ")
    assert builder.source_digest(spec, other, repository) != builder.source_digest(spec, source, repository)


def test_file_source_builds_the_same_package_as_aosctl_build(registry: RegistryServer, tmp_path: Path) -> None:
    client = registry_client(insecure=True)
    service, _ = load_service(EXAMPLES / "hello-world")
    files = tuple(
        SourceFile(str(path.relative_to(EXAMPLES / "hello-world" / "src")), path.stat().st_mode & 0o777, path.read_bytes())
        for path in sorted((EXAMPLES / "hello-world" / "src").rglob("*")) if path.is_file()
    )
    repository = f"{registry.host}/aos/ns/hello"
    (image,) = builder.build_and_push(settings(registry, tmp_path), client, service, builder.Source(files=files), repository)
    expected = build_service(service, EXAMPLES / "hello-world" / "src", oci_layout=tmp_path / "layout", source_date_epoch=0)
    assert image.digest == expected.manifest_digest, "the operator's package is the one aosctl build makes"
