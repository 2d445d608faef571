"""Wait for an event with a deadline, by polling a cheap check."""

from __future__ import annotations

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
