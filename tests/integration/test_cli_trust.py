"""`aosctl push --sign-key`, `aosctl run REF --verify-key` and `aosctl sign` as a user runs them
(real registry, real runc as root): exit codes and one-line errors, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from registry_support import RegistryServer

from aos_operator.trust.keys import encrypted_pem, generate_signing_key, plain_pem
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.root


def aosctl(tmp_path: Path, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aos_operator.cli", *arguments], capture_output=True, text=True,
                          timeout=180, check=False, env={**os.environ, **(env or {})}, cwd=tmp_path)


def run_options(tmp_path: Path) -> list[str]:
    return ["--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run"), "--timeout", "3"]


def test_push_signs_and_run_verifies(registry: RegistryServer, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("aosctl run needs root; CI runs as root")
    key, stranger = generate_signing_key(), generate_signing_key()
    (tmp_path / "cosign.key").write_bytes(encrypted_pem(key, b"pw"))
    (tmp_path / "cosign.pub").write_bytes(key.public.pem())
    (tmp_path / "stranger.pub").write_bytes(stranger.public.pem())
    cache = ["--cache-dir", str(tmp_path / "cache")]
    signed_ref = f"{registry.host}/aos/hello:1.0.0"
    pushed = aosctl(tmp_path, "push", str(EXAMPLES / "hello-world"), signed_ref, "--sign-key", "cosign.key", *cache,
                    env={"COSIGN_PASSWORD": "pw"})
    assert pushed.returncode == 0, pushed.stderr
    assert "signed: " in pushed.stderr and ".sig" in pushed.stderr
    ran = aosctl(tmp_path, "run", signed_ref, "--verify-key", "cosign.pub", *run_options(tmp_path))
    assert ran.returncode == 0, ran.stderr
    assert "signature by sha256:" in ran.stderr and "Hello from an AosEdge service" in ran.stdout
    refused = aosctl(tmp_path, "run", signed_ref, "--verify-key", "stranger.pub", *run_options(tmp_path))
    assert refused.returncode == 1 and "none made by a trusted key" in refused.stderr
    assert "Traceback" not in refused.stderr and "Hello" not in refused.stdout
    unsigned_ref = f"{registry.host}/aos/unsigned:1.0.0"
    assert aosctl(tmp_path, "push", str(EXAMPLES / "hello-world"), unsigned_ref, *cache).returncode == 0
    unsigned = aosctl(tmp_path, "run", unsigned_ref, "--verify-key", "cosign.pub", *run_options(tmp_path))
    assert unsigned.returncode == 1 and "is not signed" in unsigned.stderr
    local = aosctl(tmp_path, "run", str(EXAMPLES / "hello-world"), "--verify-key", "cosign.pub", *run_options(tmp_path))
    assert local.returncode == 2 and "pass a registry reference" in local.stderr
    # a wrong password: refused before anything is pushed
    (tmp_path / "plain.key").write_bytes(plain_pem(key))
    wrong = aosctl(tmp_path, "push", str(EXAMPLES / "hello-world"), f"{registry.host}/aos/never:1", "--sign-key",
                   "cosign.key", *cache, env={"COSIGN_PASSWORD": "nope"})
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr
    listed = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{registry.host}/aos/never"],
                            capture_output=True, text=True, check=False)
    assert listed.returncode != 0  # the repository was never created


def test_sign_writes_the_bundle(tmp_path: Path) -> None:
    from tests.differential.test_aos_signer_sign import make_credentials

    make_credentials(tmp_path)
    signed = aosctl(tmp_path, "sign", str(EXAMPLES / "hello-world"), "--pkcs12", "aos-user-sp.p12", "-o", "out/bundle.tar.gz")
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.strip() == "out/bundle.tar.gz" and (tmp_path / "out" / "bundle.tar.gz").is_file()
    both = aosctl(tmp_path, "sign", str(EXAMPLES / "hello-world"), "--pkcs12", "aos-user-sp.p12", "--key", "sp.key")
    assert both.returncode == 2 and "--pkcs12 FILE, or --key FILE with --cert FILE" in both.stderr
    missing = aosctl(tmp_path, "sign", str(EXAMPLES / "hello-world"), "-o", "x.tar.gz")
    assert missing.returncode == 2 and "aos-user-sp.p12" in missing.stderr and "Traceback" not in missing.stderr
