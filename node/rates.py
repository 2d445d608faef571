"""Submitted and completed jobs per second over the last minutes, in memory.

A fixed ring of one-second buckets fed from the node's monotonically rising
counters: each sample stores the increase since the previous one in the
bucket of the current second, so the dashboard's rate chart costs the hot
path nothing and the memory is bounded (two ints per second kept). Seconds
with no sample (a stalled loop) read as zero, not as a spike or a gap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Series:
    """Per-second counts ending at ``end`` (the newest whole second, Unix time)."""

    end: int
    submitted: list[int]
    completed: list[int]

    def to_json(self) -> dict[str, object]:
        return {"end": self.end, "step": 1, "submitted": self.submitted,
                "completed": self.completed}


class RateHistory:
    def __init__(self, seconds: int = 900) -> None:
        if seconds < 1:
            raise ValueError("seconds must be >= 1")
        self.seconds = seconds
        self._sub = [0] * seconds
        self._done = [0] * seconds
        self._last_second: int | None = None  # the newest bucket written
        self._prev: tuple[int, int] | None = None  # counter values at the last sample

    def sample(self, now: float, submitted: int, completed: int) -> None:
        """Record the counters as they are at ``now`` (call about once a second)."""
        sec = int(now)
        prev = self._prev
        self._prev = (submitted, completed)
        self._advance(sec)
        if prev is None:
            return  # the first sample is only the baseline
        # A counter never goes down; a negative step means a restart: count 0.
        self._sub[sec % self.seconds] += max(0, submitted - prev[0])
        self._done[sec % self.seconds] += max(0, completed - prev[1])

    def _advance(self, sec: int) -> None:
        last = self._last_second
        if last is None or sec - last >= self.seconds:
            self._sub = [0] * self.seconds
            self._done = [0] * self.seconds
        elif sec > last:
            for s in range(last + 1, sec + 1):
                self._sub[s % self.seconds] = 0
                self._done[s % self.seconds] = 0
        else:
            return  # same second, or the clock stepped back: keep adding to it
        self._last_second = sec

    def series(self, now: float, seconds: int | None = None) -> Series:
        """The last ``seconds`` buckets up to ``now``, oldest first."""
        n = min(seconds or self.seconds, self.seconds)
        end = int(now)
        last = self._last_second
        sub = []
        done = []
        for s in range(end - n + 1, end + 1):
            # Buckets past the newest sample are not written yet (zero), and
            # those a full ring older hold a later second's counts.
            if last is None or s > last or s <= last - self.seconds:
                sub.append(0)
                done.append(0)
            else:
                sub.append(self._sub[s % self.seconds])
                done.append(self._done[s % self.seconds])
        return Series(end, sub, done)

    def rate(self, now: float, window: int = 10) -> tuple[float, float]:
        """Mean (submitted, completed) per second over the last ``window``
        whole seconds (the current, partial second left out)."""
        s = self.series(now - 1, window)
        return sum(s.submitted) / window, sum(s.completed) / window


def add_series(all_series: list[Series]) -> Series | None:
    """The sum of several nodes' series, aligned on their seconds."""
    if not all_series:
        return None
    end = max(s.end for s in all_series)
    n = max(len(s.submitted) for s in all_series)
    sub = [0] * n
    done = [0] * n
    for s in all_series:
        shift = end - s.end  # this node's newest bucket is `shift` seconds older
        for i in range(len(s.submitted)):
            j = n - len(s.submitted) + i - shift
            if 0 <= j < n:
                sub[j] += s.submitted[i]
                done[j] += s.completed[i]
    return Series(end, sub, done)
