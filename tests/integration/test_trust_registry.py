"""Signatures in a real registry (Debian's docker-registry): attach, read back, refuse; and the
device agent that checks them before it pulls any layer (real runc, as root)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from registry_support import FaultProxy, RegistryServer
from runtime_helpers import wait_until

from aos_operator.agent.core import Desired, DeviceAgent, Outcome
from aos_operator.digests import digest_hex, sha256_digest
from aos_operator.errors import RegistryError, SignatureError
from aos_operator.registry import BytesBlob, RegistryClient
from aos_operator.registry.artifacts import referrers
from aos_operator.registry.manifest import OCI_MANIFEST
from aos_operator.runtime import InstanceIdentity, Phase, Runtime
from aos_operator.trust.cosign import PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION, SIGNATURE_ARTIFACT_TYPE, signature_tag
from aos_operator.trust.keys import SigningKey, generate_signing_key
from aos_operator.trust.store import attach_signature, fetch_signatures, verify_package
from aos_operator.trust.verify import VerificationPolicy

PYTHON = "/usr/bin/python3"
SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"


def policy_for(*keys: SigningKey) -> VerificationPolicy:
    return VerificationPolicy("required", tuple(key.public for key in keys))


def push(client: RegistryClient, package: Path, reference: str) -> tuple[str, int]:
    digest = client.push_package(reference, package)
    return digest, (package / "manifest.json").stat().st_size


@pytest.fixture
def client() -> RegistryClient:
    with RegistryClient() as registry_client:
        yield registry_client


def test_signature_is_where_cosign_looks_and_verifies(registry: RegistryServer, client: RegistryClient,
                                                      make_package: Callable[..., Path]) -> None:
    key = generate_signing_key()
    package = make_package({"app/main.py": SLEEPER}, cmd=[PYTHON, "/app/main.py"])
    reference = f"{registry.host}/aos/hello:1.0.0"
    digest, size = push(client, package, reference)
    attached = attach_signature(client, reference, digest, size, key)
    assert attached.tag == f"{registry.host}/aos/hello:{signature_tag(digest)}" and not attached.already_signed
    # Distribution 2.8 has no referrers API: detected, and the tag alone carries the signature
    assert not referrers(client, f"{registry.host}/aos/hello", digest, SIGNATURE_ARTIFACT_TYPE).supported
    assert attached.referrer is None
    # skopeo, an independent reader, sees cosign's layout under the tag
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{attached.tag}"],
                         capture_output=True, text=True, check=True).stdout
    manifest = json.loads(raw)
    assert manifest["mediaType"] == OCI_MANIFEST
    [layer] = manifest["layers"]
    assert layer["mediaType"] == PAYLOAD_MEDIA_TYPE and SIGNATURE_ANNOTATION in layer["annotations"]
    verdict = verify_package(client, reference, digest, policy_for(key))
    assert verdict is not None and verdict.key.key_id == key.public.key_id
    # signing again with the same key changes nothing; another key appends a second signature
    assert attach_signature(client, reference, digest, size, key).already_signed
    second = generate_signing_key()
    attach_signature(client, reference, digest, size, second)
    assert len(fetch_signatures(client, reference, digest)) == 2
    assert verify_package(client, reference, digest, policy_for(second)).key.key_id == second.public.key_id
    assert verify_package(client, reference, digest, policy_for(key)).key.key_id == key.public.key_id


def test_each_refusal(registry: RegistryServer, client: RegistryClient, make_package: Callable[..., Path]) -> None:
    key, stranger = generate_signing_key(), generate_signing_key()
    first = make_package({"app/main.py": SLEEPER}, cmd=[PYTHON, "/app/main.py"])
    second = make_package({"app/main.py": SLEEPER + "# another\n"}, cmd=[PYTHON, "/app/main.py"])
    repository = f"{registry.host}/aos/refusals"
    digest, size = push(client, first, f"{repository}:1")
    other, other_size = push(client, second, f"{repository}:2")
    with pytest.raises(SignatureError, match="is not signed"):
        verify_package(client, f"{repository}@{digest}", digest, policy_for(key))
    attach_signature(client, repository, digest, size, stranger)
    with pytest.raises(SignatureError, match="none made by a trusted key") as refused:
        verify_package(client, f"{repository}@{digest}", digest, policy_for(key))
    assert refused.value.reason == "SignatureInvalid" and key.public.key_id in refused.value.message
    # a valid signature of `digest` copied to the tag of `other`: over another digest
    attach_signature(client, repository, digest, size, key)
    copied = client.pull_manifest(f"{repository}:{signature_tag(digest)}")
    config = json.loads(copied.data)["config"]
    blobs = {config["digest"]: BytesBlob(client_blob(client, repository, config["digest"], config["size"]))}
    for layer in json.loads(copied.data)["layers"]:
        blobs[layer["digest"]] = BytesBlob(client_blob(client, repository, layer["digest"], layer["size"]))
    client.push(f"{repository}:{signature_tag(other)}", copied.data, OCI_MANIFEST, blobs)
    with pytest.raises(SignatureError, match=f"is over {digest}, not {other}"):
        verify_package(client, f"{repository}@{other}", other, policy_for(key))
    assert verify_package(client, repository, other, VerificationPolicy()) is None  # policy off
    del other_size


def client_blob(client: RegistryClient, repository: str, digest: str, size: int) -> bytes:
    from aos_operator.registry.artifacts import small_blob

    return small_blob(client, repository, digest, size)


def test_a_tampered_manifest_in_the_registry_is_refused(registry: RegistryServer, client: RegistryClient,
                                                        make_package: Callable[..., Path]) -> None:
    """The registry's stored manifest is edited (a layer swapped for another one) behind its back:
    the bytes served no longer hash to the signed digest, and the tag now names an unsigned one."""
    key = generate_signing_key()
    package = make_package({"app/main.py": SLEEPER}, cmd=[PYTHON, "/app/main.py"])
    evil = make_package({"app/main.py": "print('evil')\n"}, cmd=[PYTHON, "/app/main.py"])
    repository = f"{registry.host}/aos/tamper"
    digest, size = push(client, package, f"{repository}:1")
    attach_signature(client, f"{repository}:1", digest, size, key)
    evil_digest, _ = push(client, evil, f"{repository}:evil")
    stored = next(registry.root.glob(f"data/docker/registry/v2/blobs/sha256/{digest_hex(digest)[:2]}/{digest_hex(digest)}/data"))
    stored.write_bytes((evil / "manifest.json").read_bytes())  # same name, other content
    with pytest.raises(RegistryError, match=f"hashes to {evil_digest}, not {digest}"):
        DeviceAgent_pull_check(client, f"{repository}@{digest}", digest, key)
    # the attacker also moves the tag: what the tag names now has no valid signature
    client.push_package(f"{repository}:1", evil)
    moved = client.pull_manifest(f"{repository}:1").digest
    assert moved == evil_digest
    with pytest.raises(SignatureError, match="is not signed"):
        verify_package(client, f"{repository}:1", moved, policy_for(key))


def DeviceAgent_pull_check(client: RegistryClient, reference: str, digest: str, key: SigningKey) -> None:  # noqa: N802
    """What the agent does first: the manifest by digest (hash-checked), then its signature."""
    client.pull_manifest(reference)
    verify_package(client, reference, digest, policy_for(key))


# --- the device agent ---------------------------------------------------------------------------


@pytest.mark.root
def test_agent_runs_signed_refuses_the_rest_and_keeps_the_old_one(
    registry: RegistryServer, fault_proxy: FaultProxy, runtime: Runtime, make_package: Callable[..., Path],
    tmp_path: Path,
) -> None:
    key, stranger = generate_signing_key(), generate_signing_key()
    signed = make_package({"app/main.py": SLEEPER}, cmd=[PYTHON, "-u", "/app/main.py"])
    unsigned = make_package({"app/main.py": SLEEPER + "# v2\n"}, cmd=[PYTHON, "-u", "/app/main.py"])
    repository = f"{fault_proxy.host}/aos/agent"
    with RegistryClient() as publisher:
        digest, size = push(publisher, signed, f"{repository}:1")
        attach_signature(publisher, repository, digest, size, key)
        new_digest, new_size = push(publisher, unsigned, f"{repository}:2")
    new_layer = json.loads((unsigned / "manifest.json").read_bytes())["layers"][0]["digest"]
    with RegistryClient() as device_client:
        agent = DeviceAgent(runtime, device_client, tmp_path / "pulls", policy_for(key))
        steps: list[Outcome] = []
        identity = InstanceIdentity("svc-signed", "subject", 0)

        def desired(package_digest: str) -> Desired:
            return Desired(identity.service_id, identity.subject_id, identity.index, f"{repository}@{package_digest}",
                           package_digest, identity.instance_id)

        assert agent.converge(desired(digest), steps.append).phase == "Starting"
        wait_until(lambda: agent.status(identity.instance_id).phase == Phase.RUNNING, what="Running")
        fault_proxy.seen.clear()

        def refused(expected: str) -> None:
            outcome = agent.converge(desired(new_digest), steps.append)
            assert (outcome.phase, outcome.reason) == ("Failed", "SignatureInvalid")
            assert expected in outcome.message
            status = agent.status(identity.instance_id)
            assert status.phase == Phase.RUNNING and status.package == digest  # the old one keeps running
            assert not runtime.packages.has(new_digest)  # nothing installed
            assert not any((tmp_path / "pulls").rglob("*")) if (tmp_path / "pulls").exists() else True
            assert fault_proxy.requests("GET", f"/blobs/{new_layer}") == []  # no layer was fetched

        refused("is not signed")
        with RegistryClient() as publisher:
            attach_signature(publisher, repository, new_digest, new_size, stranger)
        refused("none made by a trusted key")
        # a reference that does not pin the digest is refused too (the spec must name what was signed)
        outcome = agent.converge(Desired(identity.service_id, identity.subject_id, identity.index, f"{repository}:2",
                                         new_digest, identity.instance_id), steps.append)
        assert outcome.reason == "SignatureInvalid" and "by its digest" in outcome.message
        # signed by the device's key: now it replaces the old package
        with RegistryClient() as publisher:
            attach_signature(publisher, repository, new_digest, new_size, key)
        assert agent.converge(desired(new_digest), steps.append).phase == "Starting"
        wait_until(lambda: (s := agent.status(identity.instance_id)).phase == Phase.RUNNING and s.package == new_digest,
                   what="the new package Running")
        assert fault_proxy.requests("GET", f"/blobs/{new_layer}")
        agent.remove(identity.instance_id)


@pytest.mark.root
def test_agent_checks_an_installed_package_it_has_not_verified(
    registry: RegistryServer, client: RegistryClient, runtime: Runtime, make_package: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A package installed before the policy was turned on is not started on trust."""
    key = generate_signing_key()
    package = make_package({"app/main.py": SLEEPER}, cmd=[PYTHON, "-u", "/app/main.py"])
    repository = f"{registry.host}/aos/installed"
    digest, _ = push(client, package, f"{repository}:1")
    runtime.install(package)
    agent = DeviceAgent(runtime, client, tmp_path / "pulls", policy_for(key))
    identity = InstanceIdentity("svc-installed", "subject", 0)
    outcome = agent.converge(Desired(identity.service_id, identity.subject_id, identity.index, f"{repository}@{digest}",
                                     digest, identity.instance_id), lambda _: None)
    assert (outcome.phase, outcome.reason) == ("Failed", "SignatureInvalid")
    assert agent.status(identity.instance_id) is None
    assert sha256_digest((package / "manifest.json").read_bytes()) == digest
