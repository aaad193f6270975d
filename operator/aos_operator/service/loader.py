"""Reading a service: find config.yaml, tell its dialect, validate it, and describe the service.

This is the front door of the `service` room: the CLI, the image build and the operator read
services only through `read_config`, `parse_config_data` and `load_service`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from aos_operator.errors import ConfigError, InputError, Issue
from aos_operator.service import config_v1 as v1
from aos_operator.service import config_v2 as v2
from aos_operator.service import normalize
from aos_operator.service.description import ServiceDescription
from aos_operator.service.report import Reporter
from aos_operator.service.validation_errors import report_validation_error
from aos_operator.bounded import read_limited
from aos_operator.service.yamlfile import MAX_BYTES, LoadedYaml, decode, load_yaml_text, too_large

CONFIG_NAME = "config.yaml"


@dataclass
class ConfigResult:
    """Everything learned from one config: the dialect, the model, the services and the issues."""

    file: str
    base_dir: Path | None
    dialect: int | None = None
    model: v1.ConfigV1 | v2.ConfigV2 | None = None
    services: list[ServiceDescription] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]

    @property
    def valid(self) -> bool:
        return not self.errors


def find_config(path: Path) -> Path:
    """The config.yaml for PATH: the file itself, DIR/meta/config.yaml, or DIR/config.yaml."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        for candidate in (path / "meta" / CONFIG_NAME, path / CONFIG_NAME):
            if candidate.is_file():
                return candidate
        raise InputError(
            f"{path}: no meta/{CONFIG_NAME} or {CONFIG_NAME} in this directory",
            hint="give a service directory (holding meta/config.yaml) or the config.yaml file",
        )
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    return path


def base_dir_of(config_path: Path) -> Path:
    """Source folders are relative to the service directory, the parent of `meta/`."""
    parent = config_path.parent
    return parent.parent if parent.name == "meta" else parent


def detect_dialect(data: dict[Any, Any]) -> int:
    if "schemaVersion" in data:
        return 2
    # aos-signer 2.x defaults schemaVersion to 2, so a config with items and without the
    # version-1 sections is a version-2 config that forgot the key.
    if "items" in data and not {"build", "publish", "configuration"} & set(data):
        return 2
    return 1


def _warn_unknown_keys(model: BaseModel, path: tuple[Any, ...], report: Reporter) -> None:
    """Schema version 2 ignores unknown keys; say so, since a typo there is silent otherwise."""
    known = [info.alias or name for name, info in type(model).model_fields.items()]
    for key in (model.model_extra or {}):
        close = difflib.get_close_matches(str(key), known, n=1) if len(str(key)) <= 100 else []
        if close:
            message = f"unknown key, ignored by AosEdge; did you mean {close[0]!r}?"
        else:
            message = f"unknown key, ignored by AosEdge; known here: {', '.join(known)}"
        report.warning(path + (key,), message)
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        key = info.alias or name
        values = value if isinstance(value, list) else [value]
        for index, child in enumerate(values):
            if isinstance(child, BaseModel):
                child_path = path + ((key, index) if isinstance(value, list) else (key,))
                _warn_unknown_keys(child, child_path, report)


def _validate(document: LoadedYaml, report: Reporter, result: ConfigResult, check_upload: bool) -> None:
    data = document.data
    if data is None:
        report.error((), "the file is empty; a config.yaml is a mapping (build, publish, configuration)")
        return
    if not isinstance(data, dict):
        report.error((), "the top level must be a mapping of keys (build, publish, configuration, ...)")
        return
    result.dialect = detect_dialect(data)
    if result.dialect == 2 and "schemaVersion" not in data:
        report.warning((), "no schemaVersion: read as schema version 2 because it has items; add `schemaVersion: 2`")
    model_class: type[BaseModel] = v1.ConfigV1 if result.dialect == 1 else v2.ConfigV2
    try:
        model = model_class.model_validate(data)
    except ValidationError as error:
        report_validation_error(error, data, model_class, report)
        return
    except (ValueError, TypeError) as error:  # a validator met a value it cannot handle
        report.error((), f"cannot validate: {error}")
        return
    result.model = model
    try:
        _describe(model, report, result, check_upload)
    except ValueError as error:  # a rule met a value the field checks let through: report, never crash
        report.error((), f"cannot interpret the config: {error}")


def _describe(model: v1.ConfigV1 | v2.ConfigV2, report: Reporter, result: ConfigResult, check_upload: bool) -> None:
    if isinstance(model, v1.ConfigV1):
        description = normalize.from_v1(model, report, check_upload=check_upload)
        if not report.has_errors:
            result.services.append(description)
        return
    _warn_unknown_keys(model, (), report)
    for index, item in enumerate(model.items):
        if normalize.is_service_item(item):
            description = normalize.from_v2_item(model, index, report)
            if not report.has_errors:
                result.services.append(description)


def parse_document(document: LoadedYaml, *, base_dir: Path | None = None, check_upload: bool = True) -> ConfigResult:
    result = ConfigResult(file=document.file, base_dir=base_dir)
    report = Reporter(document)
    _validate(document, report, result, check_upload)
    result.issues = sorted(report.issues, key=lambda issue: (issue.line or 0, issue.field))
    if result.errors:
        result.services = []
    return result


def parse_config_text(
    text: str, file: str, *, base_dir: Path | None = None, check_upload: bool = True
) -> ConfigResult:
    document, load_issues = load_yaml_text(text, file)
    result = parse_document(document, base_dir=base_dir, check_upload=check_upload)
    if load_issues:
        result.issues = load_issues + result.issues
        result.services = []
    return result


def parse_config_data(data: Any, source: str, *, check_upload: bool = False) -> ConfigResult:
    """Validate a config that arrives as data (an AosService's spec.config), not as a file."""
    return parse_document(LoadedYaml(data, source), check_upload=check_upload)


def read_config(path: Path, *, check_upload: bool = True) -> ConfigResult:
    config_path = find_config(path)
    try:
        # the size first: a sparse multi-gigabyte file is refused without being read
        raw = read_limited(config_path, MAX_BYTES, lambda size: too_large(str(config_path), size))
    except OSError as error:
        raise InputError(f"{config_path}: cannot read: {error.strerror}") from None
    text = decode(raw, str(config_path))
    return parse_config_text(text, str(config_path), base_dir=base_dir_of(config_path), check_upload=check_upload)


def select_service(result: ConfigResult, item: str | None = None) -> ServiceDescription:
    """The one service of a config, or the item named by its code name."""
    if result.errors:
        raise ConfigError(result.issues)
    if not result.services:
        raise InputError(f"{result.file}: no service in this config (items of type `service`)")
    if item is None:
        if len(result.services) > 1:
            names = ", ".join(service.name or "?" for service in result.services)
            raise InputError(f"{result.file}: several services ({names}); choose one with --item CODENAME")
        return result.services[0]
    for service in result.services:
        if service.name == item:
            return service
    raise InputError(f"{result.file}: no service item with codename {item!r}")


def load_service(path: Path, *, item: str | None = None) -> tuple[ServiceDescription, ConfigResult]:
    """Read and validate a service for building or running (signing credentials are not needed)."""
    result = read_config(path, check_upload=False)
    return select_service(result, item), result
