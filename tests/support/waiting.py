"""Wait for an event with a deadline, by polling a cheap check: the one
place tests wait (``wait_until`` in threads, ``eventually`` on a loop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")


def wait_until(
    check: Callable[[], R | None],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> R:
    """Call ``check`` until it returns something truthy and return that.

    The sleep between calls only paces the polling; the test is synchronised
    on the condition itself, and fails with the last value seen when the
    deadline passes.
    """
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
        last = check()
    return last


async def eventually(
    check: Callable[[], R | None],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.01,
) -> R:
    """wait_until for a test running on an event loop: the loop keeps
    running between the checks."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)
        last = check()
    return last
