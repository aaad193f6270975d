"""Safe loading of config.yaml: YAML 1.2 core types, line numbers, and bounds on hostile input.

aos-signer reads configs with ruamel.yaml in YAML 1.2 mode, so `yes`, `on` and `0755` stay
what YAML 1.2 says they are, not what PyYAML's YAML 1.1 rules would make them. The loader
records the line of every key and value, rejects duplicate keys, and refuses input that
would cost unbounded memory or recursion (huge files, alias bombs, deep nesting).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aos_operator.errors import InputError, Issue, shorten

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000

Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"


class _Yaml12Resolver(yaml.resolver.BaseResolver):
    """Implicit tags of the YAML 1.2 core schema (the JSON-compatible one)."""


_Yaml12Resolver.add_implicit_resolver(_TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)\Z"), list("tTfF"))
# ruamel.yaml (aos-signer's loader) also reads 0b101 and 1_000 as integers; so do we.
_Yaml12Resolver.add_implicit_resolver(
    _TAG + "int", re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+|0b[01_]+)\Z"), list("-+0123456789")
)
# ...and dates and times as timestamps, which then fail where a string is expected, as there.
_Yaml12Resolver.add_implicit_resolver(
    _TAG + "timestamp",
    re.compile(
        r"^(?:[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
        r"(?:(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)?)\Z"
    ),
    list("0123456789"),
)
_Yaml12Resolver.add_implicit_resolver(
    _TAG + "float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z"),
    list("-+0123456789."),
)
_Yaml12Resolver.add_implicit_resolver(_TAG + "null", re.compile(r"^(?:~|null|Null|NULL|)\Z"), ["~", "n", "N", ""])
_Yaml12Resolver.add_implicit_resolver(_TAG + "merge", re.compile(r"^<<\Z"), ["<"])


class _ComposeLoader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Yaml12Resolver
):
    """PyYAML's pure-Python front end; we build Python values from its nodes ourselves."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Yaml12Resolver.__init__(self)


@dataclass(frozen=True)
class Timestamp:
    """A date or time in the YAML. ruamel.yaml (aos-signer's loader) turns it into a date
    object, so it is not a string either here: quoting it makes it one."""

    text: str


@dataclass
class LoadedYaml:
    """A parsed YAML document and the 1-based line of each path in it."""

    data: Any
    file: str
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor that exists."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


def render_path(path: Path) -> str:
    """`('items', 0, 'configuration')` -> `items[0].configuration`; a long key is cut (`abc...`)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + shorten(str(part))
    return text


def _mark_line(mark: Any) -> int:
    return mark.line + 1 if mark is not None else 1


class _Builder:
    """Turns composed nodes into plain dicts, lists and scalars, recording lines."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path, int] = {}
        self.nodes = 0
        self.issues: list[Issue] = []
        self.open: set[int] = set()  # the lists and mappings being built: an alias back to one is a loop

    def fail(self, node: Node, message: str, path: Path = ()) -> None:
        self.issues.append(Issue(self.file, _mark_line(node.start_mark), render_path(path), message))

    def count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise InputError(
                f"{self.file}: the document expands to more than {MAX_NODES} values "
                "(anchors and aliases that multiply, a 'billion laughs' pattern?)",
                hint="write the values out; config.yaml needs no more than a few hundred",
            )

    @contextmanager
    def opened(self, node: Node) -> Iterator[None]:
        if id(node) in self.open:
            raise InputError(f"{self.file}:{_mark_line(node.start_mark)}: an alias refers to a list or mapping "
                             "that contains it, so the value never ends", hint="write the value out instead of the alias")
        self.open.add(id(node))
        try:
            yield
        finally:
            self.open.discard(id(node))

    def build(self, node: Node, path: Path) -> Any:
        self.count()
        self.lines.setdefault(path, _mark_line(node.start_mark))
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag not in (_TAG + "seq",):
                self.fail(node, f"unsupported tag {node.tag!r} on a list")
            with self.opened(node):
                return [self.build(item, path + (index,)) for index, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            with self.opened(node):
                return self.mapping(node, path)
        raise AssertionError(f"unknown node {node!r}")  # pragma: no cover

    def mapping(self, node: MappingNode, path: Path) -> dict[Any, Any]:
        if node.tag != _TAG + "map":
            self.fail(node, f"unsupported tag {node.tag!r} on a mapping")
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        merged: list[tuple[Any, Any]] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "merge":
                merged.extend(self.merge_source(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, "a key must be a plain value, not a list or mapping")
                continue
            key = self.scalar(key_node)
            line = _mark_line(key_node.start_mark)
            if not isinstance(key, str | int | float | bool) and key is not None:
                self.fail(key_node, f"unsupported key {key!r}")
                continue
            if key in first_line:
                self.fail(
                    key_node, f"duplicate key (first defined on line {first_line[key]}); keep one", path + (key,)
                )
                continue
            first_line[key] = line
            self.lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,))
        for key, value in merged:  # explicit keys win over merged ones, as YAML's merge key says
            result.setdefault(key, value)
        return result

    def merge_source(self, node: Node, path: Path) -> list[tuple[Any, Any]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[Any, Any]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.fail(source, "a merge key '<<' must refer to a mapping or a list of mappings")
                continue
            self.count()  # a merged mapping is built again at each use: it counts as a value each time
            with self.opened(source):
                pairs.extend(self.mapping(source, path).items())
        return pairs

    def scalar(self, node: ScalarNode) -> Any:
        tag, text = node.tag, node.value
        if tag == _TAG + "str" or tag == "!":
            return text
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            self.fail(node, f"{text!r} is not a boolean; use true or false")
            return text
        if tag == _TAG + "int":
            try:
                digits = text.replace("_", "")
                for prefix, base in (("0o", 8), ("0x", 16), ("0b", 2)):
                    if digits.startswith(prefix):
                        return int(digits[2:], base)
                return int(digits, 10)
            except ValueError:
                self.fail(node, f"{text!r} is not an integer")
                return text
        if tag == _TAG + "timestamp":
            return Timestamp(text)
        if tag == _TAG + "float":
            lowered = text.lower()
            if lowered.endswith(".inf"):
                return -math.inf if lowered.startswith("-") else math.inf
            if lowered == ".nan":
                return math.nan
            try:
                return float(text)
            except ValueError:
                self.fail(node, f"{text!r} is not a number")
                return text
        self.fail(node, f"unsupported tag {tag!r}; config.yaml uses plain YAML values only")
        return text


def _problem_line(error: yaml.YAMLError) -> int | None:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def _check_depth(text: str, file: str) -> None:
    """Nesting depth from the event stream, before the recursive composer sees the document."""
    depth = 0
    for event in yaml.parse(text, Loader=_ComposeLoader):
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise InputError(
                    f"{file}:{_mark_line(event.start_mark)}: lists and mappings nest deeper than {MAX_DEPTH} levels",
                    hint="config.yaml needs a handful of levels; this is not a service config",
                )
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def too_large(file: str, size: int) -> InputError:
    return InputError(
        f"{file}: the file is {size} bytes; a config.yaml may be at most {MAX_BYTES} bytes",
        hint="is this the right file? service configs are a few kilobytes",
    )


def decode(raw: bytes, file: str) -> str:
    """Text from bytes: UTF-8 (a BOM is allowed), no NUL bytes, bounded size."""
    if len(raw) > MAX_BYTES:
        raise too_large(file, len(raw))
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise InputError(f"{file}:{line}: the file contains NUL bytes; it is binary data, not YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise InputError(f"{file}:{line}: the file is not valid UTF-8 (byte {raw[error.start]:#04x})") from None
    return text.removeprefix("\ufeff")


def load_yaml_text(text: str, file: str) -> tuple[LoadedYaml, list[Issue]]:
    """Parse one YAML document; syntax errors raise InputError, value problems come back as issues."""
    try:
        _check_depth(text, file)
        loader = _ComposeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        line = _problem_line(error)
        where = f"{file}:{line}" if line else file
        problem = getattr(error, "problem", None) or str(error)
        raise InputError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise InputError(f"{file}: lists and mappings nest too deeply to be a service config") from None
    builder = _Builder(file)
    try:
        data = None if node is None else builder.build(node, ())
    except RecursionError:  # aliases inside aliases: each adds its depth to where it is used
        raise InputError(f"{file}: aliases nest lists and mappings too deeply to be a service config") from None
    builder.lines.setdefault((), 1)  # issues about the document as a whole point at its start
    return LoadedYaml(data, file, builder.lines), builder.issues
