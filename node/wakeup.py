"""Wake-up policy: when a NOOP counts as not sent.

A libgearman worker that lists several servers sleeps on all of them, so a
sleeping connection here may belong to a process that is busy with another
server's job; a job waiting for that NOOP would wait a whole job-length while
another worker sleeps. The rule: a NOOP that has not led to a GRAB within
WAKE_GRACE is as good as not sent, and the job's next sleeper is woken. So a
job waits at most about WAKE_GRACE per busy connection it tries, and never
more NOOPs go out than one per job per WAKE_GRACE (no thundering herd).

Pure: time comes from an injected clock, so the tests drive it with a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

from node.clock import Clock, TimerHandle

# Long enough for an idle worker on a loaded host to answer its NOOP with a
# GRAB_JOB (a round trip plus a scheduling delay), short against a job.
WAKE_GRACE: Final = 0.05

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class WakeTracker(Generic[K, V]):
    """NOOPs sent and not yet answered by a GRAB, oldest first. One timer for
    all of them (never one per NOOP: this is on every job's path)."""

    def __init__(self, clock: Clock, on_expired: Callable[[K, V], None],
                 grace: float = WAKE_GRACE) -> None:
        self.clock = clock
        self.grace = grace
        self.on_expired = on_expired
        self._pending: dict[K, tuple[float, V]] = {}  # insertion order = deadline order
        self._timer: TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def sent(self, key: K, value: V) -> None:
        pending = self._pending
        pending.pop(key, None)  # re-sent: its deadline starts again, at the end
        pending[key] = (self.clock.time() + self.grace, value)
        if self._timer is None:
            self._timer = self.clock.call_later(self.grace, self._expire)

    def answered(self, key: K) -> V | None:
        """The worker grabbed (or went away): the NOOP did its job."""
        entry = self._pending.pop(key, None)
        return entry[1] if entry is not None else None

    def _expire(self) -> None:
        self._timer = None
        pending = self._pending
        # A timer may fire a hair early against time(): allow a tenth of grace.
        now = self.clock.time() + self.grace / 10
        expired: list[tuple[K, V]] = []
        for key, (deadline, value) in pending.items():
            if deadline > now:
                break
            expired.append((key, value))
        for key, _ in expired:
            del pending[key]
        if pending:
            deadline = next(iter(pending.values()))[0]
            self._timer = self.clock.call_later(max(0.0, deadline - self.clock.time()),
                                                self._expire)
        for key, value in expired:
            self.on_expired(key, value)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
