"""The AosCloud upload bundle that `aos-signer sign` writes (`aosctl sign DIR`).

The bundle is a tar.gz of three members: `config.yaml`, an inner tar.gz, and `package.sign`,
a JWT (RS256) whose payload lists the SHA3-512 hash and the size of the inner archive and of
config.yaml: `{"data": [{"name", "hash", "size"}, ...]}`. Its header `kid` is base64 of
`<issuer, RFC 4514>:<serial, uppercase hex of even length>` of the signing certificate.

- Schema version 1 (aos-signer 1.x): `service.tar.gz` holding `service/` (the source folder),
  `config.yaml` and, when `configuration.state.required`, `default_state.dat`; written to
  `<build.package_folder>/service.tar.gz`. Credentials: `build.sign_pkcs12`, or
  `build.sign_key` + `build.sign_certificate`.
- Schema version 2 (aos-signer 2.x): `batch.tar.gz` holding each image's folder or file at
  the path aos-signer computes for it (`<sourceFolder>/<path|sourceFolder|arch>`, or
  `<codename>/<arch>`), each required state as `<item folder>/default_state.dat`, and
  config.yaml; written to `batch.tar.gz`. Credentials: `publish.tlsKey` (PKCS#12).
  Images that the config asks to encrypt are refused (aosctl does not encrypt).

Relative credential paths are looked up beside config.yaml, then in `~/.aos/security`, as
aos-signer does. Unlike aos-signer the archives are reproducible (sorted, owner 0, the epoch
as time, normalized modes), links that leave the tree are refused, and the output appears
only when whole.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from aos_operator.errors import ConfigError, InputError, SignatureError
from aos_operator.image.tree import EntryKind, scan_tree
from aos_operator.service.loader import base_dir_of, find_config, read_config
from aos_operator.service.yamlfile import decode, load_yaml_text
from aos_operator.trust.keys import read_key_file

CREDENTIALS_FOLDER = Path.home() / ".aos" / "security"
_CHUNK = 1024 * 1024
_MAX_CREDENTIAL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Credentials:
    """The RSA key and certificate that sign a bundle."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    source: str

    @property
    def kid(self) -> str:
        serial = f"{self.certificate.serial_number:X}"
        serial = "0" + serial if len(serial) % 2 else serial
        return base64.b64encode(f"{self.certificate.issuer.rfc4514_string()}:{serial}".encode()).decode()


def _read(path: Path, what: str) -> bytes:
    return read_key_file(path, what, _MAX_CREDENTIAL_BYTES)


def _rsa(key: Any, source: str) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SignatureError(f"{source}: the key is not RSA; AosCloud bundles are signed with RS256")
    return key


def credentials_from_pkcs12(path: Path, password: bytes | None = None) -> Credentials:
    """aos-user-sp.p12: a passwordless PKCS#12 as AosCloud issues it (or one with `password`)."""
    data = _read(path, "PKCS#12 file")
    errors = []
    for attempt in ([password] if password is not None else [b"", None]):
        try:
            key, certificate, _ = pkcs12.load_key_and_certificates(data, attempt)
            break
        except ValueError as error:
            errors.append(str(error))
    else:
        raise SignatureError(f"{path}: cannot open the PKCS#12 file ({errors[-1]})", hint="is it password protected?")
    if key is None or certificate is None:
        raise SignatureError(f"{path}: the PKCS#12 file must hold a key and its certificate")
    return Credentials(_rsa(key, str(path)), certificate, str(path))


def credentials_from_files(key_path: Path, certificate_path: Path) -> Credentials:
    try:
        key = serialization.load_pem_private_key(_read(key_path, "private key"), None)
    except (ValueError, TypeError) as error:
        raise SignatureError(f"{key_path}: not an unencrypted PEM private key ({error})") from None
    try:
        certificate = x509.load_pem_x509_certificate(_read(certificate_path, "certificate"))
    except ValueError as error:
        raise SignatureError(f"{certificate_path}: not a PEM certificate ({error})") from None
    credentials = Credentials(_rsa(key, str(key_path)), certificate, str(certificate_path))
    if credentials.key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise SignatureError(f"{certificate_path}: is not the certificate of the key {key_path}")
    return credentials


def find_credential(name: str, config_dir: Path, field: str) -> Path:
    """A credential file named in config.yaml: absolute, beside config.yaml, or in ~/.aos/security."""
    path = Path(name)
    candidates = [path] if path.is_absolute() else [config_dir / path, CREDENTIALS_FOLDER / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(
        f"{field} is {name!r}, but no such file in {' nor '.join(str(c.parent) for c in candidates)}",
        hint="put the file there, or pass --pkcs12 FILE (or --key FILE --cert FILE)",
    )


# --- what goes into the inner archive -----------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str  # in the archive, without the leading "./"
    kind: EntryKind
    mode: int
    source: Path | None = None  # file content
    link_target: str = ""


def _tree_members(root: Path, prefix: str, symlinks: str) -> Iterator[Member]:
    tree = scan_tree(root, symlinks)  # type: ignore[arg-type]
    yield Member(prefix, EntryKind.DIRECTORY, 0o755)
    for entry in tree.entries:
        name = f"{prefix}/{entry.path}"
        if entry.kind is EntryKind.SYMLINK:
            yield Member(name, entry.kind, 0o777, link_target=entry.link_target)
        elif entry.kind is EntryKind.DIRECTORY:
            yield Member(name, entry.kind, entry.mode)
        else:  # a hard link inside the tree is copied, as aos-signer's copytree does
            yield Member(name, EntryKind.FILE, entry.mode, source=entry.source(root))


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _state_member(config: dict[str, Any], state_dir: Path, name: str) -> Member | None:
    state = (config.get("configuration") or {}).get("state") or {}
    if not isinstance(state, dict) or not state.get("required"):
        return None
    path = state_dir / str(state.get("filename") or "state.dat")
    if not path.is_file():
        raise InputError(f"{path}: the default state file that configuration.state names does not exist")
    return Member(name, EntryKind.FILE, 0o644, source=path)


@dataclass(frozen=True)
class BundlePlan:
    archive_name: str  # "service.tar.gz" or "batch.tar.gz"
    members: list[Member]
    credential_fields: list[tuple[str, str]]  # (field, value) of the credentials named in the config
    default_output: Path


def plan_v1(config: dict[str, Any], service_dir: Path, config_dir: Path) -> BundlePlan:
    build = config.get("build") or {}
    source = service_dir / str(build.get("source_folder") or "src")
    members = list(_tree_members(source, "service", str(build.get("symlinks") or "copy")))
    state = _state_member(config, config_dir, "default_state.dat")
    members += [state] if state else []
    fields = [("build.sign_pkcs12", build["sign_pkcs12"])] if build.get("sign_pkcs12") else [
        ("build.sign_key", str(build.get("sign_key") or "")), ("build.sign_certificate", str(build.get("sign_certificate") or ""))
    ]
    output = service_dir / str(build.get("package_folder") or ".") / "service.tar.gz"
    return BundlePlan("service.tar.gz", members, fields, output)


def plan_v2(config: dict[str, Any], bundle_dir: Path) -> BundlePlan:
    members: list[Member] = []
    for item_index, item in enumerate(config.get("items") or []):
        codename = str((item.get("identity") or {}).get("codename") or "")
        item_folder = item.get("sourceFolder")
        for image_index, image in enumerate(item.get("images") or []):
            where = f"items[{item_index}].images[{image_index}]"
            if (image.get("encryption") or {}).get("keyFile"):
                raise InputError(f"{where}.encryption.keyFile: aosctl sign does not encrypt images; use aos-signer")
            architecture = (image.get("archInfo") or {}).get("architecture")
            own = image.get("path") or image.get("sourceFolder")
            if not (item_folder or own):
                if not (codename and architecture):
                    raise InputError(f"{where}: no sourceFolder or path, and no codename and architecture to derive it")
                relative = f"{codename}/{architecture}"
            else:
                relative = "/".join(str(part) for part in (item_folder, own or architecture) if part)
            relative = relative.strip("/")
            if not relative or any(part in ("", ".", "..") for part in relative.split("/")):
                raise InputError(f"{where}: the image path {relative!r} must stay inside the bundle directory")
            source = bundle_dir / relative
            if source.is_dir() and not source.is_symlink():
                members += _tree_members(source, relative, "copy")
            elif source.is_file() and not source.is_symlink():
                members.append(Member(relative, EntryKind.FILE, 0o644, source=source))
            else:
                raise InputError(f"{source}: the image of {where} does not exist (or is a link)")
        folder = str(item_folder or codename)
        state = _state_member(item, bundle_dir / folder, f"{folder}/default_state.dat")
        members += [state] if state else []
    publish = config.get("publish") or {}
    fields = [("publish.tlsKey", str(publish.get("tlsKey") or ""))]
    return BundlePlan("batch.tar.gz", members, fields, Path("batch.tar.gz"))


# --- writing -------------------------------------------------------------------------------------


def _tar_info(name: str, kind: EntryKind, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"./{name}" if name != "." else ".")
    info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = mode, 0, 0, "", "", 0
    if kind is EntryKind.DIRECTORY:
        info.type = tarfile.DIRTYPE
    elif kind is EntryKind.SYMLINK:
        info.type, info.linkname = tarfile.SYMTYPE, link
    else:
        info.size = size
    return info


def write_tar_gz(path: Path, members: list[Member], extra: dict[str, bytes]) -> None:
    """A reproducible tar.gz of `members` plus in-memory files, with every parent directory."""
    by_name: dict[str, Member] = {}
    for member in members:
        for parent in _parents(member.name):
            by_name.setdefault(parent, Member(parent, EntryKind.DIRECTORY, 0o755))
        if member.name in by_name and by_name[member.name].kind is not EntryKind.DIRECTORY:
            raise InputError(f"{member.name}: two images or files of the bundle land on the same path")
        by_name[member.name] = member
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
            archive.addfile(_tar_info(".", EntryKind.DIRECTORY, 0o755))
            names = sorted({*by_name, *extra}, key=lambda name: name.encode())
            for name in names:
                if name in extra:
                    archive.addfile(_tar_info(name, EntryKind.FILE, 0o644, len(extra[name])), io.BytesIO(extra[name]))
                    continue
                member = by_name[name]
                if member.kind is EntryKind.FILE and member.source is not None:
                    with member.source.open("rb") as stream:
                        size = os.fstat(stream.fileno()).st_size
                        archive.addfile(_tar_info(name, member.kind, member.mode, size), stream)
                else:
                    archive.addfile(_tar_info(name, member.kind, member.mode, link=member.link_target))


def file_details(path: Path) -> dict[str, Any]:
    digest = hashlib.sha3_512()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return {"name": path.name, "hash": digest.hexdigest(), "size": path.stat().st_size}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_rs256(payload: dict[str, Any], credentials: Credentials) -> str:
    """A compact JWS, RS256, with the header PyJWT (aos-signer's library) writes: sorted keys."""
    header = {"alg": "RS256", "kid": credentials.kid, "typ": "JWT"}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
        + "."
        + _b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = credentials.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


@dataclass(frozen=True)
class SignedBundle:
    output: Path
    archive: dict[str, Any]
    config: dict[str, Any]
    kid: str


def sign_bundle(path: Path, *, output: Path | None = None, credentials: Credentials | None = None) -> SignedBundle:
    """Validate the service's config for upload, lay out the bundle, sign it, write it."""
    config_path = find_config(path)
    if credentials is None:
        result = read_config(path, check_upload=True)
    else:  # the credentials come from the command line, so the config need not name them
        result = read_config(path, check_upload=False)
    if result.errors:
        raise ConfigError(result.issues)
    config_bytes = config_path.read_bytes()
    document, issues = load_yaml_text(decode(config_bytes, str(config_path)), str(config_path))
    if issues or not isinstance(document.data, dict):
        raise ConfigError(issues)
    config = document.data
    config_dir = config_path.parent
    if result.dialect == 1:
        plan = plan_v1(config, base_dir_of(config_path), config_dir)
    else:
        plan = plan_v2(config, config_dir)
        plan = BundlePlan(plan.archive_name, plan.members, plan.credential_fields, config_dir / plan.default_output)
    if credentials is None:
        fields = dict(plan.credential_fields)
        if "build.sign_pkcs12" in fields or "publish.tlsKey" in fields:
            field, value = plan.credential_fields[0]
            if not value:
                raise InputError(f"{config_path}: {field} is not set", hint="set it, or pass --pkcs12 FILE")
            credentials = credentials_from_pkcs12(find_credential(value, config_dir, field))
        else:
            key = find_credential(fields["build.sign_key"], config_dir, "build.sign_key")
            certificate = find_credential(fields["build.sign_certificate"], config_dir, "build.sign_certificate")
            credentials = credentials_from_files(key, certificate)
    target = output or plan.default_output
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".aosctl-sign-") as scratch:
        inner = Path(scratch) / plan.archive_name
        write_tar_gz(inner, plan.members, {"config.yaml": config_bytes})
        (Path(scratch) / "config.yaml").write_bytes(config_bytes)
        archive_details, config_details = file_details(inner), file_details(Path(scratch) / "config.yaml")
        token = jwt_rs256({"data": [archive_details, config_details]}, credentials)
        outer = Path(scratch) / ".bundle.partial"
        inner_member = Member(plan.archive_name, EntryKind.FILE, 0o644, source=inner)
        write_tar_gz(outer, [inner_member], {"config.yaml": config_bytes, "package.sign": token.encode()})
        os.replace(outer, target)
    return SignedBundle(target, archive_details, config_details, credentials.kid)
