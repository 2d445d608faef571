"""Handing queued background jobs to their key's new owner (cluster/handoff.py):
on drain and on ring changes, over the in-memory network of
tests/support/peernet.py.
"""

from __future__ import annotations

import msgpack
import pytest

from cluster.memberinfo import MemberInfo
from cluster.partition import PartitionMap
from node import protocol as P
from node.jobstate import DELAYED
from tests.support.peernet import Node, cluster, in_loop, unique_owned_by

pytestmark = pytest.mark.timeout(30)


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


@in_loop
async def test_a_large_handoff_is_paced_by_a_window_of_unanswered_jobs() -> None:
    from cluster import handoff

    net, n = await cluster("n1", "n2")
    ids = ("n1", "n2")
    c = n["n1"].conn()
    for k in range(10):
        c.send(P.SUBMIT_JOB_BG, b"f", unique_owned_by("n1", ids, start=k * 1000), b"p%d" % k)
    c.recv()
    drain_map(n, "n1")
    window, handoff.WINDOW = handoff.WINDOW, 3  # type: ignore[misc]  # a Final, on purpose
    try:
        assert n["n1"].router.hand_off() == 10
        in_flight = []
        while net.queue:
            in_flight.append(sum(1 for src, _, _ in net.queue if src == "n1"))
            batch, net.queue = net.queue, []
            for src, dst, data in batch:
                n[dst].router.on_frames(src, 1, [msgpack.unpackb(data, raw=False,
                                                                 strict_map_key=False)])
    finally:
        handoff.WINDOW = window  # type: ignore[misc]
    assert max(in_flight) <= 3
    assert len(n["n1"].m.jobs) == 0 and len(n["n2"].m.jobs) == 10
    assert n["n1"].router.counters.handed_off == 10


@in_loop
async def test_a_drain_with_no_other_active_node_says_why_it_kept_its_jobs() -> None:
    _, n = await cluster("n1", "n2")
    ids = ("n1", "n2")
    c = n["n1"].conn()
    c.send(P.SUBMIT_JOB_BG, b"f", unique_owned_by("n1", ids), b"p")
    c.recv()
    members = {i: MemberInfo(peer_address=f"{i}:1", state="draining") for i in ids}
    for node in n.values():
        node.router.set_map(PartitionMap(2, members))
    moved, left, why = await n["n1"].router.hand_off_all(1.0)
    assert (moved, left) == (0, 1) and "no other active node" in why
