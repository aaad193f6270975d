"""Authentication against the real registry: htpasswd (Basic) and token (Bearer) auth."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from registry_support import OCI_MANIFEST, RegistryServer, TokenServer, htpasswd_auth, make_package

from aos_operator.errors import RegistryError
from aos_operator.registry import Credentials, DockerConfig, RegistryClient


@pytest.fixture
def basic_registry(start_registry_server, tmp_path: Path) -> RegistryServer:
    return start_registry_server("basic", auth=htpasswd_auth(tmp_path / "auth", {"alice": "wonderland"}))


@pytest.fixture
def token_registry(start_registry_server, token_server: TokenServer) -> RegistryServer:
    return start_registry_server("token", auth=token_server.auth_config())


def test_basic_auth_push_and_pull(basic_registry: RegistryServer, tmp_path: Path) -> None:
    package = make_package()
    reference = f"{basic_registry.host}/aos/private:v1"
    with RegistryClient(credentials=Credentials("alice", "wonderland")) as client:
        assert client.push(reference, package.manifest, OCI_MANIFEST, package.sources()) == package.digest
        client.pull(reference, tmp_path / "pkg")
    assert (tmp_path / "pkg" / "manifest.json").read_bytes() == package.manifest


def test_basic_auth_without_credentials_says_what_to_do(basic_registry: RegistryServer) -> None:
    reference = f"{basic_registry.host}/aos/private:v1"
    with RegistryClient() as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(reference)
    message = str(caught.value)
    assert reference in message and "401" in message and "anonymous" in message
    assert f"give credentials for {basic_registry.host}" in message


def test_basic_auth_with_wrong_password_names_the_user(basic_registry: RegistryServer) -> None:
    package = make_package()
    reference = f"{basic_registry.host}/aos/private:v1"
    with RegistryClient(credentials=Credentials("alice", "wrong")) as client, pytest.raises(RegistryError) as caught:
        client.push(reference, package.manifest, OCI_MANIFEST, package.sources())
    assert "user 'alice'" in str(caught.value) and "401" in str(caught.value)


def test_credentials_from_docker_config_file(basic_registry: RegistryServer, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"alice:wonderland").decode()
    config.write_text(
        json.dumps({"auths": {f"http://{basic_registry.host}/v1/": {"auth": auth}}, "credsStore": "desktop"})
    )
    package = make_package()
    with RegistryClient(credentials=DockerConfig.from_file(config)) as client:
        assert (
            client.push(f"{basic_registry.host}/aos/cfg:v1", package.manifest, OCI_MANIFEST, package.sources())
            == package.digest
        )


def test_credentials_from_kubernetes_pull_secret(basic_registry: RegistryServer) -> None:
    document = {"auths": {basic_registry.host: {"username": "alice", "password": "wonderland"}}}
    secret_data = {".dockerconfigjson": base64.b64encode(json.dumps(document).encode()).decode()}
    package = make_package()
    with RegistryClient(credentials=DockerConfig.from_pull_secret(secret_data)) as client:
        client.push(f"{basic_registry.host}/aos/k8s:v1", package.manifest, OCI_MANIFEST, package.sources())
        assert client.pull_manifest(f"{basic_registry.host}/aos/k8s@{package.digest}").data == package.manifest


def test_token_auth_push_caches_one_token_per_scope(
    token_registry: RegistryServer, token_server: TokenServer, tmp_path: Path
) -> None:
    package = make_package(layer_sizes=(10_000, 20_000, 30_000))
    reference = f"{token_registry.host}/aos/tok:v1"
    with RegistryClient(credentials=Credentials("pusher", "push-secret")) as client:
        assert client.push(reference, package.manifest, OCI_MANIFEST, package.sources()) == package.digest
        client.pull(reference, tmp_path / "pkg")
    push_scope = ["repository:aos/tok:pull,push"]
    push_tokens = [request for request in token_server.requests if request["scopes"] == push_scope]
    assert len(push_tokens) == 1  # 5 blobs and a manifest, one token
    assert push_tokens[0]["user"] == "pusher"
    assert push_tokens[0]["granted"] == [{"type": "repository", "name": "aos/tok", "actions": ["pull", "push"]}]
    pull_tokens = [request for request in token_server.requests if request["scopes"] == ["repository:aos/tok:pull"]]
    assert len(pull_tokens) == 1
    assert (tmp_path / "pkg" / "manifest.json").read_bytes() == package.manifest


def test_token_auth_anonymous_pull_allowed_push_denied(
    token_registry: RegistryServer, token_server: TokenServer
) -> None:
    package = make_package()
    reference = f"{token_registry.host}/aos/public:v1"
    with RegistryClient(credentials=Credentials("pusher", "push-secret")) as client:
        client.push(reference, package.manifest, OCI_MANIFEST, package.sources())
    with RegistryClient() as anonymous:
        assert anonymous.pull_manifest(reference).data == package.manifest
        assert any(request["user"] is None and request["granted"] for request in token_server.requests)
        with pytest.raises(RegistryError) as caught:
            anonymous.push(f"{token_registry.host}/aos/public:v2", package.manifest, OCI_MANIFEST, package.sources())
    message = str(caught.value)
    assert f"{token_registry.host}/aos/public" in message and "anonymous" in message and "401" in message


def test_token_service_refusing_credentials_is_reported(
    token_registry: RegistryServer, token_server: TokenServer
) -> None:
    with RegistryClient(credentials=Credentials("pusher", "nope")) as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{token_registry.host}/aos/tok:v1")
    message = str(caught.value)
    assert token_server.realm in message and "user 'pusher'" in message


def test_token_auth_cross_repository_mount_asks_for_both_scopes(
    token_registry: RegistryServer, token_server: TokenServer
) -> None:
    package = make_package(layer_sizes=(15_000,))
    with RegistryClient(credentials=Credentials("pusher", "push-secret")) as client:
        client.push(f"{token_registry.host}/aos/origin:v1", package.manifest, OCI_MANIFEST, package.sources())
    with RegistryClient(credentials=Credentials("pusher", "push-secret")) as client:
        client.push(
            f"{token_registry.host}/aos/mirror:v1",
            package.manifest,
            OCI_MANIFEST,
            package.sources(),
            mount_from=["aos/origin"],
        )
        assert client.stats.blobs_mounted == len(package.blobs)
        assert client.stats.blob_bytes_uploaded == 0
    assert any(
        set(request["scopes"]) == {"repository:aos/mirror:pull,push", "repository:aos/origin:pull"}
        for request in token_server.requests
    )
