"""`aosctl inspect DIR|ARCHIVE|LAYOUT|REF`: what a package holds, without running it: its
manifest, image config and Aos service config, with the quotas in human units."""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.cli import packages
from aos_operator.cli.common import build_options, quiet_option, registry, registry_options
from aos_operator.cli.output import add_output_option, emit, result, structured
from aos_operator.digests import sha256_digest
from aos_operator.errors import EXIT_OK, InputError, PackageError
from aos_operator.registry.reference import Reference
from aos_operator.service.units import human_bytes

_BYTE_QUOTAS = ("ramLimit", "tmpLimit", "stateLimit", "storageLimit", "uploadLimit", "downloadLimit")
_SPEED_QUOTAS = ("uploadSpeed", "downloadSpeed")
_MAX_CONFIG_BYTES = 4 << 20


def human_quotas(quotas: dict[str, Any]) -> dict[str, str]:
    shown: dict[str, str] = {}
    for key, value in quotas.items():
        if not isinstance(value, int) or isinstance(value, bool):
            shown[key] = str(value)
        elif key in _BYTE_QUOTAS:
            shown[key] = human_bytes(value)
        elif key in _SPEED_QUOTAS:
            shown[key] = f"{value} kbit/s"
        elif key == "cpuDmipsLimit":
            shown[key] = f"{value} DMIPS"
        else:
            shown[key] = str(value)
    return shown


def _from_registry(args: argparse.Namespace) -> dict[str, Any]:
    reference = Reference.parse(args.target)
    with registry(args) as client, tempfile.TemporaryDirectory(prefix="aosctl-inspect-") as scratch:
        manifest = client.pull_manifest(args.target)
        document = parse_json(manifest.data)
        configs = {}
        for field in ("config", "aosService"):
            descriptor = document.get(field)
            if not isinstance(descriptor, dict):
                continue
            size = descriptor.get("size")
            if not isinstance(size, int) or size > _MAX_CONFIG_BYTES:
                raise PackageError(f"{args.target}: the manifest's {field} is over {_MAX_CONFIG_BYTES} bytes or has no size")
            path = Path(scratch) / field
            client.pull_blob(reference, descriptor["digest"], size, path)
            configs[field] = parse_json(path.read_bytes())
        return {"source": args.target, "sourceKind": "registry", "manifestDigest": manifest.digest,
                "manifest": document, "imageConfig": configs.get("config", {}),
                "serviceConfig": configs.get("aosService", {})}


def describe(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.target)
    if not path.exists():
        if "/" not in args.target:
            raise InputError(f"{args.target}: no such file or directory, and not an image reference")
        return _from_registry(args)
    with tempfile.TemporaryDirectory(prefix="aosctl-inspect-") as scratch:
        package = packages.open_input(args, path, Path(scratch))
        manifest = parse_json(package.manifest_bytes)
        return {"source": str(path), "sourceKind": "service" if packages.is_service_dir(path) else package.kind,
                "manifestDigest": sha256_digest(package.manifest_bytes), "manifest": manifest,
                "imageConfig": package.image_config(), "serviceConfig": package.service_config()}


def cmd_inspect(args: argparse.Namespace) -> int:
    info = describe(args)
    quotas = info["serviceConfig"].get("quotas") or {}
    info["quotas"] = human_quotas(quotas) if isinstance(quotas, dict) else {}
    if structured(args):
        emit(args, "PackageInfo", info)
        return EXIT_OK
    image, settings = info["imageConfig"], info["imageConfig"].get("config") or {}
    layers = info["manifest"].get("layers") or []
    command = shlex.join([*(settings.get("Entrypoint") or []), *(settings.get("Cmd") or [])]) or "(none)"
    lines = [
        f"package    {info['manifestDigest']}  ({info['sourceKind']}: {info['source']})",
        f"platform   {image.get('os', '?')}/{image.get('architecture', '?')}"
        + (f"/{image['variant']}" if image.get("variant") else ""),
        f"author     {image.get('author') or info['serviceConfig'].get('author') or '-'}",
        f"command    {command}",
        f"workdir    {settings.get('WorkingDir') or '/'}",
    ]
    for variable in settings.get("Env") or []:
        lines.append(f"env        {variable}")
    for layer in layers:
        line = f"layer      {layer.get('digest')} {human_bytes(int(layer.get('size') or 0))}"
        annotations = layer.get("annotations") if isinstance(layer.get("annotations"), dict) else {}
        if "io.aosedge.layer.uid" in annotations:  # an Aos layer (layers[1..]); the text is the package's
            uid, version = (_printable(annotations.get(key)) for key in ("io.aosedge.layer.uid", "io.aosedge.layer.version"))
            line += f"  aos layer {uid} {version}"
        lines.append(line)
    lines.append("quotas     " + (", ".join(f"{k} {v}" for k, v in info["quotas"].items()) or "none"))
    run = info["serviceConfig"].get("runParameters") or {}
    if run:
        lines.append("restarts   " + ", ".join(f"{k} {v}" for k, v in sorted(run.items())))
    result("\n".join(lines))
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    inspect = commands.add_parser(
        "inspect", help="show a package's manifest, image config, service config and quotas",
        description="Show what a package holds: its digest, platform, command, layers, and the service config's "
        "quotas in human units. A service directory is built first (with the build cache); a reference is "
        "read from the registry without its layers. --output json gives the documents whole.")
    inspect.add_argument("target", metavar="DIR|ARCHIVE|LAYOUT|REF",
                         help="service directory, package archive or directory, OCI layout, or registry reference")
    build_options(inspect)
    registry_options(inspect)
    quiet_option(inspect, "no build progress")
    add_output_option(inspect)
    inspect.set_defaults(func=cmd_inspect)


def _printable(value: object) -> str:
    return "".join(character for character in str(value) if character.isprintable())[:64]
