"""How late the event loop runs a timer: the node's saturation, as a histogram.

A timer is due every ``interval`` seconds; the time it actually fired past
that is the loop's lag — how long any callback (a client's request, a peer's
frame, the HTTP endpoint) waited behind other work. A healthy node shows a
lag of a millisecond or so; a lag of seconds means requests wait that long.
Exported as ``gearmesh_event_loop_lag_seconds``.

``LagHistogram`` is pure (cumulative buckets, Prometheus style); the monitor
only feeds it from the loop.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Sequence
from typing import Final

BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0)
INTERVAL: Final = 0.05


class LagHistogram:
    def __init__(self, buckets: Sequence[float] = BUCKETS) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self.max = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1
        if value > self.max:
            self.max = value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), +Inf last."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile q (0 when empty)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        for bound, seen in self.cumulative():
            if seen >= rank:
                return bound if bound != float("inf") else self.max
        return self.max


class LoopLagMonitor:
    """Measures the running loop's lag every ``interval`` seconds.

    ``on_lag`` (optional) hears every measurement, e.g. to pause reading from
    clients while the loop is far behind.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = INTERVAL,
                 on_lag: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.histogram = LagHistogram()
        self._loop = loop
        self._interval = interval
        self._on_lag = on_lag
        self._clock = clock
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is None:
            self._due = self._clock() + self._interval
            self._timer = self._loop.call_later(self._interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        now = self._clock()
        lag = max(0.0, now - self._due)
        self.histogram.observe(lag)
        if self._on_lag is not None:
            self._on_lag(lag)
        self._due = now + self._interval
        self._timer = self._loop.call_later(self._interval, self._tick)
