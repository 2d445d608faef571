"""Time as the node's pure layers see it: injected, so tests drive it.

The job manager never reads the system clock or arms loop timers itself;
it takes a :class:`Clock`. Tests pass a fake one and move it with
``advance``; a node passes :class:`LoopClock`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Seconds; wall-clock for the job manager (epoch jobs are Unix time)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopClock:
    """Wall-clock time with the event loop's timers (epoch jobs are in Unix time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self._loop.call_later(delay, callback)

