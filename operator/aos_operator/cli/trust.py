"""`aosctl sign`, and the signing and verification steps of `push` and `run` (see trust/)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aos_operator.cli.output import note, result
from aos_operator.errors import EXIT_OK, InputError
from aos_operator.registry import RegistryClient


def signing_key(args: argparse.Namespace) -> Any:
    """The key of --sign-key, read before anything is pushed, so a bad key pushes nothing."""
    from aos_operator.trust.keys import load_signing_key

    return load_signing_key(Path(args.sign_key)) if getattr(args, "sign_key", None) else None


def sign_pushed(args: argparse.Namespace, client: RegistryClient, reference: str, digest: str, size: int,
                key: Any) -> None:
    from aos_operator.trust.store import attach_signature

    attached = attach_signature(client, reference, digest, size, key)
    where = attached.tag + (f" and referrer {attached.referrer}" if attached.referrer else "")
    state = "already signed by this key at" if attached.already_signed else "signed:"
    note(args, f"{state} {where}")


def verify_before_pull(args: argparse.Namespace, client: RegistryClient) -> str:
    """The reference to pull: by digest, after its signature was checked when keys are given."""
    from aos_operator.registry.reference import Reference
    from aos_operator.trust.store import verify_package
    from aos_operator.trust.verify import VerificationPolicy

    policy = VerificationPolicy.load(None, args.verify_key or [])
    if not policy.required:
        return args.target
    reference = Reference.parse(args.target)
    digest = reference.digest or client.pull_manifest(reference).digest
    verdict = verify_package(client, reference, digest, policy)
    if verdict is not None:
        note(args, f"aosctl: {reference.repository_name}@{digest}: signature by {verdict.key.key_id} verified")
    return str(reference.with_digest(digest))


def refuse_local_verify(args: argparse.Namespace) -> None:
    if getattr(args, "verify_key", None):
        raise InputError(f"{args.target}: --verify-key checks signatures in a registry; pass a registry reference")


def cmd_sign(args: argparse.Namespace) -> int:
    """The AosCloud upload bundle, as `aos-signer sign` writes it."""
    from aos_operator.trust.bundle import credentials_from_files, credentials_from_pkcs12, sign_bundle

    if bool(args.key) != bool(args.cert) or (args.pkcs12 and args.key):
        raise InputError("pass --pkcs12 FILE, or --key FILE with --cert FILE (or neither: the config names them)")
    credentials = None
    if args.pkcs12:
        credentials = credentials_from_pkcs12(Path(args.pkcs12))
    elif args.key:
        credentials = credentials_from_files(Path(args.key), Path(args.cert))
    signed = sign_bundle(Path(args.path), output=Path(args.output) if args.output else None, credentials=credentials)
    note(args, f"signed {signed.archive['name']} ({signed.archive['size']} bytes) and config.yaml")
    result(str(signed.output))
    return EXIT_OK


def sign_key_option(command: argparse.ArgumentParser, default: str | None = None) -> None:
    command.add_argument("--sign-key", metavar="KEY", default=default,
                         help="sign the package as cosign does (PEM or cosign.key; password from $COSIGN_PASSWORD)")


def verify_key_option(command: argparse.ArgumentParser, default: list[str] | None = None) -> None:
    command.add_argument("--verify-key", action="append", metavar="KEY", default=default,
                         help="refuse a registry package without a valid cosign signature by this public key "
                         "(file or directory of them; repeatable)")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sign = commands.add_parser(
        "sign", help="write the signed upload bundle for AosCloud, as aos-signer sign does",
        description="Validate the config for upload, then write the bundle aos-signer writes: the archive of the "
        "service (schema version 1: service.tar.gz; version 2: batch.tar.gz), config.yaml, and package.sign (a JWT, "
        "RS256, over their SHA3-512 hashes). Credentials: the config's, or --pkcs12, or --key and --cert. "
        "Exit 0 signed, 1 invalid config or credentials, 2 unreadable input.",
    )
    sign.add_argument("path", metavar="DIR", help="service directory (meta/config.yaml + src/) or a version-2 bundle directory")
    sign.add_argument("-o", "--output", metavar="FILE", help="where the bundle goes (default: where aos-signer puts it)")
    sign.add_argument("--pkcs12", metavar="FILE", help="aos-user-sp.p12 (passwordless PKCS#12 from AosCloud)")
    sign.add_argument("--key", metavar="FILE", help="PEM RSA private key (with --cert)")
    sign.add_argument("--cert", metavar="FILE", help="PEM certificate of --key")
    sign.add_argument("--quiet", "-q", action="store_true", help="no notes on stderr; print only the bundle's path")
    sign.set_defaults(func=cmd_sign)
