"""The node's pool of user and group IDs for services: a UID per instance, a GID per service.

As AosEdge's communication manager does (reference §5.3): IDs come from 5000-10000, IDs that
already name a host user (for UIDs) or group (for GIDs) are skipped, and an allocation is kept in
a JSON file so an instance gets the same UID on every start. The file is updated under an flock
and replaced atomically, so concurrent runtimes on one node never hand out one ID twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aos_operator.bounded import parse_json
from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.files import file_lock, write_atomically

ID_RANGE = (5000, 10000)


def _host_ids(path: Path) -> set[int]:
    """The numeric IDs (third field) of an /etc/passwd or /etc/group style file."""
    ids: set[int] = set()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ids
    for line in lines:
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            ids.add(int(fields[2]))
    return ids


class IdPool:
    def __init__(self, path: Path, passwd: Path = Path("/etc/passwd"), group: Path = Path("/etc/group"),
                 id_range: tuple[int, int] = ID_RANGE) -> None:
        self.path = path
        self.passwd = passwd
        self.group = group
        self.low, self.high = id_range

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, int]]]:
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            try:
                state = parse_json(self.path.read_text()) if self.path.exists() else {}
            except ValueError:
                raise RuntimeFailure(f"{self.path}: the ID pool file is corrupt",
                                     hint="move it away; running instances keep their IDs until restarted") from None
            state.setdefault("uids", {})
            state.setdefault("gids", {})
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                write_atomically(self.path, json.dumps(state, sort_keys=True, indent=1))

    def _allocate(self, table: dict[str, int], key: str, host_ids: Callable[[], set[int]], kind: str) -> int:
        if key in table:
            return table[key]
        taken = set(table.values()) | host_ids()
        for candidate in range(self.low, self.high + 1):
            if candidate not in taken:
                table[key] = candidate
                return candidate
        raise RuntimeFailure(f"no free {kind} left in {self.low}-{self.high} ({self.path})",
                             hint="remove instances or services that are no longer needed")

    def instance_uid(self, instance_id: str) -> int:
        with self._locked() as state:
            return self._allocate(state["uids"], instance_id, lambda: _host_ids(self.passwd), "UID")

    def service_gid(self, service_id: str) -> int:
        with self._locked() as state:
            return self._allocate(state["gids"], service_id, lambda: _host_ids(self.group), "GID")

    def instance_ids(self, instance_id: str, service_id: str) -> tuple[int, int]:
        """The instance's UID and its service's GID, under one lock (once per start)."""
        with self._locked() as state:
            return (self._allocate(state["uids"], instance_id, lambda: _host_ids(self.passwd), "UID"),
                    self._allocate(state["gids"], service_id, lambda: _host_ids(self.group), "GID"))

    def release_instance(self, instance_id: str) -> None:
        with self._locked() as state:
            state["uids"].pop(instance_id, None)

    def release_service(self, service_id: str) -> None:
        with self._locked() as state:
            state["gids"].pop(service_id, None)
