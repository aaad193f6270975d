"""`aosctl digest`, `ls`, `login` and `logout`: questions to a registry, and its credentials kept
where docker keeps them."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from aos_operator.cli.common import registry, registry_options
from aos_operator.cli.output import add_output_option, emit, note, result, structured
from aos_operator.errors import EXIT_OK, InputError
from aos_operator.registry.credentials import Credentials, default_config_path, erase_credentials, store_credentials
from aos_operator.registry.reference import Reference


def cmd_digest(args: argparse.Namespace) -> int:
    Reference.parse(args.reference)
    with registry(args) as client:
        manifest = client.pull_manifest(args.reference)
    if structured(args):
        emit(args, "Digest", {"reference": args.reference, "digest": manifest.digest, "mediaType": manifest.media_type})
        return EXIT_OK
    result(manifest.digest)
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    reference = Reference.parse(args.repository)
    if reference.tag or reference.digest:
        raise InputError(f"{args.repository}: give a repository without a tag or digest",
                         hint=f"aosctl ls {reference.registry}/{reference.repository}")
    with registry(args) as client:
        tags = client.list_tags(reference)
    if structured(args):
        emit(args, "TagList", {"repository": args.repository, "tags": tags})
        return EXIT_OK
    for tag in tags:
        result(tag)
    return EXIT_OK


def _registry_host(text: str) -> str:
    host = text
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    host = host.rstrip("/")
    if not host or "/" in host or any(ch.isspace() for ch in host):
        raise InputError(f"{text!r}: not a registry host", hint="give HOST[:PORT], e.g. localhost:5000")
    return host


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        secret = getpass.getpass("Password: ")
    else:
        raise InputError("no password: pass --password-stdin and write it on stdin, or run on a terminal")
    if not secret:
        raise InputError("the password is empty")
    return secret


def cmd_login(args: argparse.Namespace) -> int:
    host = _registry_host(args.registry)
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise InputError("no user name: pass --username NAME")
        username = input("Username: ").strip()
    credentials = Credentials(username, _password(args))
    args.auth = None  # the check uses the new credentials only
    client = registry(args, docker_defaults=False)
    client.transport.credentials = credentials
    with client:
        client.check_login(host)
    path = Path(args.config) if args.config else default_config_path()
    where = store_credentials(host, credentials, path)
    if structured(args):
        emit(args, "Login", {"registry": host, "username": username, "storedIn": where})
        return EXIT_OK
    note(args, f"aosctl: credentials for {host} stored in {where}")
    result("Login Succeeded")
    return EXIT_OK


def cmd_logout(args: argparse.Namespace) -> int:
    host = _registry_host(args.registry)
    path = Path(args.config) if args.config else default_config_path()
    removed = erase_credentials(host, path)
    if structured(args):
        emit(args, "Logout", {"registry": host, "removed": removed})
        return EXIT_OK
    note(args, f"aosctl: {'removed' if removed else 'there were no'} credentials for {host} in {path}")
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    digest = commands.add_parser(
        "digest", help="print the manifest digest a reference names",
        description="Ask the registry for REF's manifest and print its digest (verified against the bytes).")
    digest.add_argument("reference", metavar="REF", help="registry/repository:tag")
    registry_options(digest)
    add_output_option(digest)
    digest.set_defaults(func=cmd_digest)

    ls = commands.add_parser("ls", help="list a repository's tags",
                             description="Print the tags of REPO, one a line, sorted.")
    ls.add_argument("repository", metavar="REPO", help="registry/repository, e.g. localhost:5000/aos/hello")
    registry_options(ls)
    add_output_option(ls)
    ls.set_defaults(func=cmd_ls)

    config_help = "docker config.json to write (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)"
    login = commands.add_parser(
        "login", help="log in to a registry and store the credentials as docker does",
        description="Check the credentials against REGISTRY, then store them where `docker login` would: in the "
        "credential helper config.json names for it (credHelpers, credsStore), else base64 in its auths. "
        "push, pull, run, inspect, digest and ls then use them.")
    login.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT] of the registry")
    login.add_argument("--username", "-u", metavar="NAME", help="user name (asked on a terminal if not given)")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of stdin (else asked on a terminal)")
    login.add_argument("--config", metavar="FILE", help=config_help)
    group = login.add_argument_group("registry options")
    group.add_argument("--insecure", action="store_true", help="plain HTTP to the registry")
    group.add_argument("--ca", metavar="FILE", help="CA bundle for the registry's TLS certificate")
    add_output_option(login)
    login.set_defaults(func=cmd_login)

    logout = commands.add_parser(
        "logout", help="forget a registry's credentials",
        description="Remove REGISTRY's credentials from config.json and from its credential helper.")
    logout.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT] of the registry")
    logout.add_argument("--config", metavar="FILE", help=config_help)
    add_output_option(logout)
    logout.set_defaults(func=cmd_logout)
