"""Back-pressure: which connections stop being read, and when they resume.

A node past its capacity must slow its clients down rather than queue
without bound or refuse work. The rule:

* Something saturated — the store's backlog of uncommitted jobs, an outbox
  to a peer node, the event loop itself — reports it under a *reason*
  (``saturated("peer n2")``) when its level crosses its high watermark, and
  ``relieved`` when it falls back under its low watermark (hysteresis, so a
  level hovering at the limit does not flap; see :class:`Watermarks`).
* While any reason holds, every *feeding* connection is paused: one that
  has sent a submit and has not registered as a worker. The node stops
  reading its socket, the kernel's buffers fill, and TCP flow control makes
  the client's writes wait — a PHP client simply blocks in doBackground().
* Workers are never paused: their results and grabs are what drains the
  queues, so pausing them would stop the node from ever recovering. Admin
  connections and clients that only wait for results are not paused either.
* When the last reason is relieved, every paused connection resumes.

Pure logic: connections are anything with ``pause_feeding``/
``resume_feeding``; tests drive it without sockets or sleeps.
"""

from __future__ import annotations

from typing import Protocol


class Feeder(Protocol):
    def pause_feeding(self) -> None: ...

    def resume_feeding(self) -> None: ...


class Watermarks:
    """Hysteresis on one level: ``update`` says when it crosses a mark."""

    __slots__ = ("high", "low", "saturated")

    def __init__(self, high: int, low: int) -> None:
        if not 0 <= low < high:
            raise ValueError(f"low watermark {low} must be below the high one {high}")
        self.high = high
        self.low = low
        self.saturated = False

    def update(self, level: int) -> bool | None:
        """True when ``level`` just reached the high mark, False when it just
        fell to the low mark, None when nothing changed."""
        if not self.saturated and level >= self.high:
            self.saturated = True
            return True
        if self.saturated and level <= self.low:
            self.saturated = False
            return False
        return None


class FlowControl:
    def __init__(self) -> None:
        self._reasons: set[str] = set()
        self._feeders: set[Feeder] = set()
        self._paused: set[Feeder] = set()
        #: How many times a connection was paused (a counter for /metrics).
        self.pauses = 0
        #: How many times the node became saturated.
        self.saturations = 0

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    @property
    def reasons(self) -> frozenset[str]:
        return frozenset(self._reasons)

    @property
    def paused_connections(self) -> int:
        return len(self._paused)

    def saturated(self, reason: str) -> None:
        if reason in self._reasons:
            return
        self._reasons.add(reason)
        if len(self._reasons) == 1:
            self.saturations += 1
            for f in list(self._feeders):
                self._pause(f)

    def relieved(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            paused, self._paused = self._paused, set()
            for f in paused:
                f.resume_feeding()

    def set(self, reason: str, saturated: bool | None) -> None:
        """Apply a :meth:`Watermarks.update` result."""
        if saturated is True:
            self.saturated(reason)
        elif saturated is False:
            self.relieved(reason)

    def feeding(self, f: Feeder) -> None:
        """``f`` sent a submit: from now on it is paused with the others."""
        if f in self._feeders:
            return
        self._feeders.add(f)
        if self._reasons:
            self._pause(f)

    def not_feeding(self, f: Feeder) -> None:
        """``f`` closed, or turned out to be a worker: never pause it again."""
        self._feeders.discard(f)
        if f in self._paused:
            self._paused.discard(f)
            f.resume_feeding()

    def is_feeder(self, f: Feeder) -> bool:
        return f in self._feeders

    def _pause(self, f: Feeder) -> None:
        if f not in self._paused:
            self._paused.add(f)
            self.pauses += 1
            f.pause_feeding()
