"""Keys, cosign's payload and signature manifest, and the verification decision (pure parts)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from aos_operator.digests import sha256_digest
from aos_operator.errors import InputError, SignatureError
from aos_operator.trust.cosign import (
    PAYLOAD_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    parse_signature_manifest,
    payload,
    signature_layer,
    signature_manifest,
    signature_tag,
    signed_digest,
)
from aos_operator.trust.keys import (
    SigningKey,
    encrypted_pem,
    generate_signing_key,
    load_signing_key,
    load_verification_keys,
    plain_pem,
)
from aos_operator.trust.verify import FoundSignature, VerificationPolicy, check_signatures

DIGEST = sha256_digest(b"a manifest")
OTHER = sha256_digest(b"another manifest")


def write_public(path: Path, key: SigningKey) -> Path:
    path.write_bytes(key.public.pem())
    return path


def test_payload_is_cosigns_bytes() -> None:
    data = payload("localhost:5000/aos/hello", DIGEST)
    assert data == (
        b'{"critical":{"identity":{"docker-reference":"localhost:5000/aos/hello"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    assert signed_digest(data, "test") == DIGEST
    assert signature_tag(DIGEST) == f"sha256-{DIGEST[7:]}.sig"


@pytest.mark.parametrize(
    "document",
    [
        {"critical": {"type": "atomic container signature", "image": {"docker-manifest-digest": DIGEST}}},
        {"critical": {"type": "cosign container image signature", "image": {"docker-manifest-digest": "sha256:12"}}},
        {"critical": {"type": "cosign container image signature"}},
        [],
    ],
)
def test_foreign_payloads_are_refused(document: object) -> None:
    with pytest.raises(SignatureError):
        signed_digest(json.dumps(document).encode(), "test")


def test_signature_manifest_round_trip() -> None:
    key = generate_signing_key()
    data = payload("r/x", DIGEST)
    layer = signature_layer(data, key.sign(data))
    manifest, config = signature_manifest([layer])
    document = json.loads(manifest)
    assert document["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert document["config"]["digest"] == sha256_digest(config)
    assert document["layers"][0]["mediaType"] == PAYLOAD_MEDIA_TYPE
    assert base64.b64decode(document["layers"][0]["annotations"][SIGNATURE_ANNOTATION]) == layer.signature
    assert json.loads(config)["rootfs"]["diff_ids"] == [sha256_digest(data)]
    parsed = parse_signature_manifest(manifest, "test")
    assert [item.payload.digest for item in parsed] == [sha256_digest(data)]
    assert key.public.verifies(parsed[0].signature, data)


def test_signature_manifest_skips_foreign_layers_and_refuses_huge_payloads() -> None:
    foreign = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": DIGEST, "size": 3}
    unsigned = {"mediaType": PAYLOAD_MEDIA_TYPE, "digest": DIGEST, "size": 3}
    assert parse_signature_manifest(json.dumps({"layers": [foreign, unsigned]}).encode(), "t") == []
    huge = {**unsigned, "size": 10**9, "annotations": {SIGNATURE_ANNOTATION: "AAAA"}}
    with pytest.raises(SignatureError, match="payload"):
        parse_signature_manifest(json.dumps({"layers": [huge]}).encode(), "t")
    with pytest.raises(SignatureError, match="not JSON"):
        parse_signature_manifest(b"\xff", "t")


def found(key: SigningKey, digest: str) -> FoundSignature:
    data = payload("r/x", digest)
    return FoundSignature(signature_layer(data, key.sign(data)), data, "tag")


def test_check_accepts_the_right_key_and_digest() -> None:
    signer, other = generate_signing_key(), generate_signing_key()
    verdict = check_signatures([found(other, DIGEST), found(signer, DIGEST)], DIGEST, [signer.public], "pkg")
    assert verdict.key.public_key.public_numbers() == signer.public.public_key.public_numbers()


def test_check_refuses_unsigned_wrong_key_and_other_digest() -> None:
    signer, other = generate_signing_key(), generate_signing_key()
    with pytest.raises(SignatureError, match="is not signed"):
        check_signatures([], DIGEST, [signer.public], "pkg")
    with pytest.raises(SignatureError, match="none made by a trusted key"):
        check_signatures([found(other, DIGEST)], DIGEST, [signer.public], "pkg")
    with pytest.raises(SignatureError, match=f"is over {OTHER}"):
        check_signatures([found(signer, OTHER)], DIGEST, [signer.public], "pkg")
    # a payload edited after signing: the signature no longer verifies
    tampered = found(signer, DIGEST)
    edited = FoundSignature(tampered.layer, tampered.payload.replace(b"r/x", b"r/y"), "tag")
    with pytest.raises(SignatureError, match="none made by a trusted key"):
        check_signatures([edited], DIGEST, [signer.public], "pkg")


def test_keys_plain_and_encrypted_round_trip(tmp_path: Path) -> None:
    key = generate_signing_key()
    (tmp_path / "plain.key").write_bytes(plain_pem(key))
    (tmp_path / "cosign.key").write_bytes(encrypted_pem(key, b"secret"))
    sec1 = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    (tmp_path / "sec1.key").write_bytes(sec1)
    for name, password in (("plain.key", None), ("cosign.key", b"secret"), ("sec1.key", None)):
        loaded = load_signing_key(tmp_path / name, password)
        assert loaded.public.pem() == key.public.pem()
    with pytest.raises(SignatureError, match="wrong password"):
        load_signing_key(tmp_path / "cosign.key", b"wrong")


def test_encrypted_key_password_from_cosign_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_signing_key()
    (tmp_path / "cosign.key").write_bytes(encrypted_pem(key, b""))
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    with pytest.raises(SignatureError, match="no password"):
        load_signing_key(tmp_path / "cosign.key")
    monkeypatch.setenv("COSIGN_PASSWORD", "")
    assert load_signing_key(tmp_path / "cosign.key").public.pem() == key.public.pem()


def test_encrypted_key_with_hostile_scrypt_parameters_is_refused(tmp_path: Path) -> None:
    document = {
        "kdf": {"name": "scrypt", "params": {"N": 1 << 30, "r": 8, "p": 1}, "salt": "AAAA"},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(bytes(24)).decode()},
        "ciphertext": "AAAA",
    }
    body = base64.b64encode(json.dumps(document).encode()).decode()
    path = tmp_path / "cosign.key"
    path.write_text(f"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{body}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    with pytest.raises(SignatureError, match="unsupported scrypt parameters"):
        load_signing_key(path, b"x")


def test_other_key_kinds_are_refused_by_name(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    for name, private in (("rsa", rsa_key), ("p384", p384)):
        (tmp_path / f"{name}.key").write_bytes(
            private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (tmp_path / f"{name}.pub").write_bytes(
            private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        with pytest.raises(SignatureError, match="only ECDSA P-256"):
            load_signing_key(tmp_path / f"{name}.key")
        with pytest.raises(SignatureError, match="only ECDSA P-256"):
            load_verification_keys(tmp_path / f"{name}.pub")
    with pytest.raises(SignatureError, match="not a private key"):
        load_signing_key(tmp_path / "rsa.pub")
    with pytest.raises(SignatureError, match="no PEM PUBLIC KEY"):
        load_verification_keys(tmp_path / "rsa.key")


def test_verification_keys_from_a_directory(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    first, second = generate_signing_key(), generate_signing_key()
    write_public(keys / "a.pub", first)
    (keys / "b.pem").write_bytes(second.public.pem() + first.public.pem())
    (keys / ".hidden").write_text("ignored: ConfigMap mounts keep their data in dot folders")
    loaded = load_verification_keys(keys)
    assert [key.key_id for key in loaded] == [first.public.key_id, second.public.key_id, first.public.key_id]


def test_policy_settings(tmp_path: Path) -> None:
    key = write_public(tmp_path / "k.pub", generate_signing_key())
    assert VerificationPolicy.load(None, []).required is False
    assert VerificationPolicy.load(None, [key]).required is True
    assert VerificationPolicy.load("off", [key]).required is False
    with pytest.raises(InputError, match="needs at least one public key"):
        VerificationPolicy.load("required", [])
    with pytest.raises(InputError, match="is not one of"):
        VerificationPolicy.load("maybe", [key])
