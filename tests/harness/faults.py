"""Injected API failures: answer the next N matching requests with an error status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATUS_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
    410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}


@dataclass
class RequestFacts:
    """What a fault rule can match a request on."""

    client: str
    method: str
    resource: str | None  # plural.group, or None for non-resource paths
    subresource: str | None
    namespace: str | None
    name: str | None
    watch: bool


@dataclass
class FaultRule:
    """Fail the next `count` requests that match all given fields (None matches anything)."""

    status: int
    count: int = 1
    retry_after: float | None = None
    message: str | None = None
    method: str | None = None
    resource: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    client_prefix: str | None = None
    watch: bool | None = None

    def matches(self, facts: RequestFacts) -> bool:
        return (
            self.count > 0
            and (self.method is None or facts.method == self.method.upper())
            and (self.resource is None or facts.resource == self.resource)
            and (self.subresource is None or facts.subresource == self.subresource)
            and (self.namespace is None or facts.namespace == self.namespace)
            and (self.name is None or facts.name == self.name)
            and (self.client_prefix is None or facts.client.startswith(self.client_prefix))
            and (self.watch is None or facts.watch == self.watch)
        )

    def status_body(self) -> dict[str, Any]:
        reason = STATUS_REASONS.get(self.status, "InternalError")
        return {
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": self.status, "reason": reason,
            "message": self.message or f"injected failure ({self.status} {reason})",
            "details": {"retryAfterSeconds": int(self.retry_after)} if self.retry_after else {},
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(int(self.retry_after))} if self.retry_after is not None else {}


class FaultPlan:
    """The active rules; the first matching rule with budget left answers the request."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def take(self, facts: RequestFacts) -> FaultRule | None:
        for rule in self.rules:
            if rule.matches(facts):
                rule.count -= 1
                if rule.count <= 0:
                    self.rules.remove(rule)
                return rule
        return None

    def clear(self) -> None:
        self.rules.clear()
