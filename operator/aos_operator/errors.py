"""The project's one error hierarchy.

Every error says what was wrong, where (file, line, field path, digest, reference) and what to
do. The CLI turns them into messages and exit codes; nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass

# Exit codes of `aosctl`, shared by every command.
EXIT_OK = 0
EXIT_INVALID = 1  # the input was read but is not acceptable (config, tree, package)
EXIT_UNREADABLE = 2  # the input could not be read at all, or the command line is wrong
EXIT_FAILED = 3  # the environment failed us (registry, runc, kernel), not the input
EXIT_INTERRUPTED = 130


# How much of a value from the input a message repeats: enough to recognise it, never megabytes.
MAX_ECHO = 64
_MAX_FIELD = 200
_MAX_MESSAGE = 600


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to at most `limit` characters, with an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def shorten_middle(text: str, limit: int) -> str:
    """`text` cut in the middle to at most `limit` characters, so its start and its advice stay."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    return text[: limit - tail - 5] + " ... " + text[-tail:]


class AosError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InputError(AosError):
    """An input file or directory is missing, unreadable, or not of the expected kind."""

    exit_code = EXIT_UNREADABLE


@dataclass(frozen=True)
class Issue:
    """One problem found in a config: where it is and what is wrong with it."""

    file: str
    line: int | None
    field: str
    message: str
    severity: str = "error"  # "error" or "warning"

    def __post_init__(self) -> None:
        # Every issue passes here: a hostile config cannot make a message megabytes long.
        object.__setattr__(self, "field", shorten_middle(self.field, _MAX_FIELD))
        object.__setattr__(self, "message", shorten_middle(self.message, _MAX_MESSAGE))

    def render(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        field = f" {self.field}:" if self.field else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}:{field} {prefix}{self.message}"


class ConfigError(AosError):
    """A config.yaml (or an AosService spec.config) is invalid; carries every issue found."""

    exit_code = EXIT_INVALID

    def __init__(self, issues: list[Issue]) -> None:
        errors = [issue for issue in issues if issue.severity == "error"]
        super().__init__("\n".join(issue.render() for issue in errors))
        self.issues = issues

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]


class BuildError(AosError):
    """The source tree cannot be packaged as it is (a hostile link, a device node, ...)."""

    exit_code = EXIT_INVALID


class PackageError(AosError):
    """A service package is malformed or does not match its digests."""

    exit_code = EXIT_INVALID


class RegistryError(AosError):
    """An OCI registry refused or failed a request."""

    exit_code = EXIT_FAILED


class SignatureError(AosError):
    """A package's signature is missing, made with another key, or over another digest; or a
    signing key or certificate cannot be used. The package is refused, nothing of it is used."""

    exit_code = EXIT_INVALID
    reason = "SignatureInvalid"


class RuntimeFailure(AosError):
    """Running a service failed: runc, mounts, cgroups or the kernel said no."""

    exit_code = EXIT_FAILED


class SpecError(AosError):
    """A resource's spec (e.g. AosService spec.strategy) holds a value the schema lets through
    but that cannot be used, or a command names a revision or resource that does not exist."""

    exit_code = EXIT_INVALID
