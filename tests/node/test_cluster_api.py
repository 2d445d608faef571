"""The job manager's public API for the cluster (node/seam.py): what it may
read (counts, sessions, the jobs a holder holds) and the moves of push
dispatch and handoff, on a real manager driven through the dispatcher."""

from __future__ import annotations

from typing import Any

import pytest

from node import protocol as P
from node.session import Session

pytestmark = pytest.mark.timeout(30)


class Hooks:
    """Records what the manager tells the cluster (node.seam.ClusterHooks)."""

    def __init__(self) -> None:
        self.unserved_calls: list[tuple[bytes, int]] = []
        self.sleepers_calls: list[bytes] = []

    def unserved(self, name: bytes, count: int) -> None:
        self.unserved_calls.append((name, count))

    def sleepers_changed(self, name: bytes) -> None:
        self.sleepers_calls.append(name)


def holder(sid: int = -1) -> Session:
    return Session(sid, lambda data: None, "holder")


def test_counts_the_cluster_reads(harness: Any) -> None:
    m = harness.m
    w1, w2, c = harness.peer(), harness.peer(), harness.peer()
    w1.can_do(b"f", b"g")
    w2.can_do(b"f")
    w1.sleep()
    assert m.sleepers(b"f") == 1 and m.sleepers(b"g") == 1 and m.sleepers(b"x") == 0
    assert m.sleeper_counts() == {b"f": 1, b"g": 1}
    assert m.awake_workers(b"f") == 1 and m.awake_workers(b"x") == 0
    assert m.abilities(w1.session) == [(b"g", 0), (b"f", 0)]  # newest first
    assert m.session(w1.session.id) is w1.session and m.session(999) is None
    c.submit(b"f", b"u1", b"x")
    c.submit(b"f", b"u2", b"x")
    # w1 was woken for the first job; nobody is coming for the second.
    assert m.unclaimed(b"f") == 1 and m.unclaimed(b"g") == 0 and m.unclaimed(b"x") == 0
    assert m.unclaimed_all() == {b"f": 1}


def test_hooks_hear_function_names(harness: Any) -> None:
    m = harness.m
    hooks = Hooks()
    m.cluster = hooks
    w, c = harness.peer(), harness.peer()
    w.can_do(b"f")
    w.sleep()
    assert hooks.sleepers_calls == [b"f"]
    c.submit(b"f", b"u1", b"x")  # wakes w
    c.submit(b"f", b"u2", b"x")
    assert hooks.unserved_calls[-1] == (b"f", 1)


def test_push_take_reassign_unassign(harness: Any) -> None:
    m = harness.m
    c, w = harness.peer(), harness.peer()
    c.submit(b"f", b"u1", b"x")
    h = holder()
    job = m.take_queued(b"f", h)
    assert job is not None and job.function == b"f" and job.unique == b"u1"
    assert m.take_queued(b"f", h) is None and m.take_queued(b"nope", h) is None
    handle = m.handle_of(job)
    assert m.held(handle, h) is job and m.held(handle, w.session) is None
    assert m.unclaimed(b"f") == 0
    m.reassign(job, w.session, 0)
    assert m.held(handle, w.session) is job and m.held(handle, h) is None
    m.unassign(job)  # back to the head of the queue, not a retry
    assert m.held(handle, w.session) is None
    w.can_do(b"f")
    ptype, payload = w.grab()
    assert ptype == P.JOB_ASSIGN and payload.split(b"\0")[0] == handle
    w.send(P.WORK_COMPLETE, handle, b"done")
    assert m.job_count() == 0
    m.unassign(job)  # stale: the job is gone, nothing happens
    m.reassign(job, w.session, 0)
    assert m.job_count() == 0


def test_take_matching_and_handed_off(harness: Any) -> None:
    m = harness.m
    c = harness.peer()
    for u in (b"a", b"b", b"c"):
        c.submit(b"f", u, b"x", P.SUBMIT_JOB_BG)
    fg = harness.peer()
    fg.submit(b"f", b"d", b"x")  # foreground: a handoff would not take it
    h = holder()
    seen: list[tuple[bytes, bool, int]] = []

    def want(job: Any) -> bool:
        seen.append((job.key, job.bg, job.clients))
        return bool(job.bg) and job.key != b"b"

    taken = m.take_matching(h, want)
    assert [j.key for j in taken] == [b"a", b"c"]
    assert (b"d", False, 1) in seen
    assert m.background_left(h) == 3  # b queued, a and c held by h
    m.handed_off(taken[0])
    m.unassign(taken[1])
    assert m.background_left(h) == 2
    assert m.job_count() == 3
