"""Push dispatch between nodes (cluster/router.py), without sockets or gRPC.

Each node is a real JobManager and Router; the peer link is replaced by an
in-memory network that msgpack-encodes every frame (as the real link does) and
delivers it when the test lets the network settle. The real link and real
processes are covered by test_peerlink.py and test_cluster.py; this file pins
the dispatch rules themselves: which frames flow, who holds a job, and that a
job is never lost or run twice when a push finds no worker.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
import pytest

from cluster import router as R
from cluster.memberinfo import MemberInfo
from cluster.partition import PartitionMap
from cluster.peerlink import LinkState
from node import protocol as P
from node.jobs import DELAYED, QUEUED, RUNNING, JobManager, ManagerConfig
from node.session import Session
from node.stats import Counters

pytestmark = pytest.mark.timeout(30)

_HEADER = struct.Struct(">4sII")


class Clock:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def time(self) -> float:
        return self.loop.time()

    def call_later(self, delay: float, callback: Any) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, callback)


class Net:
    """Frames in flight between nodes, delivered in send order per pair."""

    def __init__(self) -> None:
        self.routers: dict[str, R.Router] = {}
        self.queue: list[tuple[str, str, bytes]] = []
        self.log: list[tuple[str, str, Any]] = []  # (from, to, frame) as delivered
        self.down: set[str] = set()

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for src, dst, data in batch:
                frame = msgpack.unpackb(data, raw=False, strict_map_key=False)
                self.log.append((src, dst, frame))
                self.routers[dst].on_frames(src, 1, [frame])
        raise AssertionError("the network did not settle")

    def kinds(self) -> list[tuple[str, str, str]]:
        return [(src, dst, f[0]) for src, dst, f in self.log if f[0] != R.SUP]


class FakeLinks:
    def __init__(self, net: Net, node_id: str) -> None:
        self.net = net
        self.node_id = node_id
        self.epoch = 0
        self._pack = msgpack.Packer().pack

    def send(self, node_id: str, frame: Any) -> bool:
        if node_id in self.net.down:
            return False
        self.net.queue.append((self.node_id, node_id, self._pack(frame)))
        return True

    def state(self, node_id: str) -> LinkState | None:
        return LinkState.DOWN if node_id in self.net.down else LinkState.UP

    def connect(self, node_id: str, address: str) -> None:
        pass

    def disconnect(self, node_id: str) -> None:
        pass


class Conn:
    """A client or worker connected to one node."""

    def __init__(self, m: JobManager, sid: int) -> None:
        self.m = m
        self.out = bytearray()
        self.session = Session(sid, self.out.extend, "127.0.0.1")
        m.attach(self.session)

    def send(self, ptype: int, *args: bytes) -> None:
        for ev in P.Decoder().feed(P.request(ptype, *args)):
            self.m.handle(self.session, ev[0], ev[1])

    def recv(self) -> list[tuple[int, bytes]]:
        data, pos, got = bytes(self.out), 0, []
        self.out.clear()
        while pos < len(data):
            _, ptype, size = _HEADER.unpack_from(data, pos)
            got.append((ptype, data[pos + 12:pos + 12 + size]))
            pos += 12 + size
        return got

    def close(self) -> None:
        self.m.detach(self.session)


class Node:
    def __init__(self, net: Net, node_id: str) -> None:
        self.id = node_id
        self.m = JobManager(Clock(), ManagerConfig(handle_prefix=f"H:{node_id}".encode()))
        self.router = R.Router(node_id, self.m, FakeLinks(net, node_id), Counters())  # type: ignore[arg-type]
        self.m.cluster = self.router
        net.routers[node_id] = self.router
        self._sid = 0

    def conn(self) -> Conn:
        self._sid += 1
        return Conn(self.m, self._sid)

    def worker(self, *funcs: bytes, timeout: int = 0) -> Conn:
        w = self.conn()
        for f in funcs:
            if timeout:
                w.send(P.CAN_DO_TIMEOUT, f, str(timeout).encode())
            else:
                w.send(P.CAN_DO, f)
        return w


async def cluster(*ids: str, joining: tuple[str, ...] = ()) -> tuple[Net, dict[str, Node]]:
    net = Net()
    nodes = {i: Node(net, i) for i in ids}
    members = {i: MemberInfo(peer_address=f"{i}:1",
                             state="joining" if i in joining else "active") for i in ids}
    pmap = PartitionMap(1, members)
    for n in nodes.values():
        n.router.set_map(pmap)
    await net.settle()
    return net, nodes


def unique_owned_by(owner: str, ids: tuple[str, ...], start: int = 0) -> bytes:
    pmap = PartitionMap(1, {i: MemberInfo(peer_address=f"{i}:1", state="active") for i in ids})
    for k in range(start, start + 100_000):
        u = b"u%d" % k
        if pmap.owner_of_key(u) == owner:
            return u
    raise AssertionError("no unique found")


async def sleep_worker(net: Net, w: Conn) -> None:
    w.send(P.PRE_SLEEP)
    assert w.recv() == []
    await net.settle()


async def one_job_for_a_sleeper(ptype: int = P.SUBMIT_JOB, timeout: int = 0
                                ) -> tuple[Net, dict[str, Node], Conn, Conn, bytes]:
    """n1 owns a job and n2's only worker sleeps: (net, nodes, worker, client,
    handle) once n1's push has reached n2."""
    net, n = await cluster("n1", "n2")
    w = n["n2"].worker(b"f", timeout=timeout)
    await sleep_worker(net, w)
    c = n["n1"].conn()
    c.send(ptype, b"f", unique_owned_by("n1", ("n1", "n2")), b"data")
    [(_, handle)] = c.recv()
    await net.settle()
    return net, n, w, c, handle


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run the test coroutine in a fresh event loop (the router needs one)."""
    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 20))
    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


def job_of(node: Node, handle: bytes) -> Any:
    job = node.m.job_by_handle(handle)
    assert job is not None
    return job


@in_loop
async def test_job_is_pushed_to_the_sleeping_worker_and_its_result_comes_back() -> None:
    net, n = await cluster("n1", "n2")
    w = n["n2"].worker(b"f")
    await sleep_worker(net, w)
    c = n["n1"].conn()
    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n1", ("n1", "n2")), b"data")
    [(ptype, handle)] = c.recv()
    assert ptype == P.JOB_CREATED and handle.startswith(b"H:n1:")
    await net.settle()

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
    net, n = await cluster("n1", "n2")
    w = n["n2"].worker(b"f")
    await sleep_worker(net, w)
    c1 = n["n1"].conn()
    c1.send(P.SUBMIT_JOB, b"f", unique_owned_by("n1", ("n1", "n2")), b"remote")
    await net.settle()
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


def drain_map(nodes: dict[str, Node], draining: str) -> None:
    members = {i: MemberInfo(peer_address=f"{i}:1",
                             state="draining" if i == draining else "active") for i in nodes}
    pmap = PartitionMap(2, members)
    for n in nodes.values():
        n.router.set_map(pmap)


@in_loop
async def test_drain_hands_queued_background_jobs_over_in_order() -> None:
    net, n = await cluster("n1", "n2")
    ids = ("n1", "n2")
    c = n["n1"].conn()
    sent = []
    for k, ptype in enumerate([P.SUBMIT_JOB_LOW_BG, P.SUBMIT_JOB_BG, P.SUBMIT_JOB_HIGH_BG,
                               P.SUBMIT_JOB_BG, P.SUBMIT_JOB_LOW_BG]):
        u = unique_owned_by("n1", ids, start=k * 1000)
        c.send(ptype, b"f", u, b"p%d" % k)
        sent.append(u)
    c.send(P.SUBMIT_JOB_BG, b"f", b"", b"no-unique")
    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n1", ids, start=9000), b"foreground")
    future = int(n["n1"].m.clock.time()) + 3600
    c.send(P.SUBMIT_JOB_EPOCH, b"f", unique_owned_by("n1", ids, start=7000),
           str(future).encode(), b"later")
    c.recv()
    drain_map(n, "n1")

    assert n["n1"].router.hand_off() == 7  # not the foreground job
    await net.settle()

    m1, m2 = n["n1"].m, n["n2"].m
    assert [j.payload for j in m1.jobs.values()] == [b"foreground"]
    assert n["n1"].router.counters.handed_off == 7
    # n2 runs them in the order n1 would have: priority, then arrival.
    w = n["n2"].worker(b"f")
    got = []
    for _ in range(6):
        w.send(P.GRAB_JOB)
        [(ptype, payload)] = w.recv()
        assert ptype == P.JOB_ASSIGN
        got.append(payload.rsplit(b"\0", 1)[1])
    assert got == [b"p2", b"p1", b"p3", b"no-unique", b"p0", b"p4"]
    [later] = [j for j in m2.jobs.values() if j.payload == b"later"]
    assert later.when == future and later.state == DELAYED


@in_loop
async def test_a_job_the_new_owner_cannot_take_stays_in_place() -> None:
    net, n = await cluster("n1", "n2")
    ids = ("n1", "n2")
    c = n["n1"].conn()
    for k in range(3):
        c.send(P.SUBMIT_JOB_BG, b"f", unique_owned_by("n1", ids, start=k * 1000), b"p%d" % k)
    c.recv()
    drain_map(n, "n1")
    net.down.add("n2")

    assert n["n1"].router.hand_off() == 0
    await net.settle()

    fn = n["n1"].m.functions[b"f"]
    assert (fn.queued, fn.running) == (3, 0)
    w = n["n1"].worker(b"f")
    w.send(P.GRAB_JOB)
    assert w.recv()[0][1].endswith(b"\0p0")


@in_loop
async def test_queued_background_jobs_follow_their_key_when_a_node_joins() -> None:
    net, n = await cluster("n1", "n2", "n3", joining=("n3",))
    before, after = ("n1", "n2"), ("n1", "n2", "n3")
    old = PartitionMap(0, {i: MemberInfo("-", state="active") for i in before})
    new = PartitionMap(0, {i: MemberInfo("-", state="active") for i in after})
    moving = [u for u in (b"u%d" % k for k in range(2000))
              if old.owner_of_key(u) == "n1" and new.owner_of_key(u) == "n3"][:5]
    staying = unique_owned_by("n1", after)
    c = n["n1"].conn()
    for u in [*moving, staying]:
        c.send(P.SUBMIT_JOB_BG, b"f", u, b"payload-" + u)
    assert all(h.startswith(b"H:n1:") for _, h in c.recv())
    c.send(P.SUBMIT_JOB_BG, b"f", b"", b"no-unique")
    c.recv()

    members = {i: MemberInfo(peer_address=f"{i}:1", state="active") for i in after}
    for node in n.values():
        node.router.set_map(PartitionMap(2, members))
    await net.settle()

    assert sorted(j.unique for j in n["n3"].m.jobs.values()) == sorted(moving)
    assert sorted(j.unique for j in n["n1"].m.jobs.values()) == sorted([staying, b""])
    # The new owner coalesces against what it was handed, wherever the
    # submit arrives.
    c2 = n["n2"].conn()
    c2.send(P.SUBMIT_JOB_BG, b"f", moving[0], b"again")
    await net.settle()
    [(ptype, handle)] = c2.recv()
    assert ptype == P.JOB_CREATED and handle.startswith(b"H:n3:")
    assert len(n["n3"].m.jobs) == len(moving)
