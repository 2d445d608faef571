"""An in-memory cluster for unit tests of cluster/ logic (router, handoff).

Each node is a real JobManager and Router; the peer link is replaced by a
network that msgpack-encodes every frame, as the real link does, and
delivers frames when a test lets it settle. Clients and workers are
sessions fed through the real codec. Only for pure logic: the real link and
real processes are tested in tests/cluster/test_peerlink.py and
test_cluster.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack

from cluster import router as R
from cluster.memberinfo import MemberInfo
from cluster.partition import PartitionMap
from cluster.peerlink import LinkState
from node import protocol as P
from node.dispatch import Dispatcher
from node.jobs import JobManager, ManagerConfig
from node.session import Session
from node.stats import Counters


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
        # Frames sent with urgent=False (allowed to wait for company), as sent.
        self.deferred: list[tuple[str, str, Any]] = []

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

    def send(self, node_id: str, frame: Any, urgent: bool = True) -> bool:
        if node_id in self.net.down:
            return False
        self.net.queue.append((self.node_id, node_id, self._pack(frame)))
        if not urgent:
            self.net.deferred.append((self.node_id, node_id, frame))
        return True

    def state(self, node_id: str) -> LinkState | None:
        return LinkState.DOWN if node_id in self.net.down else LinkState.UP

    def connect(self, node_id: str, address: str) -> None:
        pass

    def disconnect(self, node_id: str) -> None:
        pass


class Conn:
    """A client or worker connected to one node."""

    def __init__(self, d: Dispatcher, sid: int) -> None:
        self.d = d
        self.m = d.m
        self.out = bytearray()
        self.session = Session(sid, self.out.extend, "127.0.0.1")
        d.attach(self.session)

    def send(self, ptype: int, *args: bytes) -> None:
        for ev in P.Decoder().feed(P.request(ptype, *args)):
            self.d.handle(self.session, ev[0], ev[1])

    def recv(self) -> list[tuple[int, bytes]]:
        data = bytes(self.out)
        self.out.clear()
        return P.responses(data)

    def close(self) -> None:
        self.d.detach(self.session)


class Node:
    def __init__(self, net: Net, node_id: str) -> None:
        self.id = node_id
        self.m = JobManager(Clock(), ManagerConfig(handle_prefix=f"H:{node_id}".encode()))
        self.d = Dispatcher(self.m)
        self.router = R.Router(node_id, self.m, self.d, FakeLinks(net, node_id),  # type: ignore[arg-type]
                               Counters())
        self.m.cluster = self.router
        self.d.set_forwarder(self.router)
        net.routers[node_id] = self.router
        self._sid = 0

    def conn(self) -> Conn:
        self._sid += 1
        return Conn(self.d, self._sid)

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
