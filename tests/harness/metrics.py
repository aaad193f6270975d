"""Request and watch-stream counters per client (User-Agent), for benchmarks and assertions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class RequestKey(NamedTuple):
    client: str  # the User-Agent header, e.g. "aos-agent/dev-1" or "aos-operator"
    method: str  # HTTP method: GET, POST, PUT, PATCH, DELETE
    resource: str  # "plural.group" ("configmaps" for the core group), or "discovery"
    subresource: str | None
    watch: bool


@dataclass
class Metrics:
    """Counts every API request and every watch event and byte sent, keyed by client."""

    requests: Counter[RequestKey] = field(default_factory=Counter)
    watch_events: Counter[str] = field(default_factory=Counter)
    watch_bytes: Counter[str] = field(default_factory=Counter)

    def count_request(self, key: RequestKey) -> None:
        self.requests[key] += 1

    def count_watch_event(self, client: str, size: int) -> None:
        self.watch_events[client] += 1
        self.watch_bytes[client] += size

    def reset(self) -> None:
        self.requests.clear()
        self.watch_events.clear()
        self.watch_bytes.clear()

    def total(self, *, client: str | None = None, client_prefix: str | None = None,
              method: str | None = None, resource: str | None = None,
              subresource: str | None | type[Ellipsis] = ..., watch: bool | None = None) -> int:
        """The number of requests matching every given filter (`subresource=None` means none)."""
        return sum(
            count for key, count in self.requests.items()
            if (client is None or key.client == client)
            and (client_prefix is None or key.client.startswith(client_prefix))
            and (method is None or key.method == method.upper())
            and (resource is None or key.resource == resource)
            and (subresource is ... or key.subresource == subresource)
            and (watch is None or key.watch == watch)
        )

    def clients(self) -> set[str]:
        return {key.client for key in self.requests} | set(self.watch_events)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: {"requests": [...], "watch": {client: {"events", "bytes"}}}."""
        return {
            "requests": [
                {**key._asdict(), "count": count}
                for key, count in sorted(self.requests.items(), key=lambda item: tuple(map(str, item[0])))
            ],
            "watch": {
                client: {"events": self.watch_events[client], "bytes": self.watch_bytes[client]}
                for client in sorted(set(self.watch_events) | set(self.watch_bytes))
            },
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> Metrics:
        """Rebuild counters from `snapshot()` output (e.g. read from a harness subprocess)."""
        metrics = cls()
        for row in data.get("requests", []):
            count = row.pop("count")
            metrics.requests[RequestKey(**row)] = count
        for client, stream in data.get("watch", {}).items():
            metrics.watch_events[client] = stream["events"]
            metrics.watch_bytes[client] = stream["bytes"]
        return metrics
