"""Latency summaries. Runs keep every sample (8 bytes each), so the
percentiles are exact rather than read off a histogram."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    """Milliseconds, rounded to microseconds."""
    s = sorted(values)
    if not s:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None,
                "max_ms": None, "mean_ms": None}

    def ms(x: float) -> float:
        return round(x * 1000.0, 3)

    return {
        "count": len(s),
        "p50_ms": ms(percentile(s, 50)),
        "p90_ms": ms(percentile(s, 90)),
        "p99_ms": ms(percentile(s, 99)),
        "max_ms": ms(s[-1]),
        "mean_ms": ms(sum(s) / len(s)),
    }


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"
