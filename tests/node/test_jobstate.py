"""The transition table of node/jobstate.py: every allowed move keeps the
function's counts equal to the number of its jobs in each state; every other
move raises and changes nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.job import NORMAL, Function, Job
from node.jobstate import (
    DELAYED,
    GONE,
    NEW,
    PENDING,
    QUEUED,
    RUNNING,
    TRANSITIONS,
    InvalidTransition,
    move,
)

STATES = (NEW, PENDING, QUEUED, DELAYED, RUNNING, GONE)
pytestmark = pytest.mark.timeout(60)


def counts(fn: Function) -> dict[int, int]:
    return {PENDING: fn.pending, QUEUED: fn.queued, DELAYED: fn.delayed, RUNNING: fn.running}


def expected(jobs: list[Job]) -> dict[int, int]:
    return {s: sum(1 for j in jobs if j.state == s) for s in (PENDING, QUEUED, DELAYED, RUNNING)}


def new_job(fn: Function, jid: int = 1) -> Job:
    return Job(jid, fn, b"", b"", NORMAL, False, 0, b"")


def test_a_new_job_counts_nowhere() -> None:
    fn = Function(b"f")
    job = new_job(fn)
    assert job.state == NEW
    assert counts(fn) == expected([job]) == {PENDING: 0, QUEUED: 0, DELAYED: 0, RUNNING: 0}


@pytest.mark.parametrize(("frm", "to"), [(a, b) for a in STATES for b in TRANSITIONS[a]])
def test_every_allowed_move_moves_one_count(frm: int, to: int) -> None:
    fn = Function(b"f")
    job = new_job(fn)
    job.state = frm  # placed directly: the count of frm is set to match below
    for name, state in (("pending", PENDING), ("queued", QUEUED), ("delayed", DELAYED),
                        ("running", RUNNING)):
        setattr(fn, name, 1 if state == frm else 0)
    move(job, to)
    assert job.state == to
    assert counts(fn) == expected([job])


@pytest.mark.parametrize(("frm", "to"),
                         [(a, b) for a in STATES for b in STATES if b not in TRANSITIONS[a]])
def test_every_other_move_raises_and_changes_nothing(frm: int, to: int) -> None:
    fn = Function(b"f")
    job = new_job(fn)
    job.state = frm
    before = counts(fn)
    with pytest.raises(InvalidTransition):
        move(job, to)
    assert job.state == frm
    assert counts(fn) == before


def test_gone_is_final_and_new_is_never_returned_to() -> None:
    assert TRANSITIONS[GONE] == frozenset()
    assert all(NEW not in nxt for nxt in TRANSITIONS.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from(STATES)), max_size=80))
def test_counts_follow_any_sequence_of_moves(steps: list[tuple[int, int]]) -> None:
    fn = Function(b"f")
    jobs = [new_job(fn, i) for i in range(8)]
    for i, to in steps:
        job = jobs[i]
        if to in TRANSITIONS[job.state]:
            move(job, to)
        else:
            with pytest.raises(InvalidTransition):
                move(job, to)
        assert counts(fn) == expected(jobs)
    assert fn.total == sum(expected(jobs).values())
