"""Picking the next job from the run queues (node/runqueue.py)."""

from __future__ import annotations

import pytest

from node import runqueue
from node.job import HIGH, LOW, NORMAL, Function, Job
from node.jobstate import GONE, QUEUED, move

pytestmark = pytest.mark.timeout(30)


def queued(fn: Function, jid: int, priority: int = NORMAL) -> Job:
    job = Job(jid, fn, b"", b"", priority, False, 0, b"")
    move(job, QUEUED)
    fn.queues[priority].append(job)
    return job


def test_pick_prefers_priority_across_functions_then_round_robin() -> None:
    a, b = Function(b"a"), Function(b"b")
    a1 = queued(a, 1, LOW)
    b1 = queued(b, 2, HIGH)
    a2 = queued(a, 3)
    b2 = queued(b, 4)
    regs = [(a, 0), (b, 0)]
    assert runqueue.pick(regs, 0) == (b1, 1)  # high first, wherever it is
    assert runqueue.pick(regs, 0) == (a2, 0)  # then normal, from the start index
    assert runqueue.pick(regs, 1) == (b2, 1)
    assert runqueue.pick(regs, 1) == (a1, 0)
    assert runqueue.pick([], 0) is None


def test_jobs_that_left_the_queued_state_are_skipped_and_dropped() -> None:
    fn = Function(b"f")
    gone = queued(fn, 1)
    move(gone, GONE)
    live = queued(fn, 2)
    assert runqueue.pop_next(fn) is live
    assert not any(fn.queues)
    assert runqueue.pop_next(fn) is None


def test_take_out_keeps_order_and_leaves_the_rest() -> None:
    fn = Function(b"f")
    jobs = [queued(fn, i, (HIGH, NORMAL, LOW)[i % 3]) for i in range(1, 10)]
    taken = runqueue.take_out([fn], lambda j: j.id % 2 == 1)
    assert [j.id for j in taken] == [3, 9, 1, 7, 5]  # by priority, then arrival
    left = [j.id for q in fn.queues for j in q]
    assert sorted(left) == [j.id for j in jobs if j.id % 2 == 0]
