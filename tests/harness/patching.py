"""Apply PATCH bodies as the API server does, chosen by the request's Content-Type."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class PatchError(ValueError):
    """A patch that cannot be applied; `status` is the HTTP code the API server answers with."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(obj: dict[str, Any], body: Any, content_type: str, *, custom_resource: bool) -> dict[str, Any]:
    """Return a patched deep copy of `obj`; raise PatchError with the server's status on failure."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == STRATEGIC_MERGE_PATCH and custom_resource:
        # The real server has no strategic-merge schema for custom resources and refuses it.
        raise PatchError(
            415, "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}",
        )
    if media_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        # Built-in resources get strategic-merge as plain merge: lists are replaced, not merged.
        if not isinstance(body, Mapping):
            raise PatchError(400, "BadRequest", "a merge patch must be a JSON object")
        return merge_patch(copy.deepcopy(obj), body)
    if media_type == JSON_PATCH:
        if not isinstance(body, list):
            raise PatchError(400, "BadRequest", "a JSON patch must be a JSON array of operations")
        try:
            return jsonpatch.apply_patch(copy.deepcopy(obj), body, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
            # Includes a failed `test` operation: the API server answers 422 Unprocessable Entity.
            raise PatchError(422, "Invalid", f"the server rejected our request due to an error in our request: {error}")
    if media_type == APPLY_PATCH:
        raise PatchError(415, "UnsupportedMediaType", "server-side apply is not emulated by the test harness")
    raise PatchError(
        415, "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({media_type or 'no Content-Type'}) - "
        f"accepted media types include: {JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}",
    )
