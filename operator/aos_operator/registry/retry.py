"""When and how long to wait before repeating a registry request that failed for a passing reason.

Passing reasons: 429 (honouring Retry-After), 5xx, dropped connections and timeouts. Waits grow
exponentially with jitter, so many agents pulling at once do not retry in lockstep.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

from aos_operator.errors import RegistryError

T = TypeVar("T")


class TransientFailure(Exception):
    """One attempt failed in a way worth repeating; `retry_after` is the server's wish, if any."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits base * 2**n * U(0.5, 1], capped."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    # Told of each retry ("<what>: <reason>; retry 2 of 5 in 1.4 s"), so waits are not silent.
    notify: Callable[[str], None] | None = field(default=None, compare=False)
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        backoff = min(self.max_delay, self.base_delay * 2.0**attempt)
        wait = backoff * (0.5 + 0.5 * self.jitter())
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait

    def run(self, operation: Callable[[], T], what: str, progress: Callable[[], int] | None = None) -> T:
        """Call `operation` until it stops raising TransientFailure or attempts run out.

        With `progress` (e.g. bytes received so far), a failed attempt that still moved
        things forward starts the count afresh: a resumable download on a link that keeps
        dropping gets through as long as each try gets further.
        """
        attempt = 0
        mark = progress() if progress else 0
        while True:
            try:
                return operation()
            except TransientFailure as failure:
                if progress is not None and progress() > mark:
                    attempt, mark = 0, progress()
                attempt += 1
                if attempt >= self.attempts:
                    raise RegistryError(
                        f"{what}: gave up after {self.attempts} attempts; last failure: {failure.reason}",
                        hint="the registry is unreachable or overloaded; check the network and the "
                        "registry's health, then try again",
                    ) from None
                wait = self.delay(attempt - 1, failure.retry_after)
                if self.notify is not None:
                    self.notify(f"{what}: {failure.reason}; retry {attempt} of {self.attempts - 1} in {wait:.1f} s")
                self.sleep(wait)


def parse_retry_after(
    value: str | None, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now()).total_seconds())
