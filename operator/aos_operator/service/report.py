"""Collects the issues found in one config file, each with its line and field path."""

from __future__ import annotations

from aos_operator.errors import Issue
from aos_operator.service.yamlfile import LoadedYaml, Path, render_path


class Reporter:
    def __init__(self, document: LoadedYaml) -> None:
        self.document = document
        self.issues: list[Issue] = []

    def _add(self, path: Path, message: str, severity: str) -> None:
        self.issues.append(
            Issue(self.document.file, self.document.line_of(tuple(path)), render_path(path), message, severity)
        )

    def error(self, path: Path, message: str) -> None:
        self._add(path, message, "error")

    def warning(self, path: Path, message: str) -> None:
        self._add(path, message, "warning")

    @property
    def has_errors(self) -> bool:
        return any(issue.severity == "error" for issue in self.issues)
