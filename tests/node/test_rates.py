"""The rate history ring buffer behind the dashboard's chart."""

from __future__ import annotations

import pytest

from node.rates import RateHistory, Series, add_series


@pytest.mark.timeout(10)
def test_counts_land_in_their_second_and_gaps_read_as_zero() -> None:
    h = RateHistory(seconds=10)
    h.sample(100.2, 5, 0)  # baseline only
    h.sample(101.1, 8, 1)
    h.sample(101.9, 9, 1)  # same second: added
    h.sample(104.0, 19, 6)  # 102 and 103 had no sample
    s = h.series(104.5, 5)
    assert s.end == 104
    assert s.submitted == [0, 4, 0, 0, 10]
    assert s.completed == [0, 1, 0, 0, 5]
    assert h.rate(105.0, window=5) == (14 / 5, 6 / 5)


@pytest.mark.timeout(10)
def test_the_ring_forgets_what_is_older_than_its_span() -> None:
    h = RateHistory(seconds=4)
    h.sample(0, 0, 0)
    for t in range(1, 10):
        h.sample(t, t * 2, t)
    assert h.series(9).submitted == [2, 2, 2, 2]
    h.sample(30, 100, 50)  # a long stall: everything before it is gone
    assert h.series(30).submitted == [0, 0, 0, 82]
    h.sample(31, 90, 40)  # counters went down (restart): counted as nothing
    assert h.series(31).submitted[-1] == 0


@pytest.mark.timeout(10)
def test_series_of_several_nodes_add_up_on_their_seconds() -> None:
    a = Series(10, [1, 2, 3], [0, 1, 1])
    b = Series(9, [5, 5, 5], [1, 1, 1])  # one second behind a
    total = add_series([a, b])
    assert total == Series(10, [6, 7, 3], [1, 2, 1])
    assert add_series([]) is None
