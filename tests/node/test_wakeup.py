"""The wake policy (node/wakeup.py) alone and inside the job manager, with a
fake clock: a NOOP not answered by a GRAB within WAKE_GRACE counts as not
sent and the next sleeper is woken; never a herd. Fixtures: conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

from node import protocol as P
from node.wakeup import WAKE_GRACE, WakeTracker

pytestmark = pytest.mark.timeout(30)

NOOP = (P.NOOP, b"")
SHORT = WAKE_GRACE / 2


# ------------------------------------------------------------------ the tracker alone


def test_tracker_expires_only_unanswered_noops_after_the_grace(clock: Any) -> None:
    expired: list[tuple[str, int]] = []
    t: WakeTracker[str, int] = WakeTracker(clock, lambda k, v: expired.append((k, v)))
    t.sent("a", 1)
    clock.advance(SHORT)
    t.sent("b", 2)
    t.sent("c", 3)
    assert t.answered("c") == 3
    clock.advance(SHORT)
    assert expired == [("a", 1)]  # b's grace is not over yet
    clock.advance(SHORT)
    assert expired == [("a", 1), ("b", 2)]
    assert len(t) == 0 and not clock.active()  # no timer left behind


def test_tracker_uses_one_timer_for_many_noops(clock: Any) -> None:
    t: WakeTracker[int, None] = WakeTracker(clock, lambda k, v: None)
    for i in range(100):
        t.sent(i, None)
    assert len(clock.active()) == 1


def test_tracker_resent_noop_restarts_its_grace(clock: Any) -> None:
    expired: list[str] = []
    t: WakeTracker[str, None] = WakeTracker(clock, lambda k, v: expired.append(k))
    t.sent("a", None)
    clock.advance(SHORT)
    t.sent("a", None)
    clock.advance(SHORT)
    assert expired == []
    clock.advance(SHORT)
    assert expired == ["a"]


# ------------------------------------------------------------------ in the job manager


def _sleepers(harness: Any, n: int) -> list[Any]:
    workers = [harness.peer() for _ in range(n)]
    for w in workers:
        w.can_do(b"f")
        w.sleep()
    return workers


def test_noop_without_grab_wakes_the_next_sleeper_after_the_grace(harness: Any) -> None:
    c = harness.peer()
    busy, idle = _sleepers(harness, 2)
    h = c.submit(b"f", b"", b"x")
    assert [busy.recv(), idle.recv()] == [[NOOP], []]
    harness.clock.advance(SHORT)
    assert idle.recv() == []  # within the grace: one NOOP per job
    harness.clock.advance(SHORT)
    assert idle.recv() == [NOOP]  # busy (elsewhere) never grabbed
    assert idle.grab() == (P.JOB_ASSIGN, h + b"\0f\0x")
    busy.send(P.GRAB_JOB)  # its late GRAB is served as usual
    assert busy.recv() == [(P.NO_JOB, b"")]
    assert harness.m.counters.noops_sent == 2


def test_noop_answered_in_time_wakes_nobody_else(harness: Any) -> None:
    c = harness.peer()
    a, b = _sleepers(harness, 2)
    c.submit(b"f", b"", b"x")
    assert a.recv() == [NOOP]
    harness.clock.advance(SHORT)
    assert a.grab()[0] == P.JOB_ASSIGN
    harness.clock.advance(10 * WAKE_GRACE)
    assert b.recv() == []
    assert harness.m.counters.noops_sent == 1


def test_herd_stays_one_noop_per_job_per_grace(harness: Any) -> None:
    """Every sleeper busy elsewhere: one more NOOP per grace, each connection
    NOOPed once, then nothing."""
    c = harness.peer()
    workers = _sleepers(harness, 5)
    c.submit(b"f", b"", b"x")
    for k in range(1, 6):
        assert sum(w.recv() == [NOOP] for w in workers) == 1
        assert harness.m.counters.noops_sent == k
        harness.clock.advance(WAKE_GRACE)
    harness.clock.advance(10 * WAKE_GRACE)
    assert [w.recv() for w in workers] == [[]] * 5
    assert harness.m.counters.noops_sent == 5


def test_expired_worker_that_sleeps_again_is_not_noped_twice(harness: Any) -> None:
    c = harness.peer()
    (a,) = _sleepers(harness, 1)
    c.submit(b"f", b"", b"x")
    assert a.recv() == [NOOP]
    harness.clock.advance(2 * WAKE_GRACE)
    a.send(P.PRE_SLEEP)  # its NOOP is still on the way: no second one
    assert a.recv() == []
    assert a.grab()[0] == P.JOB_ASSIGN
