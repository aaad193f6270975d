"""Credentials from docker config.json and Kubernetes image pull secrets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from aos_operator.errors import InputError
from aos_operator.registry.credentials import Credentials, DockerConfig


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CONFIG = {
    "auths": {
        "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
        "registry.example.com:5000": {"username": "alice", "password": "pa:ss"},
        "http://plain.example.org/v2/": {"auth": b64("bob:secret:with:colons")},
        "helper.example.com": {},
    },
    "credsStore": "desktop",
}


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("docker.io", Credentials("hubuser", "hubpass")),
        ("index.docker.io", Credentials("hubuser", "hubpass")),
        ("registry-1.docker.io", Credentials("hubuser", "hubpass")),
        ("registry.example.com:5000", Credentials("alice", "pa:ss")),
        ("REGISTRY.example.com:5000", Credentials("alice", "pa:ss")),
        ("plain.example.org", Credentials("bob", "secret:with:colons")),
        ("registry.example.com", None),  # another port is another registry
        ("helper.example.com", None),  # held by a credential helper: not ours to run
        ("unknown.example.net", None),
    ],
)
def test_docker_config_host_matching(registry: str, expected: Credentials | None) -> None:
    assert DockerConfig.from_json(CONFIG, "config.json").credentials_for(registry) == expected


def test_from_file_explicit_default_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    assert DockerConfig.from_file(config).credentials_for("docker.io") == Credentials("hubuser", "hubpass")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert DockerConfig.from_file().credentials_for("registry.example.com:5000") == Credentials("alice", "pa:ss")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    assert DockerConfig.from_file().credentials_for("docker.io") is None  # no default file: anonymous
    with pytest.raises(InputError, match="nowhere.json: docker config file not found"):
        DockerConfig.from_file(tmp_path / "nowhere.json")


def test_pull_secret_dockerconfigjson_and_legacy_dockercfg() -> None:
    secret = {".dockerconfigjson": b64(json.dumps(CONFIG))}
    assert DockerConfig.from_pull_secret(secret).credentials_for("docker.io") == Credentials("hubuser", "hubpass")
    legacy = {".dockercfg": b64(json.dumps({"registry.example.com:5000": {"auth": b64("old:style")}}))}
    assert DockerConfig.from_pull_secret(legacy).credentials_for("registry.example.com:5000") == Credentials(
        "old", "style"
    )


def test_credentials_never_show_the_password() -> None:
    assert "pa:ss" not in repr(Credentials("alice", "pa:ss"))


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"token": "x"}, "has no .dockerconfigjson"),
        ({".dockerconfigjson": "%%%"}, r"data\[.dockerconfigjson\]: not valid base64"),
        ({".dockerconfigjson": b64("{not json")}, "invalid JSON at line 1"),
        ({".dockerconfigjson": b64("[]")}, "expected a JSON object"),
        (
            {".dockerconfigjson": b64(json.dumps({"auths": {"h.io": {"auth": b64("nocolon")}}}))},
            r"auths.h.io.auth: decodes to no",
        ),
        ({".dockerconfigjson": b64(json.dumps({"auths": {"h.io": "x"}}))}, "auths.h.io: expected an object"),
        ({".dockerconfigjson": b64(json.dumps({"auths": []}))}, "'auths' must be an object"),
    ],
)
def test_bad_pull_secrets_name_the_key_and_field(data: dict[str, str], complaint: str) -> None:
    with pytest.raises(InputError, match=complaint) as caught:
        DockerConfig.from_pull_secret(data, name="secret aos/pull")
    assert str(caught.value).startswith("secret aos/pull")


def test_bad_config_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"auths": {"h.io": {"auth": 5}}}')
    with pytest.raises(InputError, match=rf"{config}: auths.h.io.auth: expected a base64 string"):
        DockerConfig.from_file(config)
