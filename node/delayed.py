"""Epoch jobs whose time has not come: a heap by time and one timer.

Holds job ids, not jobs: a job cancelled or handed over while it waits is
simply not DELAYED any more when its time comes, and the manager's ``due``
callback skips it (removed lazily, like the run queues). Time comes from an
injected clock, so tests drive it with a fake one.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from node.clock import Clock, TimerHandle


class DelayedJobs:
    def __init__(self, clock: Clock, due: Callable[[int], None]) -> None:
        self.clock = clock
        self._due = due  # called with each job id whose time came, earliest first
        self._heap: list[tuple[int, int]] = []  # (when, job id)
        self._timer: TimerHandle | None = None
        self._at = 0.0

    def add(self, when: int, jid: int) -> None:
        heapq.heappush(self._heap, (when, jid))
        if self._timer is None or when < self._at:
            self._arm()

    def in_order(self) -> list[int]:
        """Job ids by time (possibly some that are no longer delayed)."""
        return [jid for _, jid in sorted(self._heap)]

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._heap:
            return
        when = self._heap[0][0]
        self._at = when
        self._timer = self.clock.call_later(max(0.0, when - self.clock.time()), self._release)

    def _release(self) -> None:
        self._timer = None
        now = self.clock.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, jid = heapq.heappop(heap)
            self._due(jid)
        self._arm()
