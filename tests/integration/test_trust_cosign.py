"""Cross-checks with the real cosign CLI (built from its Go module by tools/cosign.sh): cosign
accepts what we sign, we accept what cosign signs, and each reads the other's key files.

cosign runs with no network but the loopback registry: outbound requests go to a dead proxy
on 127.0.0.1 (the registry is exempt through NO_PROXY), the transparency log is off.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from registry_support import RegistryServer, free_port

from aos_operator.errors import SignatureError
from aos_operator.registry import RegistryClient
from aos_operator.trust.cosign import payload
from aos_operator.trust.keys import encrypted_pem, generate_signing_key, load_signing_key, load_verification_keys
from aos_operator.trust.store import attach_signature, fetch_signatures, verify_package
from aos_operator.trust.verify import VerificationPolicy

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def cosign_binary() -> Path:
    """The pinned cosign: from make test (AOS_COSIGN), else built now (minutes, once per machine)."""
    given = os.environ.get("AOS_COSIGN")
    if given:
        return Path(given)
    built = subprocess.run(["sh", str(REPO / "tools" / "cosign.sh")], capture_output=True, text=True, check=False)
    assert built.returncode == 0, f"cosign could not be built:\n{built.stderr[-3000:]}"
    return Path(built.stdout.strip())


@pytest.fixture
def cosign(cosign_binary: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    home = tmp_path / "cosign-home"
    home.mkdir()
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "COSIGN_PASSWORD": PASSWORD,
        "HTTPS_PROXY": dead_proxy, "HTTP_PROXY": dead_proxy, "NO_PROXY": "127.0.0.1,localhost",
        "TUF_ROOT": str(home / "tuf"),
        "COSIGN_EXPERIMENTAL": "0",
    }

    def run(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        process = subprocess.run([str(cosign_binary), *arguments], capture_output=True, text=True, env=env,
                                 cwd=tmp_path, timeout=120, check=False)
        if check:
            assert process.returncode == 0, f"cosign {' '.join(arguments)}:\n{process.stdout}\n{process.stderr}"
        return process

    return run


def push_package(client: RegistryClient, make_package: Callable[..., Path], reference: str, marker: str) -> tuple[str, int]:
    package = make_package({"app/main.py": f"print({marker!r})\n"}, cmd=["/usr/bin/python3", "/app/main.py"])
    return client.push_package(reference, package), (package / "manifest.json").stat().st_size


REGISTRY_FLAGS = ("--allow-http-registry", "--allow-insecure-registry")


def test_cosign_verifies_what_we_sign(registry: RegistryServer, make_package: Callable[..., Path],
                                      cosign: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    key = generate_signing_key()
    (tmp_path / "ours.pub").write_bytes(key.public.pem())
    stranger = generate_signing_key()
    (tmp_path / "stranger.pub").write_bytes(stranger.public.pem())
    with RegistryClient() as client:
        digest, size = push_package(client, make_package, f"{registry.host}/aos/ours:1", "ours")
        reference = f"{registry.host}/aos/ours@{digest}"
        attach_signature(client, reference, digest, size, key)
    verified = cosign("verify", "--key", "ours.pub", "--insecure-ignore-tlog=true", *REGISTRY_FLAGS, reference)
    [claim] = json.loads(verified.stdout)  # cosign prints the verified payloads
    assert claim["critical"]["image"]["docker-manifest-digest"] == digest
    assert claim["critical"]["identity"]["docker-reference"] == f"{registry.host}/aos/ours"
    assert claim["critical"] == json.loads(payload(f"{registry.host}/aos/ours", digest))["critical"]
    refused = cosign("verify", "--key", "stranger.pub", "--insecure-ignore-tlog=true", *REGISTRY_FLAGS, reference,
                     check=False)
    assert refused.returncode != 0 and "no matching signatures" in refused.stderr


def test_we_verify_what_cosign_signs(registry: RegistryServer, make_package: Callable[..., Path],
                                     cosign: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    cosign("generate-key-pair")  # cosign.key (encrypted with COSIGN_PASSWORD) and cosign.pub
    [public] = load_verification_keys(tmp_path / "cosign.pub")
    private = load_signing_key(tmp_path / "cosign.key", PASSWORD.encode())  # we read cosign's encrypted key
    assert private.public.pem() == public.pem()
    with RegistryClient() as client:
        digest, size = push_package(client, make_package, f"{registry.host}/aos/theirs:1", "theirs")
        other, _ = push_package(client, make_package, f"{registry.host}/aos/theirs:2", "unsigned")
        reference = f"{registry.host}/aos/theirs@{digest}"
        cosign("sign", "--key", "cosign.key", "--tlog-upload=false", "--yes", *REGISTRY_FLAGS, reference)
        policy = VerificationPolicy("required", (public,))
        verdict = verify_package(client, reference, digest, policy)
        assert verdict is not None and verdict.key.key_id == public.key_id
        with pytest.raises(SignatureError, match="is not signed"):
            verify_package(client, f"{registry.host}/aos/theirs@{other}", other, policy)
        # a signature by our key appended to cosign's: both are kept, and cosign still verifies
        ours = generate_signing_key()
        attach_signature(client, reference, digest, size, ours)
        assert len(fetch_signatures(client, reference, digest)) == 2
    cosign("verify", "--key", "cosign.pub", "--insecure-ignore-tlog=true", *REGISTRY_FLAGS, reference)


def test_cosign_signs_with_our_encrypted_key(registry: RegistryServer, make_package: Callable[..., Path],
                                             cosign: Callable[..., subprocess.CompletedProcess[str]],
                                             tmp_path: Path) -> None:
    key = generate_signing_key()
    (tmp_path / "ours.key").write_bytes(encrypted_pem(key, PASSWORD.encode()))
    with RegistryClient() as client:
        digest, _ = push_package(client, make_package, f"{registry.host}/aos/keyfile:1", "keyfile")
        reference = f"{registry.host}/aos/keyfile@{digest}"
        cosign("sign", "--key", "ours.key", "--tlog-upload=false", "--yes", *REGISTRY_FLAGS, reference)
        assert verify_package(client, reference, digest, VerificationPolicy("required", (key.public,))) is not None
