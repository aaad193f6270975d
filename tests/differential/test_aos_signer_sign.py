"""`aosctl sign` against `aos-signer sign` 1.17 (schema version 1) and 2.1 (version 2) on the same
service and a test certificate made here: the same members with the same content inside both
archives, and both package.sign JWTs verify with the certificate's public key."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from aos_operator.errors import BuildError, InputError, SignatureError
from aos_operator.trust.bundle import credentials_from_files, sign_bundle
from tests.conftest import EXAMPLES, REPO
from tests.differential.conftest import venv_python

# aos-signer run with its sockets cut: `sign` needs no network, and must not use any.
SIGNER_RUN = """
import socket, sys
from pathlib import Path
def refuse(*args, **kwargs):
    raise OSError("network disabled in tests")
socket.socket.connect = refuse
socket.create_connection = refuse
from aos_signer.signer.commands import {function}
{function}(Path(sys.argv[1]))
"""


def make_credentials(directory: Path) -> tuple[Path, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Aos Test, Inc."),
                        x509.NameAttribute(NameOID.COMMON_NAME, "Aos test service providers")])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sp.example")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(0x0ABCDEF12345)  # odd number of hex digits: the kid pads it to even
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = directory / "aos-user-sp.p12"
    path.write_bytes(pkcs12.serialize_key_and_certificates(b"aos-user-sp", key, certificate, None,
                                                           serialization.NoEncryption()))
    (directory / "sp.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (directory / "sp.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path, certificate


def run_signer(version: str, function: str, config: Path, cwd: Path, home: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "NO_COLOR": "1"}
    process = subprocess.run([str(venv_python(version)), "-c", SIGNER_RUN.format(function=function), str(config)],
                             cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, f"aos-signer {version} sign failed:\n{process.stdout}\n{process.stderr}"


def members(data: bytes) -> dict[str, tuple[str, str]]:
    """name -> (type, sha256 of the content or the link target), names without './'."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("./")
            if name in ("", "."):
                continue
            if member.isdir():
                found[name] = ("dir", "")
            elif member.issym():
                found[name] = ("symlink", member.linkname)
            else:
                content = archive.extractfile(member).read()  # type: ignore[union-attr]
                found[name] = ("file", hashlib.sha256(content).hexdigest())
    return found


def file_bytes(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return archive.extractfile(f"./{name}").read()  # type: ignore[union-attr]


def decode_part(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def check_jwt(token: str, certificate: x509.Certificate, archive: bytes, config: bytes, archive_name: str) -> dict:
    header_part, payload_part, signature_part = token.split(".")
    signature = base64.urlsafe_b64decode(signature_part + "=" * (-len(signature_part) % 4))
    try:
        certificate.public_key().verify(signature, f"{header_part}.{payload_part}".encode(), padding.PKCS1v15(),  # type: ignore[call-arg]
                                        hashes.SHA256())
    except InvalidSignature:
        pytest.fail("package.sign does not verify with the certificate's public key")
    header, payload = decode_part(header_part), decode_part(payload_part)
    assert header["alg"] == "RS256"
    issuer, serial = base64.b64decode(header["kid"]).decode().rsplit(":", 1)
    assert issuer == certificate.issuer.rfc4514_string() and serial == "0ABCDEF12345"
    assert payload["data"] == [
        {"name": archive_name, "hash": hashlib.sha3_512(archive).hexdigest(), "size": len(archive)},
        {"name": "config.yaml", "hash": hashlib.sha3_512(config).hexdigest(), "size": len(config)},
    ]
    return header


def compare(theirs: bytes, ours: bytes, certificate: x509.Certificate, archive_name: str) -> dict[str, tuple[str, str]]:
    outer_theirs, outer_ours = members(theirs), members(ours)
    assert set(outer_theirs) == set(outer_ours) == {"config.yaml", "package.sign", archive_name}
    assert outer_theirs["config.yaml"] == outer_ours["config.yaml"]
    inner_theirs, inner_ours = file_bytes(theirs, archive_name), file_bytes(ours, archive_name)
    assert members(inner_theirs) == members(inner_ours)
    config = file_bytes(ours, "config.yaml")
    header_theirs = check_jwt(file_bytes(theirs, "package.sign").decode(), certificate, inner_theirs, config, archive_name)
    header_ours = check_jwt(file_bytes(ours, "package.sign").decode(), certificate, inner_ours, config, archive_name)
    assert header_theirs == header_ours
    return members(inner_ours)


def test_v1_bundle_matches_aos_signer_1_17(tmp_path: Path) -> None:
    service = tmp_path / "hello-world"
    shutil.copytree(EXAMPLES / "hello-world", service, symlinks=True)
    config = service / "meta" / "config.yaml"
    config.write_text(config.read_text().replace("required: false", "required: true"))
    (service / "meta" / "state.dat").write_text("initial state\n")
    (service / "src" / "usr" / "share" / "hello").mkdir(parents=True)  # an empty directory
    os.symlink("../../etc/hello.cfg", service / "src" / "usr" / "share" / "hello" / "cfg")  # a link inside
    _, certificate = make_credentials(service / "meta")
    home = tmp_path / "home"
    home.mkdir()
    run_signer("1.17.0", "sign_service", Path("meta/config.yaml"), service, home)
    theirs = (service / "service.tar.gz").read_bytes()
    signed = sign_bundle(service, output=tmp_path / "ours.tar.gz")
    assert signed.output == tmp_path / "ours.tar.gz"
    inner = compare(theirs, signed.output.read_bytes(), certificate, "service.tar.gz")
    assert len(inner) >= 10 and "service/usr/bin/services/hello_world.py" in inner and "config.yaml" in inner
    assert inner["default_state.dat"][0] == "file" and inner["service/usr/share/hello/cfg"] == ("symlink", "../../etc/hello.cfg")
    assert inner["service/usr/share/hello"] == ("dir", "")
    # reproducible, unlike aos-signer's: the same inputs give the same inner archive
    again = sign_bundle(service, output=tmp_path / "again.tar.gz")
    assert again.archive == signed.archive


def test_v2_bundle_matches_aos_signer_2_1(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    template = (REPO / "tests" / "data" / "configs" / "v2" / "valid" / "template.yaml").read_text()
    (bundle / "config.yaml").write_text(template.replace("required: false", "required: true"))
    for folder, marker in (("src_x86", "amd64"), ("src_arm", "arm64")):
        (bundle / "hello-world" / folder / "app").mkdir(parents=True)
        (bundle / "hello-world" / folder / "app" / "service").write_text(f"#!/bin/sh\necho {marker}\n")
    (bundle / "hello-world" / "state.dat").write_text("state\n")
    _, certificate = make_credentials(bundle)
    home = tmp_path / "home"
    home.mkdir()
    run_signer("2.1.0", "sign_bundle", Path("config.yaml"), bundle, home)
    theirs = (bundle / "batch.tar.gz").read_bytes()
    signed = sign_bundle(bundle, output=tmp_path / "ours.tar.gz")
    inner = compare(theirs, signed.output.read_bytes(), certificate, "batch.tar.gz")
    assert {"hello-world/src_x86/app/service", "hello-world/src_arm/app/service", "hello-world/default_state.dat"} <= set(inner)


def test_credentials_and_refusals(tmp_path: Path) -> None:
    service = tmp_path / "hello-world"
    shutil.copytree(EXAMPLES / "hello-world", service, symlinks=True)
    with pytest.raises(InputError, match="no such file"):  # the config names aos-user-sp.p12, which is missing
        sign_bundle(service, output=tmp_path / "none.tar.gz")
    assert not (tmp_path / "none.tar.gz").exists()
    _, certificate = make_credentials(tmp_path)
    signed = sign_bundle(service, output=tmp_path / "files.tar.gz",
                         credentials=credentials_from_files(tmp_path / "sp.key", tmp_path / "sp.pem"))
    assert base64.b64decode(signed.kid).decode().endswith(":0ABCDEF12345")
    (tmp_path / "other").mkdir()
    _, other = make_credentials(tmp_path / "other")
    (tmp_path / "mismatch.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(SignatureError, match="is not the certificate of the key"):
        credentials_from_files(tmp_path / "sp.key", tmp_path / "mismatch.pem")
    os.symlink("/etc/passwd", service / "src" / "escape")
    with pytest.raises(BuildError, match="symbolic link to '/etc/passwd'"):
        sign_bundle(service, output=tmp_path / "escape.tar.gz",
                    credentials=credentials_from_files(tmp_path / "sp.key", tmp_path / "sp.pem"))
    assert not (tmp_path / "escape.tar.gz").exists()
    del certificate
