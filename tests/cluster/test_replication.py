"""The owner side of replication (cluster/replication.py) against fakes: when
JOB_CREATED may go out, where copies go, what a refusal or a lost replica
does. Pure logic: the peer link and the local store are recording fakes; the
system tests (tests/cluster/test_failover.py) run the real thing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
import pytest

from cluster import replication
from cluster.memberinfo import MemberInfo
from cluster.partition import PartitionMap, partition_of, ranking
from cluster.peerlink import LinkState
from cluster.replication import REPL, ReplicatingStore, ReplicationError
from node.store import StoredJob


class FakeLinks:
    def __init__(self) -> None:
        self.down: set[str] = set()
        self.sent: list[tuple[str, list[Any]]] = []

    def state(self, node: str) -> LinkState:
        return LinkState.DOWN if node in self.down else LinkState.UP

    def send(self, node: str, frame: list[Any]) -> bool:
        if node in self.down:
            return False
        self.sent.append((node, frame))
        return True

    def take(self) -> list[tuple[str, list[Any]]]:
        out, self.sent = self.sent, []
        return out


class FakeStore:
    durable = True

    def __init__(self) -> None:
        self.adds: list[tuple[Any, Callable[[Any, BaseException | None], None]]] = []
        self.removes: list[int] = []
        self.remove_waiters: list[Callable[[BaseException | None], None]] = []

    def backlog(self) -> int:
        return len(self.adds)

    def add(self, rec: Any, done: Callable[[Any, BaseException | None], None]) -> None:
        self.adds.append((rec, done))

    def commit(self) -> None:
        adds, self.adds = self.adds, []
        for rec, done in adds:
            done(rec, None)

    def remove(self, job_id: int, done: Callable[[BaseException | None], None] | None = None
               ) -> None:
        self.removes.append(job_id)
        if done is not None:
            self.remove_waiters.append(done)

    def commit_removes(self) -> None:
        waiters, self.remove_waiters = self.remove_waiters, []
        for done in waiters:
            done(None)

    def load(self) -> Any:
        return iter(())

    def next_id(self) -> int:
        return 1

    def close(self) -> None:
        pass


def pmap(active: list[str]) -> PartitionMap:
    return PartitionMap(3, {n: MemberInfo("-", state="active") for n in active})


def job(jid: int, unique: bytes) -> StoredJob:
    return StoredJob(jid, b"fn", unique, 1, b"data-" + unique, 0, b"")


def unique_with_second(second: str, owner: str = "n1", nodes: tuple[str, ...] = ("n2", "n3")
                       ) -> bytes:
    """A unique whose copy (placed from ``owner``) goes first to ``second``."""
    m = pmap([owner, *nodes])
    for i in range(10000):
        u = f"u{i}".encode()
        p = partition_of(u)
        if m.owner_of(p) == owner and ranking(list(nodes), p)[0] == second:
            return u
    raise AssertionError("no such unique")


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 10))


async def turn() -> None:
    """Let the store flush its frames (it sends once per loop iteration)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def setup(lease: list[bool] | None = None, single: bool = False
          ) -> tuple[ReplicatingStore, FakeLinks, FakeStore, list[tuple[int, Any]]]:
    links, inner = FakeLinks(), FakeStore()
    held = lease if lease is not None else [True]
    rs = ReplicatingStore(inner, "n1", links, lambda: held[0],  # type: ignore[arg-type]
                          single_copy=single)
    rs.set_map(pmap(["n1", "n2", "n3"]))
    told: list[tuple[int, Any]] = []
    return rs, links, inner, told


def test_job_created_waits_for_both_commits_in_either_order() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        u = unique_with_second("n2")
        rs.add(job(1, u), lambda rec, err: told.append((rec.id, err)))
        rs.add(job(2, u), lambda rec, err: told.append((rec.id, err)))
        await turn()
        frames = links.take()
        assert [(n, f[0]) for n, f in frames] == [("n2", REPL)]  # one frame, both copies
        seq, puts, dels = frames[0][1][1:]
        assert [p[0] for p in puts] == [1, 2] and dels == []
        assert msgpack.unpackb(puts[0][1]) == [b"fn", u, 1, b"data-" + u, 0, b""]
        rs.on_acked("n2", seq, "ok")  # the replica first
        assert told == []
        inner.commit()  # then our own commit
        assert told == [(1, None), (2, None)]
        assert rs.under_replicated == 0
    run(body)


def test_no_reachable_replica_refuses_and_takes_the_row_back() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        links.down = {"n2", "n3"}
        rs.add(job(5, b"a"), lambda rec, err: told.append((rec.id, err)))
        assert len(told) == 1 and isinstance(told[0][1], ReplicationError)
        assert inner.removes == [5]
    run(body)


def test_single_copy_when_the_operator_allows_it_counts_as_under_replicated() -> None:
    async def body() -> None:
        rs, links, inner, told = setup(single=True)
        links.down = {"n2", "n3"}
        rs.add(job(5, b"a"), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        assert told == [(5, None)]
        assert rs.under_replicated == 1
    run(body)


def test_alone_in_the_map_one_copy_is_all_there_is() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        rs.set_map(pmap(["n1"]))
        rs.add(job(5, b"a"), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        assert told == [(5, None)] and links.take() == []
    run(body)


def test_a_replica_that_says_not_replica_sends_the_copy_to_the_next() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        u = unique_with_second("n2")
        rs.add(job(1, u), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        await turn()
        (node, frame), = links.take()
        rs.on_acked(node, frame[1], "not-replica")
        await turn()
        (node2, frame2), = links.take()
        assert node2 == "n3"
        rs.on_acked(node2, frame2[1], "ok")
        assert told == [(1, None)]
    run(body)


def test_stale_means_this_node_acknowledges_nothing() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        rs.add(job(1, b"a"), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        await turn()
        (node, frame), = links.take()
        rs.on_acked(node, frame[1], "stale")
        assert len(told) == 1 and isinstance(told[0][1], ReplicationError)
        assert inner.removes == [1]
    run(body)


def test_lost_lease_refuses_at_once() -> None:
    async def body() -> None:
        lease = [False]
        rs, _links, inner, told = setup(lease=lease)
        rs.add(job(1, b"a"), lambda rec, err: told.append((rec.id, err)))
        assert isinstance(told[0][1], ReplicationError) and inner.adds == []
    run(body)


def test_remove_waits_for_the_replicas_delete() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        rs.add(job(1, b"a"), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        await turn()
        (node, frame), = links.take()
        rs.on_acked(node, frame[1], "ok")
        removed: list[BaseException | None] = []
        rs.remove(1, removed.append)
        await turn()
        (dnode, dframe), = links.take()
        assert dnode == node and dframe[3] == [1]
        inner.commit_removes()
        assert removed == []  # the copy is not deleted yet
        rs.on_acked(dnode, dframe[1], "ok")
        assert removed == [None]
    run(body)


def test_a_lost_replica_gets_its_jobs_copied_again() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        u = unique_with_second("n2")
        rs.add(job(1, u), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        await turn()
        (node, frame), = links.take()
        rs.on_acked(node, frame[1], "ok")
        links.down = {"n2"}
        rs.node_lost("n2")
        assert rs.under_replicated == 1
        await turn()
        (node2, frame2), = links.take()
        assert node2 == "n3" and [p[0] for p in frame2[2]] == [1]
        rs.on_acked("n3", frame2[1], "ok")
        assert rs.under_replicated == 0
        # n2's link comes back without a restart: it is told to drop its copy.
        links.down = set()
        rs.node_back("n2")
        await turn()
        (node3, frame3), = links.take()
        assert node3 == "n2" and frame3[3] == [1]
    run(body)


def test_copies_in_flight_to_a_replica_that_breaks_go_to_the_next() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        us = [unique_with_second("n2")]
        rs.add(job(1, us[0]), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        await turn()
        links.take()
        links.down = {"n2"}
        rs.node_lost("n2")
        await turn()
        (node, frame), = links.take()
        assert node == "n3"
        rs.on_acked("n3", frame[1], "ok")
        assert told == [(1, None)]
    run(body)


def test_a_lone_nodes_jobs_get_their_second_copy_when_a_node_joins() -> None:
    async def body() -> None:
        rs, links, inner, told = setup()
        rs.set_map(pmap(["n1"]))
        rs.add(job(5, b"a"), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        assert told == [(5, None)] and rs.under_replicated == 1
        rs.set_map(pmap(["n1", "n2"]))
        await turn()
        (node, frame), = links.take()
        assert node == "n2" and [p[0] for p in frame[2]] == [5]
        rs.on_acked(node, frame[1], "ok")
        assert rs.under_replicated == 0
    run(body)


def test_large_copies_are_split_into_bounded_frames() -> None:
    async def body() -> None:
        rs, links, _inner, _told = setup()
        big = b"x" * (100 * 1024)
        u = unique_with_second("n2")
        for i in range(1, 8):
            rs.add(StoredJob(i, b"fn", u, 1, big, 0, b""), lambda rec, err: None)
        await turn()
        frames = [f for n, f in links.take() if n == "n2"]
        assert len(frames) >= 3  # 700 KiB of copies, at most about 256 KiB a frame
        assert sorted(p[0] for f in frames for p in f[2]) == list(range(1, 8))
    run(body)


def test_replayed_jobs_are_copied_again_and_their_deletion_goes_everywhere() -> None:
    async def body() -> None:
        rs, links, _inner, _told = setup()
        u = unique_with_second("n2")
        rs.adopt_replayed([job(9, u)])
        assert rs.under_replicated == 1
        await turn()
        (node, frame), = links.take()
        assert node == "n2"
        rs.on_acked(node, frame[1], "ok")
        assert rs.under_replicated == 0
        rs.remove(9)
        await turn()
        # The new copy's holder and every other node (an earlier life of
        # this node may have put the copy there).
        assert sorted((n, f[3]) for n, f in links.take()) == [("n2", [9]), ("n3", [9])]
    run(body)


def test_an_unacknowledged_frame_is_sent_again_then_elsewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica's answer can be lost (its link back to us is missing):
    the frame goes again to the same node, and after RESENDS to the next."""
    monkeypatch.setattr(replication, "ACK_TIMEOUT", 0.05)

    async def body() -> None:
        rs, links, inner, told = setup()
        u = unique_with_second("n2")
        rs.add(job(1, u), lambda rec, err: told.append((rec.id, err)))
        inner.commit()
        sent: list[tuple[str, list[Any]]] = []
        while len(sent) < replication.RESENDS + 1:
            await asyncio.sleep(0.01)
            sent += links.take()
        assert [n for n, _ in sent] == ["n2"] * replication.RESENDS + ["n3"]
        assert all([p[0] for p in f[2]] == [1] for _, f in sent)
        assert told == []
        rs.on_acked("n3", sent[-1][1][1], "ok")
        assert told == [(1, None)]
        rs.close()
    run(body)
