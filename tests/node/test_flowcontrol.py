"""The back-pressure rule, without sockets or sleeps."""

from __future__ import annotations

import pytest

from node.flowcontrol import FlowControl, Watermarks
from node.looplag import LagHistogram, LoopLagMonitor


def reading(*conns: Conn) -> bool:
    # A call, not an attribute: mypy would otherwise keep an asserted value
    # across the calls that change it.
    return all(c.reading for c in conns)


def saturated(w: Watermarks) -> bool:
    return w.saturated


class Conn:
    def __init__(self) -> None:
        self.reading = True
        self.pauses = 0

    def pause_feeding(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_feeding(self) -> None:
        self.reading = True


@pytest.mark.timeout(10)
def test_watermarks_have_hysteresis() -> None:
    w = Watermarks(10, 4)
    assert [w.update(n) for n in (0, 9, 10, 11, 10, 5)] == [None, None, True, None, None, None]
    assert saturated(w)
    assert w.update(4) is False
    assert w.update(9) is None and not saturated(w)
    with pytest.raises(ValueError):
        Watermarks(4, 4)


@pytest.mark.timeout(10)
def test_feeders_pause_while_any_reason_holds_and_resume_after_the_last() -> None:
    flow = FlowControl()
    a, b, worker = Conn(), Conn(), Conn()
    flow.feeding(a)
    flow.saturated("peer n2")
    assert not reading(a) and reading(worker)
    flow.feeding(b)  # a connection that starts submitting while saturated
    assert not reading(b) and flow.paused_connections == 2
    flow.saturated("store")
    flow.relieved("peer n2")
    assert not reading(a) and not reading(b)  # the store still holds
    flow.relieved("store")
    assert reading(a, b) and flow.paused_connections == 0
    assert flow.pauses == 2 and flow.saturations == 1
    flow.relieved("store")  # unknown reasons are ignored
    assert reading(a)


@pytest.mark.timeout(10)
def test_a_feeder_that_turns_worker_or_closes_is_read_again() -> None:
    flow = FlowControl()
    a = Conn()
    flow.feeding(a)
    flow.saturated("event loop")
    assert not reading(a)
    flow.not_feeding(a)
    assert reading(a) and flow.paused_connections == 0
    flow.relieved("event loop")
    flow.saturated("event loop")
    assert reading(a)  # no longer a feeder


@pytest.mark.timeout(10)
def test_lag_histogram_buckets_and_quantiles() -> None:
    h = LagHistogram((0.01, 0.1, 1.0))
    for v in [0.001] * 98 + [0.05, 3.0]:
        h.observe(v)
    assert h.cumulative() == [(0.01, 98), (0.1, 99), (1.0, 99), (float("inf"), 100)]
    assert h.quantile(0.5) == 0.01
    assert h.quantile(0.99) == 0.1
    assert h.quantile(1.0) == 3.0
    assert h.max == 3.0 and h.count == 100


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[object] = []

    def call_later(self, delay: float, cb: object) -> FakeTimer:
        t = FakeTimer(cb)
        self.timers.append(t)
        return t


class FakeTimer:
    def __init__(self, cb: object) -> None:
        self.cb = cb

    def cancel(self) -> None:
        pass


@pytest.mark.timeout(10)
def test_lag_monitor_measures_lateness() -> None:
    now = [100.0]
    seen: list[float] = []
    loop = FakeLoop()
    m = LoopLagMonitor(loop, interval=0.05, on_lag=seen.append,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    m.start()
    now[0] += 0.05 + 0.3  # the loop ran the timer 300 ms late
    loop.timers[-1].cb()  # type: ignore[attr-defined]
    now[0] += 0.05
    loop.timers[-1].cb()  # type: ignore[attr-defined]
    assert seen == pytest.approx([0.3, 0.0])
    assert m.histogram.count == 2
