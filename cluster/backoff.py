"""Retry delays: capped exponential backoff with jitter, one rule for the
cluster's retries (etcd, the peer link's redials)."""

from __future__ import annotations

import random


def backoff(failures: int, start: float, cap: float) -> float:
    """The pause before the next try after ``failures`` failures in a row:
    ``start`` doubling up to ``cap``, then a random half to all of it, so
    many nodes that lost the same server do not retry in step."""
    ceiling = min(cap, start * 2.0 ** min(failures, 16))
    return ceiling * random.uniform(0.5, 1.0)
