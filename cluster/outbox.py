"""Frames waiting to be written to one peer, with high/low watermarks.

The peer link appends encoded frames (``add``) and its writer takes whole
batches (``take``), each at most ``max_batch_bytes`` and never mixing frames
queued under different map epochs. The outbox is bounded by back-pressure,
not by dropping: when its size reaches ``high`` bytes it calls ``on_high``
(the node then stops reading the client connections that feed it), and when
the writer has taken it down to ``low`` it calls ``on_low`` (they are read
again). Frames are only ever discarded by ``clear``, which the link calls
when the peer is gone.

Pure: no asyncio, no gRPC; tests drive it directly.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from node.flowcontrol import Watermarks

Callback = Callable[[], None]


def _noop() -> None:
    pass


class Chunk:
    """One batch's worth of frames (all queued under ``epoch``)."""

    __slots__ = ("count", "epoch", "parts", "size")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.parts: list[bytes] = []
        self.size = 0
        self.count = 0


class Outbox:
    __slots__ = ("_cap", "_chunks", "_marks", "_on_high", "_on_low", "_tail", "frames",
                 "peak", "size")

    def __init__(self, max_batch_bytes: int, high: int, low: int | None = None,
                 on_high: Callback = _noop, on_low: Callback = _noop) -> None:
        self._cap = max_batch_bytes
        self._marks = Watermarks(high, high // 4 if low is None else low)
        self._on_high = on_high
        self._on_low = on_low
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._tail: Chunk | None = None
        self.size = 0  # bytes
        self.frames = 0
        self.peak = 0  # largest size seen, for the memory bound

    @property
    def depth(self) -> int:
        return self.frames

    @property
    def saturated(self) -> bool:
        return self._marks.saturated

    def add(self, data: bytes, epoch: int) -> None:
        tail = self._tail
        if tail is None or tail.epoch != epoch or (tail.size + len(data) > self._cap):
            tail = Chunk(epoch)
            self._chunks.append(tail)
            self._tail = tail
        tail.parts.append(data)
        tail.size += len(data)
        tail.count += 1
        self.size += len(data)
        self.frames += 1
        if self.size > self.peak:
            self.peak = self.size
        if self._marks.update(self.size) is True:
            self._on_high()

    def take(self) -> Chunk | None:
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        if chunk is self._tail:
            self._tail = None
        self.size -= chunk.size
        self.frames -= chunk.count
        if self._marks.update(self.size) is False:
            self._on_low()
        return chunk

    def clear(self) -> int:
        """Drop everything (the peer is gone); returns how many frames."""
        dropped = self.frames
        self._chunks.clear()
        self._tail = None
        self.size = 0
        self.frames = 0
        if self._marks.update(0) is False:
            self._on_low()
        return dropped
