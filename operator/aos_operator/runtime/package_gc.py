"""Which installed packages a node may delete. Pure.

Kept, always: every package an assigned or existing instance needs. Kept while the limits
allow: the `keep_previous` most recently used other packages of each service, so a rollback
starts at once without a pull (AosEdge devices keep the previous version of a service too).
Deleted: everything else, and previous versions beyond `max_packages` or `max_bytes` (the
least recently used first). The limits never delete a needed package: a node whose needed
packages alone exceed them keeps them and reports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aos_operator.errors import InputError


@dataclass(frozen=True)
class GcPolicy:
    keep_previous: int = 1  # per service, besides what is needed
    max_packages: int | None = None  # installed packages at most (needed ones excepted)
    max_bytes: int | None = None  # their size at most (manifest sizes of config and layer blobs)

    def __post_init__(self) -> None:
        for name in ("keep_previous", "max_packages", "max_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InputError(f"package GC: {name} must be >= 0, got {value}", hint="pass a count or size >= 0")


@dataclass(frozen=True)
class StoredPackage:
    digest: str
    service: str | None  # AOS_SERVICE_ID it was installed for; None when unknown (installed before GC kept it)
    last_used: float  # when it was last installed or started (seconds since the epoch)
    size: int


def choose_garbage(packages: Sequence[StoredPackage], needed: Iterable[str], policy: GcPolicy) -> list[str]:
    """Digests to delete, least recently used first."""
    needed = set(needed)
    keep: list[StoredPackage] = []
    drop: list[StoredPackage] = []
    per_service: dict[str | None, int] = {}
    for package in sorted(packages, key=lambda package: package.last_used, reverse=True):
        if package.digest in needed:
            continue
        seen = per_service.get(package.service, 0)
        if package.service is not None and seen < policy.keep_previous:
            per_service[package.service] = seen + 1
            keep.append(package)
        else:
            drop.append(package)
    count = sum(1 for package in packages if package.digest in needed) + len(keep)
    size = sum(package.size for package in packages if package.digest in needed) + sum(p.size for p in keep)
    while keep and ((policy.max_packages is not None and count > policy.max_packages)
                    or (policy.max_bytes is not None and size > policy.max_bytes)):
        victim = keep.pop()  # the least recently used previous version
        drop.append(victim)
        count -= 1
        size -= victim.size
    return [package.digest for package in sorted(drop, key=lambda package: package.last_used)]
