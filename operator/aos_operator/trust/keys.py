"""Signing and verification keys: ECDSA P-256 in PEM, and cosign's encrypted private keys.

Private keys are read as PKCS#8 (`PRIVATE KEY`), SEC 1 (`EC PRIVATE KEY`) or cosign's
`ENCRYPTED SIGSTORE PRIVATE KEY` / `ENCRYPTED COSIGN PRIVATE KEY`: a JSON document holding the
PKCS#8 key sealed with NaCl secretbox under a key derived with scrypt from a password.
Public keys are `PUBLIC KEY` (SubjectPublicKeyInfo) blocks; a file may hold several.
Only P-256 with SHA-256 is accepted, cosign's default: any other key is refused by name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aos_operator.bounded import parse_json
from aos_operator.errors import InputError, SignatureError

ENCRYPTED_PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
PASSWORD_VARIABLE = "COSIGN_PASSWORD"  # the variable cosign reads, so one key works for both
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_PUBLIC_KEYS = 64
# The scrypt settings cosign's library accepts (legacy, standard, OWASP); nothing else, so a
# hostile key file cannot ask for gigabytes of memory.
_SCRYPT_PARAMETERS = ({"N": 32768, "r": 8, "p": 1}, {"N": 65536, "r": 8, "p": 1}, {"N": 131072, "r": 8, "p": 1})
_SALT_BYTES = 32
_NONCE_BYTES = 24
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """A short name for a key in messages: the start of the SHA-256 of its SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class VerificationKey:
    """A public key and where it came from (for messages)."""

    public_key: ec.EllipticCurvePublicKey = field(repr=False)
    source: str

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def verifies(self, signature: bytes, payload: bytes) -> bool:
        try:
            self.public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """A private key and where it came from."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    source: str

    @property
    def public(self) -> VerificationKey:
        return VerificationKey(self.private_key.public_key(), self.source)

    def sign(self, payload: bytes) -> bytes:
        """An ASN.1 DER ECDSA signature of SHA-256(payload), as cosign writes them."""
        return self.private_key.sign(payload, ec.ECDSA(hashes.SHA256()))


def generate_signing_key(source: str = "generated") -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()), source)


def read_key_file(path: Path, what: str, limit: int = MAX_KEY_FILE_BYTES) -> bytes:
    """A key or certificate file, never more than `limit` bytes of it."""
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if len(data) > limit:
        raise SignatureError(f"{path}: larger than {limit} bytes; not a {what}")
    return data


def _check_curve(key: object, source: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or not isinstance(
        curve, ec.SECP256R1
    ):
        kind = f"an ECDSA {curve.name} key" if curve is not None else f"a {type(key).__name__.lstrip('_')}"
        raise SignatureError(
            f"{source}: is {kind}; only ECDSA P-256 keys are supported",
            hint="make one with `cosign generate-key-pair` or `openssl ecparam -name prime256v1 -genkey`",
        )


def load_signing_key(path: str | Path, password: bytes | None = None) -> SigningKey:
    """Read a private key; an encrypted cosign key needs `password` (else $COSIGN_PASSWORD)."""
    path = Path(path)
    data = read_key_file(path, "private key")
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise SignatureError(f"{path}: not a PEM file", hint="pass a PEM private key or a cosign.key")
    label, body = blocks[0]
    label = label.decode()
    if label in ENCRYPTED_PEM_TYPES:
        if password is None:
            variable = os.environ.get(PASSWORD_VARIABLE)
            password = variable.encode() if variable is not None else None
        if password is None:
            raise SignatureError(
                f"{path}: is an encrypted cosign key and no password was given",
                hint=f"set {PASSWORD_VARIABLE} (an empty value for a key made with an empty password)",
            )
        der = decrypt_cosign_key(base64.b64decode(body), password, str(path))
        try:
            loaded = serialization.load_der_private_key(der, None)
        except (ValueError, TypeError) as error:
            raise SignatureError(f"{path}: the decrypted key cannot be read ({error})") from None
    elif label in ("PRIVATE KEY", "EC PRIVATE KEY"):
        try:
            loaded = serialization.load_pem_private_key(b"-----BEGIN %s-----\n%s-----END %s-----\n" % (
                label.encode(), body, label.encode()), None)
        except (ValueError, TypeError) as error:
            raise SignatureError(f"{path}: the {label} block cannot be read ({error})") from None
    else:
        raise SignatureError(
            f"{path}: holds a {label!r} block, not a private key",
            hint="pass the private key (cosign.key), not the public key or a certificate",
        )
    _check_curve(loaded, str(path))
    return SigningKey(loaded, str(path))  # type: ignore[arg-type]


def load_verification_keys(path: str | Path) -> list[VerificationKey]:
    """Every `PUBLIC KEY` block of a file, or of every regular file in a directory (a mounted
    ConfigMap), in name order. Refuses a file without any, or any key that is not P-256."""
    path = Path(path)
    if path.is_dir():
        files = sorted(item for item in path.iterdir() if item.is_file() and not item.name.startswith("."))
        if not files:
            raise SignatureError(f"{path}: the key directory holds no files", hint="put PEM public keys in it")
    else:
        files = [path]
    keys: list[VerificationKey] = []
    for file in files:
        found = 0
        for index, (label, body) in enumerate(_PEM_BLOCK.findall(read_key_file(file, "public key"))):
            if label != b"PUBLIC KEY":
                continue
            source = f"{file}" if index == 0 else f"{file} (key {index + 1})"
            try:
                loaded = serialization.load_pem_public_key(b"-----BEGIN PUBLIC KEY-----\n%s-----END PUBLIC KEY-----\n" % body)
            except ValueError as error:
                raise SignatureError(f"{source}: the PUBLIC KEY block cannot be read ({error})") from None
            _check_curve(loaded, source)
            keys.append(VerificationKey(loaded, source))  # type: ignore[arg-type]
            found += 1
        if not found:
            raise SignatureError(
                f"{file}: holds no PEM PUBLIC KEY block", hint="pass the public key (cosign.pub), not the private key"
            )
    if len(keys) > MAX_PUBLIC_KEYS:
        raise SignatureError(f"{path}: more than {MAX_PUBLIC_KEYS} public keys")
    return keys


def _b64(document: dict, name: str, source: str) -> bytes:
    value = document.get(name)
    try:
        if not isinstance(value, str):
            raise ValueError
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise SignatureError(f"{source}: field {name!r} of the encrypted key is not base64") from None


def decrypt_cosign_key(sealed: bytes, password: bytes, source: str) -> bytes:
    """The PKCS#8 DER inside a cosign encrypted key (scrypt, then NaCl secretbox)."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    try:
        document = parse_json(sealed)
        kdf, cipher = document["kdf"], document["cipher"]
        params = kdf["params"]
        if not (isinstance(kdf, dict) and isinstance(cipher, dict) and isinstance(params, dict)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise SignatureError(f"{source}: the encrypted key is not cosign's JSON (kdf, cipher, ciphertext)") from None
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise SignatureError(
            f"{source}: encrypted with {kdf.get('name')!r}/{cipher.get('name')!r}; only scrypt + nacl/secretbox is known"
        )
    if params not in _SCRYPT_PARAMETERS:
        raise SignatureError(f"{source}: unsupported scrypt parameters {params}", hint="re-encrypt it with cosign")
    salt, nonce, ciphertext = _b64(kdf, "salt", source), _b64(cipher, "nonce", source), _b64(document, "ciphertext", source)
    if len(nonce) != _NONCE_BYTES:
        raise SignatureError(f"{source}: the nonce is {len(nonce)} bytes, not {_NONCE_BYTES}")
    box_key = hashlib.scrypt(password, salt=salt, n=params["N"], r=params["r"], p=params["p"], maxmem=256 * 1024 * 1024, dklen=32)
    try:
        return SecretBox(box_key).decrypt(ciphertext, nonce)
    except CryptoError:
        raise SignatureError(
            f"{source}: wrong password for the encrypted key (or the file is damaged)",
            hint=f"check {PASSWORD_VARIABLE}",
        ) from None


def encrypted_pem(key: SigningKey, password: bytes) -> bytes:
    """The key as cosign writes it (`ENCRYPTED SIGSTORE PRIVATE KEY`, standard scrypt settings)."""
    from nacl.secret import SecretBox

    der = key.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    params = _SCRYPT_PARAMETERS[1]
    salt, nonce = os.urandom(_SALT_BYTES), os.urandom(_NONCE_BYTES)
    box_key = hashlib.scrypt(password, salt=salt, n=params["N"], r=params["r"], p=params["p"], maxmem=256 * 1024 * 1024, dklen=32)
    sealed = SecretBox(box_key).encrypt(der, nonce).ciphertext
    document = {
        "kdf": {"name": "scrypt", "params": params, "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    body = base64.encodebytes(json.dumps(document, separators=(",", ":")).encode()).decode()
    # PEM lines are 64 characters; encodebytes gives 76.
    flat = body.replace("\n", "")
    lines = "\n".join(flat[i : i + 64] for i in range(0, len(flat), 64))
    label = ENCRYPTED_PEM_TYPES[0]
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


def plain_pem(key: SigningKey) -> bytes:
    return key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
