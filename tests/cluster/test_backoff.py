"""cluster/backoff.py: capped, doubling, jittered."""

from __future__ import annotations

import pytest

from cluster.backoff import backoff

pytestmark = pytest.mark.timeout(30)


def test_doubles_from_start_up_to_the_cap_with_jitter() -> None:
    for failures, ceiling in ((0, 0.1), (1, 0.2), (3, 0.8), (10, 5.0), (10_000, 5.0)):
        delays = [backoff(failures, 0.1, 5.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (failures, min(delays))
        assert len(set(delays)) > 1  # jittered, not in step
