"""Poll for a condition from async tests without blocking the emulator's event loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], T | Awaitable[T]], *, timeout: float = 20.0,
                     interval: float = 0.05, message: str = "condition") -> T:
    """Return the first truthy result of `check()`; fail with `message` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"{message} did not happen within {timeout} s (last: {result!r})")
        await asyncio.sleep(interval)
