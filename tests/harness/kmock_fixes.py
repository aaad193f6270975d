"""A correction to KMock 0.8's URL parser, applied once on import.

KMock reads `/api/v1/namespaces/<x>/...` as "namespace <x>", which is right for namespaced
resources but wrong for the Namespace resource itself: `/api/v1/namespaces` crashes the parser
(500) and `/api/v1/namespaces/<name>[/status]` parse as a namespace with no resource. kopf
lists and watches namespaces, so the emulator needs them.
"""

from __future__ import annotations

from kmock._internal import parsing

_NAMESPACE_SUBRESOURCES = {"status", "finalize"}
_original_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) <= 4 or (len(parts) == 5 and parts[4] in _NAMESPACE_SUBRESOURCES)):
        return parsing.ParsedPath(
            group="", version="v1", plural="namespaces", namespace=None,
            name=parts[3] if len(parts) > 3 else None, subresource=parts[4] if len(parts) > 4 else None,
        )
    return _original_parse_path(path)


def apply() -> None:
    if parsing.parse_path is not _parse_path:
        parsing.parse_path = _parse_path
