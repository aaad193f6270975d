"""Revision history of an AosService (status.revisions). Pure.

A revision is one built package set: its digests, the source digest it was built from, the
service version, when it was built and last rolled out, and how that rollout ended. The list is
kept oldest first, at most `revisionHistoryLimit` long, never dropping the revision being rolled
out or the stable one. Rolling back picks a revision from here and dispatches its digests: no
rebuild. A spec whose config and source hash to a known revision reuses it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ANNOTATION_ROLLBACK_TO = "aosedge.io/rollback-to"  # revision number `aosctl rollout undo` pinned
ANNOTATION_ROLLBACK_FROM = "aosedge.io/rollback-from"  # the spec's source digest when it did
ANNOTATION_RESUME = "aosedge.io/rollout-resume"  # "<revision>:<step>" a canary pause was resumed at
ROLLOUT_ANNOTATIONS = (ANNOTATION_ROLLBACK_TO, ANNOTATION_ROLLBACK_FROM, ANNOTATION_RESUME)

History = list[dict[str, Any]]


def of(status: Mapping[str, Any] | None) -> History:
    return [dict(item) for item in (status or {}).get("revisions") or () if isinstance(item, Mapping)
            and isinstance(item.get("revision"), int)]


def by_source(history: Iterable[Mapping[str, Any]], source_digest: str) -> Mapping[str, Any] | None:
    for item in history:
        if item.get("sourceDigest") == source_digest:
            return item
    return None


def by_number(history: Iterable[Mapping[str, Any]], number: int) -> Mapping[str, Any] | None:
    for item in history:
        if item.get("revision") == number:
            return item
    return None


def digests(item: Mapping[str, Any]) -> set[str]:
    return {image["digest"] for image in item.get("images") or () if isinstance(image, Mapping) and "digest" in image}


def revision_of_digest(history: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Digest (of any architecture) -> revision number."""
    return {digest: item["revision"] for item in history for digest in digests(item)}


def add(history: Sequence[Mapping[str, Any]], images: Sequence[Mapping[str, Any]], source_digest: str,
        version: str | None, at: str) -> tuple[History, int]:
    """The history with a new revision for `images` (numbered after the newest), and its number."""
    number = max((item["revision"] for item in history), default=0) + 1
    entry = {"revision": number, "digest": images[0]["digest"], "images": [dict(image) for image in images],
             "sourceDigest": source_digest, "createdAt": at}
    if version:
        entry["version"] = version
    return [dict(item) for item in history] + [entry], number


def mark(history: Sequence[Mapping[str, Any]], number: int, result: str, *, message: str | None = None,
         rolled_out_at: str | None = None) -> History:
    out = []
    for item in history:
        item = dict(item)
        if item.get("revision") == number:
            item["result"] = result
            if message is not None:
                item["message"] = message[:500]
            if rolled_out_at is not None:
                item["rolledOutAt"] = rolled_out_at
        out.append(item)
    return out


def prune(history: Sequence[Mapping[str, Any]], limit: int, keep: Iterable[int | None]) -> History:
    """At most `limit` revisions (newest kept), plus whichever of `keep` would have been dropped."""
    kept = {number for number in keep if number is not None}
    ordered = sorted((dict(item) for item in history), key=lambda item: item["revision"])
    newest = {item["revision"] for item in ordered[-limit:]} if limit > 0 else set()
    return [item for item in ordered if item["revision"] in newest or item["revision"] in kept]


def previous(history: Iterable[Mapping[str, Any]], current: int | None, stable: int | None) -> int | None:
    """Where `aosctl rollout undo` goes without --to-revision: the stable revision when the current
    one is not it, else the newest revision older than the current one."""
    if stable is not None and stable != current:
        return stable
    older = [item["revision"] for item in history if current is None or item["revision"] < current]
    return max(older) if older else None


def parse_resume(value: str | None, revision: int) -> int | None:
    """The canary step resumed for `revision`, from the annotation; None if it is for another."""
    if not value or ":" not in value:
        return None
    number, _, step = value.partition(":")
    if not (number.isdigit() and step.isdigit()) or int(number) != revision:
        return None
    return int(step)
