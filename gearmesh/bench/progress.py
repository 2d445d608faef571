"""A one-line progress display on stderr, redrawn in place."""

from __future__ import annotations

import shutil
import sys
import time


class ProgressLine:
    REDRAW_S = 0.2

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0
        self._shown = False

    def update(self, label: str, done: int, total: int | None, elapsed: float,
               cap: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.REDRAW_S:
            return
        self._last = now
        rate = done / elapsed if elapsed > 0 else 0.0
        width = 24
        if total:
            frac = min(1.0, done / total)
            tail = f"{done:,}/{total:,}"
        elif cap:
            frac = min(1.0, elapsed / cap)
            tail = f"{done:,}"
        else:
            frac = 0.0
            tail = f"{done:,}"
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        line = f"{label} [{bar}] {frac * 100:3.0f}% {tail} {rate:,.0f}/s {elapsed:.1f}s"
        cols = shutil.get_terminal_size((100, 20)).columns
        sys.stderr.write("\r" + line[: cols - 1].ljust(cols - 1))
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            cols = shutil.get_terminal_size((100, 20)).columns
            sys.stderr.write("\r" + " " * (cols - 1) + "\r")
            sys.stderr.flush()
            self._shown = False
            self._last = 0.0
