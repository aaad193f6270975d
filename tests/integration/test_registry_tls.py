"""The registry behind its own TLS (certificate from a CA made in the test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_support import OCI_MANIFEST, CertificateAuthority, htpasswd_auth, make_package

from aos_operator.errors import RegistryError
from aos_operator.registry import Credentials, RegistryClient


@pytest.fixture
def tls_registry(start_registry_server, certificate_authority: CertificateAuthority, tmp_path: Path):
    return start_registry_server(
        "tls", tls=certificate_authority, auth=htpasswd_auth(tmp_path / "auth", {"bob": "builder"})
    )


def test_push_and_pull_over_tls_with_custom_ca(
    tls_registry, certificate_authority: CertificateAuthority, tmp_path: Path
) -> None:
    package = make_package(layer_sizes=(60_000,))
    with RegistryClient(ca_file=certificate_authority.ca_file, credentials=Credentials("bob", "builder")) as client:
        digest = client.push(f"{tls_registry.host}/aos/secure:v1", package.manifest, OCI_MANIFEST, package.sources())
        client.pull(f"localhost:{tls_registry.port}/aos/secure@{digest}", tmp_path / "pkg")
        assert client.transport.url(tls_registry.host, "/v2/").startswith("https://")
    assert (tmp_path / "pkg" / "manifest.json").read_bytes() == package.manifest


def test_untrusted_certificate_is_an_error_not_a_downgrade(tls_registry) -> None:
    with RegistryClient(credentials=Credentials("bob", "builder")) as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{tls_registry.host}/aos/secure:v1")
    message = str(caught.value)
    assert "TLS certificate" in message and "not trusted" in message and "ca_file" in message
    assert f"{tls_registry.host}/aos/secure:v1" in message


def test_missing_ca_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="CA file .*missing.pem does not exist"):
        RegistryClient(ca_file=tmp_path / "missing.pem")
