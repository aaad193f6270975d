"""How every command reports: one rule for streams and one document shape.

Streams: the tool's own messages (progress, notes, warnings, errors) go to stderr; the result a
script would capture (a digest, a table, a document) goes to stdout.

Documents (`--output json|yaml`): one mapping per command, keys in camelCase, with
`schemaVersion` (bumped only on an incompatible change) and `kind` naming the document.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

SCHEMA_VERSION = 1
FORMATS = ("text", "json", "yaml")


def add_output_option(command: argparse.ArgumentParser, *, output_is_a_path: bool = False) -> None:
    """`--output FORMAT` (and `--format`); where `-o/--output` has named a file since 0.1 (build,
    pull, crds) only `--format`."""
    names = ("--format",) if output_is_a_path else ("--output", "-o", "--format")
    command.add_argument(*names, dest="output_format", choices=FORMATS, default="text", metavar="FORMAT",
                         help="text for people, json or yaml for scripts (default: %(default)s)")


def output_format(args: argparse.Namespace) -> str:
    return getattr(args, "output_format", "text") or "text"


def structured(args: argparse.Namespace) -> bool:
    return output_format(args) != "text"


def document(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if clash := {"schemaVersion", "kind"} & body.keys():  # a body's own field would hide the document's
        raise ValueError(f"a {kind} document's body may not have {sorted(clash)}")
    return {"schemaVersion": SCHEMA_VERSION, "kind": kind, **body}


def emit(args: argparse.Namespace, kind: str, body: dict[str, Any]) -> None:
    """Write one document on stdout in the format the user chose (json when asked for text)."""
    write_document(output_format(args), document(kind, body))


def write_document(fmt: str, doc: dict[str, Any]) -> None:
    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    else:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def note(args: argparse.Namespace | None, message: str) -> None:
    """A message of the tool for people: on stderr, silenced by --quiet and structured output."""
    if args is not None and (quiet(args) or structured(args)):
        return
    print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Warnings are always shown (on stderr): --quiet silences notes, not problems."""
    print(f"aosctl: warning: {message}", file=sys.stderr, flush=True)


def result(line: str) -> None:
    """The result line of a command, on stdout."""
    print(line, flush=True)


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Columns aligned by their widest cell, as `docker ps` prints them."""
    cells: list[Sequence[str]] = [header, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def camel_keys(value: Any) -> Any:
    """snake_case keys (dataclasses) into the documents' camelCase."""
    if isinstance(value, dict):
        return {camel(str(key)): camel_keys(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [camel_keys(item) for item in value]
    return value


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def joined(items: Iterable[str]) -> str:
    return ", ".join(items)


def transfer_bytes(count: float) -> str:
    """Sizes in progress lines: always decimal units, one decimal, so numbers compare at a glance."""
    for power, suffix in ((3, "GB"), (2, "MB"), (1, "kB")):
        if count >= 1000**power:
            return f"{count / 1000**power:.1f} {suffix}"
    return f"{int(count)} B"
