"""Push dispatch between nodes (cluster/router.py), without sockets or gRPC.

Nodes are real JobManagers and Routers on the in-memory network of
tests/support/peernet.py. These tests pin the dispatch rules: which frames
flow, who holds a job, and that a job is never lost or run twice when a push
finds no worker.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cluster import router as R
from node import protocol as P
from node.jobstate import QUEUED, RUNNING
from node.wakeup import WAKE_GRACE
from tests.support.peernet import (
    Conn,
    Net,
    Node,
    cluster,
    in_loop,
    job_of,
    sleep_worker,
    unique_owned_by,
)

pytestmark = pytest.mark.timeout(30)


async def one_job_for_a_sleeper(ptype: int = P.SUBMIT_JOB, timeout: int = 0,
                                payload: bytes = b"data"
                                ) -> tuple[Net, dict[str, Node], Conn, Conn, bytes]:
    """n1 owns a job and n2's only worker sleeps: (net, nodes, worker, client,
    handle) once n1's push has reached n2."""
    net, n = await cluster("n1", "n2")
    w = n["n2"].worker(b"f", timeout=timeout)
    await sleep_worker(net, w)
    c = n["n1"].conn()
    c.send(ptype, b"f", unique_owned_by("n1", ("n1", "n2")), payload)
    [(created, handle)] = c.recv()
    assert created == P.JOB_CREATED and handle.startswith(b"H:n1:")
    await net.settle()
    return net, n, w, c, handle


@in_loop
async def test_job_is_pushed_to_the_sleeping_worker_and_its_result_comes_back() -> None:
    net, n, w, c, handle = await one_job_for_a_sleeper()

    assert w.recv() == [(P.NOOP, b"")]
    w.send(P.GRAB_JOB)
    assert w.recv() == [(P.JOB_ASSIGN, handle + b"\0f\0data")]
    job = job_of(n["n1"], handle)
    assert job.state == RUNNING
    w.send(P.WORK_COMPLETE, handle, b"done")
    await net.settle()

    assert c.recv() == [(P.WORK_COMPLETE, handle + b"\0done")]
    assert n["n1"].m.job_by_handle(handle) is None
    # One frame there, the result (told who took it first) back: no grab
    # round trip, no wake.
    assert net.kinds() == [("n1", "n2", R.PUSH), ("n2", "n1", R.TAKEN), ("n2", "n1", R.REQ)]


@in_loop
async def test_pushed_job_goes_before_local_work() -> None:
    _, n, w, _, _ = await one_job_for_a_sleeper(payload=b"remote")
    c2 = n["n2"].conn()
    c2.send(P.SUBMIT_JOB, b"f", unique_owned_by("n2", ("n1", "n2")), b"local")
    w.recv()
    w.send(P.GRAB_JOB)
    [(ptype, payload)] = w.recv()
    assert ptype == P.JOB_ASSIGN and payload.endswith(b"\0remote")


@in_loop
async def test_push_that_finds_no_worker_returns_to_the_head_of_the_queue() -> None:
    net, n = await cluster("n1", "n2")
    w = n["n2"].worker(b"f")
    await sleep_worker(net, w)
    w.close()  # gone before its node's new count reaches n1
    c = n["n1"].conn()
    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n1", ("n1", "n2")), b"data")
    [(_, handle)] = c.recv()
    await net.settle()

    assert ("n2", "n1", R.RETURN) in net.kinds()
    job = job_of(n["n1"], handle)
    assert job.state == QUEUED and job.worker is None
    assert job.retries == 0  # no worker ever saw it
    # A worker on the owner gets it.
    w1 = n["n1"].worker(b"f")
    w1.send(P.GRAB_JOB)
    assert w1.recv() == [(P.JOB_ASSIGN, handle + b"\0f\0data")]


@in_loop
async def test_push_is_kept_for_an_awake_idle_worker() -> None:
    net, n = await cluster("n1", "n2")
    w = n["n2"].worker(b"f")
    await sleep_worker(net, w)
    n["n2"].m.wake_sleepers(b"f", 1)  # NOOPed for something else; n1 does not know
    assert w.recv() == [(P.NOOP, b"")]
    c = n["n1"].conn()
    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n1", ("n1", "n2")), b"data")
    [(_, handle)] = c.recv()
    await net.settle()

    assert R.RETURN not in [k for _, _, k in net.kinds()]
    w.send(P.GRAB_JOB)
    assert w.recv() == [(P.JOB_ASSIGN, handle + b"\0f\0data")]


@in_loop
async def test_a_remote_worker_that_finishes_gets_the_next_job_without_an_advert() -> None:
    net, n = await cluster("n1", "n2")
    ids = ("n1", "n2")
    w = n["n2"].worker(b"f")
    await sleep_worker(net, w)
    c = n["n1"].conn()
    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n1", ids), b"one")
    [(_, h1)] = c.recv()
    await net.settle()
    w.recv()
    w.send(P.GRAB_JOB)
    w.recv()
    # n1 now counts no sleeper on n2, and n2's count (0 -> 1 -> 0) did not
    # change in a way that would be told at once.
    assert n["n1"].router._supply[b"f"]["n2"] == 0
    w.send(P.WORK_COMPLETE, h1, b"r1")
    await net.settle()
    assert c.recv() == [(P.WORK_COMPLETE, h1 + b"\0r1")]
    sups_before = sum(1 for _, _, f in net.log if f[0] == R.SUP)

    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n1", ids, start=5000), b"two")
    [(_, h2)] = c.recv()
    await net.settle()
    w.send(P.GRAB_JOB)
    assert w.recv() == [(P.JOB_ASSIGN, h2 + b"\0f\0two")]
    assert sum(1 for _, _, f in net.log if f[0] == R.SUP) == sups_before


@in_loop
async def test_one_push_per_advertised_sleeper_spread_over_nodes() -> None:
    net, n = await cluster("n1", "n2", "n3")
    ids = ("n1", "n2", "n3")
    w2, w3 = n["n2"].worker(b"f"), n["n3"].worker(b"f")
    await sleep_worker(net, w2)
    await sleep_worker(net, w3)
    c = n["n1"].conn()
    for k in range(3):
        c.send(P.SUBMIT_JOB_BG, b"f", unique_owned_by("n1", ids, start=k * 1000), b"%d" % k)
    await net.settle()

    pushes = [dst for src, dst, kind in net.kinds() if kind == R.PUSH]
    assert sorted(pushes) == ["n2", "n3"]
    fn = n["n1"].m.functions[b"f"]
    assert (fn.queued, fn.running) == (1, 2)
    assert w2.recv() == [(P.NOOP, b"")] and w3.recv() == [(P.NOOP, b"")]


@in_loop
async def test_worker_with_a_timeout_is_told_to_the_owner_at_once() -> None:
    net, n, w, _, handle = await one_job_for_a_sleeper(timeout=5000)
    w.recv()
    w.send(P.GRAB_JOB)
    w.recv()
    await net.settle()

    assert net.kinds()[-1] == ("n2", "n1", R.TAKEN)
    job = job_of(n["n1"], handle)
    assert isinstance(job.worker, R.RemoteSession)
    assert job.worker.conn == w.session.id and job.timer is not None


@in_loop
async def test_worker_gone_before_its_first_result_requeues_the_job() -> None:
    net, n, w, _, handle = await one_job_for_a_sleeper()
    w.recv()
    w.send(P.GRAB_JOB)
    assert w.recv()[0][0] == P.JOB_ASSIGN
    w.close()
    await net.settle()

    assert net.kinds()[-2:] == [("n2", "n1", R.TAKEN), ("n2", "n1", R.GONE)]
    job = job_of(n["n1"], handle)
    assert job.state == QUEUED and job.retries == 1


@in_loop
async def test_pushed_job_nobody_takes_goes_back_after_the_hold() -> None:
    net, n, w, _, handle = await one_job_for_a_sleeper(P.SUBMIT_JOB_BG)
    assert w.recv() == [(P.NOOP, b"")]  # ... and it never grabs

    r2 = n["n2"].router
    for q in r2._pushed.values():
        for p in q:
            p.until -= R.PUSH_HOLD + 1
    r2._on_tick()
    await net.settle()

    assert ("n2", "n1", R.RETURN) in net.kinds()
    assert job_of(n["n1"], handle).state == QUEUED
    w.send(P.GRAB_JOB)
    assert w.recv() == [(P.NO_JOB, b"")]


@in_loop
async def test_pushed_jobs_of_a_lost_owner_are_dropped() -> None:
    net, n, w, _, _ = await one_job_for_a_sleeper(P.SUBMIT_JOB_BG)
    w.recv()

    net.down.add("n1")
    n["n2"].router.node_lost("n1")
    w.send(P.GRAB_JOB)
    assert w.recv() == [(P.NO_JOB, b"")]


@in_loop
async def test_owner_requeues_jobs_pushed_to_a_lost_node() -> None:
    _, n, _, _, handle = await one_job_for_a_sleeper(P.SUBMIT_JOB_BG)
    assert job_of(n["n1"], handle).state == RUNNING

    n["n1"].router.node_lost("n2")
    assert job_of(n["n1"], handle).state == QUEUED


class StepClock:
    """A clock for the router's wake policy that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None], list[bool]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _StepTimer:
        cancelled = [False]
        self.timers.append((self.now + delay, callback, cancelled))
        return _StepTimer(cancelled)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while due := [t for t in self.timers if t[0] <= self.now and not t[2][0]]:
            for t in due:
                self.timers.remove(t)
                t[1]()


class _StepTimer:
    def __init__(self, cancelled: list[bool]) -> None:
        self._cancelled = cancelled

    def cancel(self) -> None:
        self._cancelled[0] = True


@in_loop
async def test_pushed_job_wakes_the_next_sleeper_when_the_woken_one_does_not_grab() -> None:
    """A sleeper here may be a process busy with another node's job: if the
    one woken for a pushed job does not GRAB within the grace, the next one
    is woken, and only one per grace."""
    net, n = await cluster("n1", "n2")
    clock = StepClock()
    n["n2"].router._push_wakes.clock = clock
    busy, idle, spare = (n["n2"].worker(b"f") for _ in range(3))
    for w in (busy, idle, spare):
        await sleep_worker(net, w)
    c = n["n1"].conn()
    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n1", ("n1", "n2")), b"data")
    [(_, handle)] = c.recv()
    await net.settle()
    assert [busy.recv(), idle.recv(), spare.recv()] == [[(P.NOOP, b"")], [], []]
    clock.advance(WAKE_GRACE / 2)
    assert idle.recv() == []
    clock.advance(WAKE_GRACE / 2)
    assert [idle.recv(), spare.recv()] == [[(P.NOOP, b"")], []]
    idle.send(P.GRAB_JOB)
    assert idle.recv() == [(P.JOB_ASSIGN, handle + b"\0f\0data")]
    clock.advance(10 * WAKE_GRACE)
    assert spare.recv() == []  # answered: nobody else woken
    busy.send(P.GRAB_JOB)  # the busy one's late GRAB finds nothing
    assert busy.recv() == [(P.NO_JOB, b"")]
    assert n["n2"].m.counters.noops_sent == 2


@in_loop
async def test_submits_in_flight_to_a_lost_owner_go_to_the_new_owner_not_queue_error() -> None:
    from cluster.memberinfo import MemberInfo
    from cluster.partition import PartitionMap

    net, n = await cluster("n1", "n2", "n3")
    c = n["n1"].conn()
    ids = ("n1", "n2", "n3")
    lost = [unique_owned_by("n3", ids, start) for start in (0, 50_000)]
    local = unique_owned_by("n1", ids)
    # Two background submits forwarded to n3, one local between them.
    c.send(P.SUBMIT_JOB_BG, b"f", lost[0], b"a")
    c.send(P.SUBMIT_JOB_BG, b"f", local, b"b")
    c.send(P.SUBMIT_JOB_BG, b"f", lost[1], b"c")
    # n3 dies before it read them: the frames in flight are gone.
    net.queue = [q for q in net.queue if q[1] != "n3"]
    net.down.add("n3")
    members = {i: MemberInfo(peer_address=f"{i}:1", state="active") for i in ("n1", "n2")}
    for i in ("n1", "n2"):
        n[i].router.set_map(PartitionMap(2, members))
    await net.settle()
    replies = c.recv()
    assert [t for t, _ in replies] == [P.JOB_CREATED] * 3, replies
    # Each landed on its owner under the new map; none was refused.
    pmap = PartitionMap(2, members)
    for (_, handle), unique in zip(replies, [lost[0], local, lost[1]], strict=True):
        owner = pmap.owner_of_key(unique)
        assert handle.startswith(f"H:{owner}:".encode()), (handle, owner)
    assert n["n1"].router.counters.rerouted == 2
