"""The operator signs every package it pushes (real registry): the signature verifies, a new key
changes the content digest (so packages pushed unsigned are signed at the next pass), and an
unusable key is an error with the file named."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from registry_support import RegistryServer

from aos_operator.api.models import AosServiceSpec
from aos_operator.controller import builder
from aos_operator.controller.settings import OperatorSettings
from aos_operator.controller.source import SourceFile
from aos_operator.errors import SignatureError
from aos_operator.packaging import registry_client
from aos_operator.service import load_service
from aos_operator.trust.keys import encrypted_pem, generate_signing_key, plain_pem
from aos_operator.trust.store import verify_package
from aos_operator.trust.verify import VerificationPolicy
from tests.conftest import EXAMPLES


def test_operator_signs_what_it_pushes(registry: RegistryServer, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_signing_key()
    (tmp_path / "cosign.key").write_bytes(encrypted_pem(key, b"secret"))
    monkeypatch.setenv("COSIGN_PASSWORD", "secret")
    settings = OperatorSettings(registry=f"{registry.host}/aos", work_dir=tmp_path / "work", sign_key=tmp_path / "cosign.key")
    client = registry_client(insecure=True)
    service, _ = load_service(EXAMPLES / "hello-world")
    files = (SourceFile("etc/hello.cfg", 0o644, b"greeting=hi\n"),)
    repository = f"{registry.host}/aos/ns/hello"
    (image,) = builder.build_and_push(settings, client, service, builder.Source(files=files), repository)
    verdict = verify_package(client, image.ref, image.digest, VerificationPolicy("required", (key.public,)))
    assert verdict is not None and verdict.key.key_id == key.public.key_id

    spec = AosServiceSpec.model_validate({"config": {"schemaVersion": 2, "items": []}})
    unsigned = builder.source_digest(spec, builder.Source(files=files), repository)
    signed = builder.source_digest(spec, builder.Source(files=files), repository, builder.signer_id(settings))
    assert unsigned != signed  # turning signing on re-pushes and signs
    rotated = tmp_path / "rotated.key"
    rotated.write_bytes(plain_pem(generate_signing_key()))
    assert builder.signer_id(replace(settings, sign_key=rotated)) != builder.signer_id(settings)

    with pytest.raises(SignatureError, match="missing.key: cannot read the signing key"):
        builder.signing_key(replace(settings, sign_key=tmp_path / "missing.key"))
