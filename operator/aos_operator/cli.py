"""`aosctl`: the command line of the project (validate, schema, build, push, pull, run, operator, agent)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aos_operator import __version__
from aos_operator.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE, AosError
from aos_operator.service import ConfigResult, ServiceDescription, image_config, read_config, service_config
from aos_operator.service.schema import config_json_schema
from aos_operator.service.units import human_bytes

Command = Callable[[argparse.Namespace], int]


# --- validate and schema -------------------------------------------------------------------------


def _quota_summary(service: ServiceDescription) -> str:
    quotas = service.quotas
    parts = []
    if quotas.cpu_dmips is not None:
        parts.append(f"cpu {quotas.cpu_dmips} DMIPS")
    for label, value in (
        ("ram", quotas.ram),
        ("tmp", quotas.tmp),
        ("state", quotas.state),
        ("storage", quotas.storage),
        ("upload", quotas.upload_bytes),
        ("download", quotas.download_bytes),
    ):
        if value is not None:
            parts.append(f"{label} {human_bytes(value)}")
    for label, value in (("upload speed", quotas.upload_speed_kbits), ("download speed", quotas.download_speed_kbits)):
        if value is not None:
            parts.append(f"{label} {value} kbit/s")
    if quotas.pids is not None:
        parts.append(f"pids {quotas.pids}")
    if quotas.no_file is not None:
        parts.append(f"open files {quotas.no_file}")
    if service.skip_resource_limits:
        parts.append("(not enforced: skipResourceLimits)")
    return ", ".join(parts) or "none"


def _service_summary(service: ServiceDescription) -> list[str]:
    identity = service.name or service.service_id or "(unnamed)"
    lines = [f"  service    {identity} {service.version}"]
    if service.name and service.service_id:
        lines.append(f"  id         {service.service_id}")
    for image in service.images:
        command = shlex.join(image.command) if image.command else "(none)"
        lines.append(f"  image      {image.platform.label()} from {image.source_folder}/")
        lines.append(f"  command    {command}")
        lines.append(f"  workdir    {image.working_dir or '/'}")
    lines.append(f"  quotas     {_quota_summary(service)}")
    instances = service.instances
    lines.append(f"  instances  {instances.min_instances} per unit, priority {instances.priority}")
    return lines


def _result_json(result: ConfigResult) -> dict[str, Any]:
    return {
        "file": result.file,
        "dialect": result.dialect,
        "valid": result.valid,
        "issues": [issue.__dict__ for issue in result.issues],
        "services": [
            {
                "description": service.model_dump(mode="json"),
                "serviceConfig": service_config(service),
                "imageConfigs": {image.platform.label(): image_config(service, image) for image in service.images},
            }
            for service in result.services
        ],
    }


def cmd_validate(args: argparse.Namespace) -> int:
    result = read_config(Path(args.path), check_upload=not args.local)
    if args.json:
        print(json.dumps(_result_json(result), indent=2))
        return EXIT_OK if result.valid else EXIT_INVALID
    for issue in result.issues:
        print(issue.render())
    if not result.valid:
        count = len(result.errors)
        print(f"{result.file}: invalid, {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{result.file}: valid (schema version {result.dialect})")
    if not result.services:
        print("  no service items (identity.type: service) in this config")
    for service in result.services:
        print("\n".join(_service_summary(service)))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2))
    return EXIT_OK


def cmd_crds(args: argparse.Namespace) -> int:
    from aos_operator.api import crds

    if args.output:
        for path in crds.write_all(Path(args.output)):
            print(path)
    else:
        print("---\n".join(crds.render(kind) for kind in crds.KINDS), end="")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aosctl",
        description="Build, push and run AosEdge services; run the Kubernetes operator and device agent.",
    )
    parser.add_argument("--version", action="version", version=f"aosctl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = commands.add_parser(
        "validate",
        help="check a service's config.yaml (schema version 1 or 2)",
        description="Check a config.yaml as AosEdge's aos-signer does and summarize the service. "
        "Exit 0: valid; 1: invalid (every error is listed as FILE:LINE: field: problem); 2: unreadable.",
    )
    validate.add_argument("path", metavar="PATH", help="service directory (with meta/config.yaml) or config.yaml")
    validate.add_argument("--json", action="store_true", help="print the normalized description and generated configs")
    validate.add_argument(
        "--local",
        action="store_true",
        help="skip the AosCloud signing and upload credential checks (not needed to build or run)",
    )
    validate.set_defaults(func=cmd_validate)

    schema = commands.add_parser("schema", help="print JSON Schemas for editors")
    schema.add_argument("kind", choices=["config"], help="config: config.yaml (both schema versions)")
    schema.set_defaults(func=cmd_schema)

    crds = commands.add_parser("crds", help="print or write the CustomResourceDefinitions")
    crds.add_argument("--output", "-o", metavar="DIR", help="write one YAML file per CRD into DIR")
    crds.set_defaults(func=cmd_crds)
    return parser


def _run(command: Command, args: argparse.Namespace) -> int:
    try:
        return command(args)
    except AosError as error:
        print(f"aosctl: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("aosctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as error:  # a bug, not bad input: say so, keep the traceback for a report
        if os.environ.get("AOSCTL_DEBUG"):
            traceback.print_exc()
        print(
            f"aosctl: internal error: {type(error).__name__}: {error}\n"
            "  hint: this is a bug in aosctl; rerun with AOSCTL_DEBUG=1 and report the traceback",
            file=sys.stderr,
        )
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_UNREADABLE if exit_.code else 0
    return _run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
