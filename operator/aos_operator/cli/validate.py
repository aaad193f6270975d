"""`aosctl validate` (one or more configs, as `helm lint` takes charts) and `aosctl schema`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from aos_operator.cli.output import add_output_option, emit, structured
from aos_operator.errors import EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE, AosError, Issue
from aos_operator.packaging import check_source_folders
from aos_operator.service import ConfigResult, ServiceDescription, image_config, read_config, service_config
from aos_operator.service.schema import config_json_schema
from aos_operator.service.units import human_bytes


def quota_summary(service: ServiceDescription) -> str:
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
        parts.append("(skipResourceLimits: enforced on the device, not reserved when placing)")
    return ", ".join(parts) or "none"


def service_summary(service: ServiceDescription) -> list[str]:
    identity = service.name or service.service_id or "(unnamed)"
    lines = [f"  service    {identity} {service.version}"]
    if service.name and service.service_id:
        lines.append(f"  id         {service.service_id}")
    for image in service.images:
        command = shlex.join(image.command) if image.command else "(none)"
        lines.append(f"  image      {image.platform.label()} from {image.source_folder}/")
        lines.append(f"  command    {command}")
        lines.append(f"  workdir    {image.working_dir or '/'}")
    lines.append(f"  quotas     {quota_summary(service)}")
    instances = service.instances
    lines.append(f"  instances  {instances.min_instances} per unit, priority {instances.priority}")
    return lines


def result_json(result: ConfigResult, strict: bool) -> dict[str, Any]:
    return {
        "file": result.file,
        "dialect": result.dialect,
        "valid": result.valid and not (strict and result.warnings),
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


def source_key(result: ConfigResult, image: object) -> str:
    """The config key that names an image's source folder, for messages."""
    named = getattr(image, "source_key", None)
    if named:
        return str(named)
    if result.dialect == 1:
        return "build.source_folder"
    return f"sourceFolder (or path) of the {image.platform.label()} image"  # type: ignore[attr-defined]


def check_source_folders_exist(result: ConfigResult, service_directory: bool) -> ConfigResult:
    """A source folder that is not there cannot be built: an error for a service directory, a
    warning for a lone config.yaml (which may be checked away from its files)."""
    if result.base_dir is None:
        return result
    for service in result.services:
        for image in service.images:
            folder = result.base_dir / image.source_folder
            if not folder.is_dir():
                result.issues.append(Issue(
                    result.file, None, source_key(result, image),
                    f"the source folder {image.source_folder or '.'}/ does not exist in {result.base_dir}; "
                    "create it or name the folder that holds the image's files",
                    "error" if service_directory else "warning"))
    return result


def read_checked(path: Path, *, local: bool) -> ConfigResult:
    """What validate reports on: the config's own checks, then what it refers to on disk."""
    result = check_source_folders(read_config(path, check_upload=not local))
    in_service_directory = path.is_dir() or path.parent.name == "meta"
    return check_source_folders_exist(result, in_service_directory)


def _unreadable_json(path: str, error: AosError) -> dict[str, Any]:
    issue = {"file": path, "line": None, "field": "", "message": error.message, "severity": "error"}
    return {"file": path, "dialect": None, "valid": False, "unreadable": True, "issues": [issue], "services": []}


def cmd_validate(args: argparse.Namespace) -> int:
    if args.json:
        args.output_format = "json"
    codes: list[int] = []
    documents: list[dict[str, Any]] = []
    for path in args.paths:
        try:
            result = read_checked(Path(path), local=args.local)
        except AosError as error:
            codes.append(EXIT_UNREADABLE)
            if structured(args):
                documents.append(_unreadable_json(path, error))
            else:
                print(f"aosctl: {error}", file=sys.stderr)
            continue
        failed = not result.valid or (args.strict and bool(result.warnings))
        codes.append(EXIT_INVALID if failed else EXIT_OK)
        if structured(args):
            documents.append(result_json(result, args.strict))
        else:
            _print_result(result, args.strict)
    code = max(codes) if codes else EXIT_OK
    if structured(args):
        if len(args.paths) == 1:
            emit(args, "ValidationResult", documents[0])
        else:
            emit(args, "ValidationResults", {"valid": code == EXIT_OK, "results": documents})
        args._document_written = True
    return code


def _print_result(result: ConfigResult, strict: bool) -> None:
    """Issues go to stderr (messages of the tool); the verdict and summary to stdout (the result)."""
    for issue in result.issues:
        print(issue.render(), file=sys.stderr)
    if not result.valid:
        count = len(result.errors)
        print(f"{result.file}: invalid, {count} error{'s' if count != 1 else ''}")
        return
    if strict and result.warnings:
        count = len(result.warnings)
        print(f"{result.file}: invalid with --strict, {count} warning{'s' if count != 1 else ''}")
        return
    print(f"{result.file}: valid (schema version {result.dialect})")
    if not result.services:
        print("  no service items (identity.type: service) in this config")
    for service in result.services:
        print("\n".join(service_summary(service)))


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2))
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    validate = commands.add_parser(
        "validate",
        help="check service configs (config.yaml, schema version 1 or 2)",
        description="Check one or more config.yaml files as AosEdge's aos-signer does, and summarize each "
        "service. Problems are listed on stderr as FILE:LINE: field: problem; the verdict and summary go to "
        "stdout. Exit 0: all valid; 1: one is invalid (or has warnings, with --strict); 2: one is unreadable.",
    )
    validate.add_argument("paths", nargs="+", metavar="PATH",
                          help="service directory (with meta/config.yaml) or config.yaml; several are allowed")
    validate.add_argument("--strict", action="store_true", help="warnings fail too (exit 1), as in `helm lint --strict`")
    validate.add_argument("--json", action="store_true",
                          help="the same as --output json: the normalized description and generated configs")
    validate.add_argument(
        "--local",
        action="store_true",
        help="skip the AosCloud signing and upload credential checks (not needed to build or run)",
    )
    add_output_option(validate)
    validate.set_defaults(func=cmd_validate)

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of config.yaml, for editors",
        description="Print a JSON Schema (draft 2020-12) of config.yaml covering both schema versions, for "
        "editors such as VS Code (yaml.schemas). KIND defaults to config, the only kind.")
    schema.add_argument("kind", nargs="?", default="config", choices=["config"],
                        help="config: config.yaml, both schema versions (default)")
    schema.set_defaults(func=cmd_schema)
