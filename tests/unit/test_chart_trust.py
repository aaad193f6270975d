"""The chart's trust values: the operator gets its signing key, the agents the trusted keys and
the policy; a policy that requires signatures without keys is refused at render time."""

from __future__ import annotations

import helm_python
import pytest

from aos_operator.trust.keys import generate_signing_key
from tools.chart_manifests import render

PUBLIC = generate_signing_key().public.pem().decode()


def container(documents, kind: str, component: str) -> dict:
    [obj] = [d.obj for d in documents if d.kind == kind and d.obj["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    return obj["spec"]["template"]["spec"]


def test_signing_and_verification_are_wired() -> None:
    documents = render({"trust": {"signingKeySecretName": "signer", "verificationPolicy": "required", "publicKeys": PUBLIC}})
    operator = container(documents, "Deployment", "operator")
    assert "--sign-key=/etc/aos/signing/cosign.key" in operator["containers"][0]["args"]
    [password] = [e for e in operator["containers"][0]["env"] if e["name"] == "COSIGN_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "signer", "key": "cosign.password", "optional": True}
    assert {"name": "signing-key", "secret": {"secretName": "signer", "items": [{"key": "cosign.key", "path": "cosign.key"}]}} in operator["volumes"]
    agent = container(documents, "DaemonSet", "agent")
    args = agent["containers"][0]["args"]
    assert "--signature-policy=required" in args and "--verify-key=/etc/aos/trusted-keys" in args
    [keys] = [d.obj for d in documents if d.kind == "ConfigMap" and d.obj["metadata"]["name"].endswith("-trusted-keys")]
    assert keys["data"]["trusted-keys.pem"].strip() == PUBLIC.strip()


def test_defaults_neither_sign_nor_verify() -> None:
    documents = render(None)
    operator = container(documents, "Deployment", "operator")
    assert not any(arg.startswith("--sign-key") for arg in operator["containers"][0]["args"])
    agent = container(documents, "DaemonSet", "agent")
    assert not any("signature" in arg or "verify-key" in arg for arg in agent["containers"][0]["args"])


def test_keys_with_policy_off_say_off_explicitly() -> None:
    # the agent treats keys without a policy as `required`; the chart passes `off` when asked
    agent = container(render({"trust": {"publicKeys": PUBLIC}}), "DaemonSet", "agent")
    assert "--signature-policy=off" in agent["containers"][0]["args"]


def test_required_without_keys_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="needs trust.publicKeys"):
        render({"trust": {"verificationPolicy": "required"}})
