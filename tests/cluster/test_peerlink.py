"""The batched peer link over real gRPC: order, batching, failure, reconnect.

Most tests run both ends in one process (one event loop, two servers); the
last ones put the far end in a child process so it can be killed -9."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cluster.peerlink import LinkState, PeerLinks, PeerLinkServer
from tests.support.servers import free_port
from tests.support.waiting import eventually


class Node:
    """One end: PeerLinks + its server + everything its callbacks saw."""

    def __init__(self, node_id: str, port: int = 0) -> None:
        self.id = node_id
        self.links = PeerLinks(node_id, connect_timeout=2.0, max_backoff=0.2)
        self.server = PeerLinkServer(self.links, "127.0.0.1", port)
        self.received: list[tuple[str, int, Any]] = []
        self.batches = 0
        self.ups: list[str] = []
        self.downs: list[str] = []
        self.links.on_frames(self._frames)
        self.links.on_peer_up(self.ups.append)
        self.links.on_peer_down(self.downs.append)

    def _frames(self, from_node: str, epoch: int, frames: list[Any]) -> None:
        self.batches += 1
        self.received.extend((from_node, epoch, f) for f in frames)

    async def start(self) -> Node:
        await self.server.start()
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def payloads(self) -> list[Any]:
        return [f for _, _, f in self.received]

    async def close(self) -> None:
        await self.links.close()
        await self.server.stop(0)


async def pair() -> tuple[Node, Node]:
    a, b = await Node("a").start(), await Node("b").start()
    a.links.connect("b", b.address)
    b.links.connect("a", a.address)
    await eventually(lambda: a.ups == ["b"] and b.ups == ["a"], 10, "both links up")
    return a, b


@pytest.mark.timeout(60)
def test_order_of_100k_frames_and_batching_under_load(run: Any) -> None:
    total = 100_000

    async def main() -> None:
        a, b = await pair()
        try:
            for i in range(total):
                assert a.links.send("b", [i, f"H:a:{i}", b"payload"])
                if i % 5000 == 0:
                    # Let the writer run now and then, as a real producer
                    # (reading client sockets) would.
                    await asyncio.sleep(0)
            await eventually(lambda: len(b.received) >= total, 30, "all frames")
            assert [f[0] for f in b.payloads()] == list(range(total))
            assert b.payloads()[7] == [7, "H:a:7", b"payload"]
            stats = a.links.stats("b")
            assert stats.frames_sent == total
            assert stats.batches_sent == b.batches
            # Batching happened: far fewer messages than frames.
            assert stats.batches_sent < total / 50, stats
            assert sum(stats.batch_sizes.values()) == stats.batches_sent
            assert b.links.stats("a").frames_received == total
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_idle_link_sends_a_lone_frame_at_once(run: Any) -> None:
    async def main() -> None:
        a, b = await pair()
        b.links.on_frames(lambda frm, ep, frames: [b.links.send(frm, f) for f in frames])
        try:
            for i in range(20):
                a.links.send("b", ["ping", i])
                await eventually(lambda i=i: len(a.received) == i + 1, 5, f"echo {i}")
            # Ping-pong: every frame travelled alone, no timer held it back.
            assert a.links.stats("b").batch_sizes == {1: 20}
            assert [f for _, _, f in a.received] == [["ping", i] for i in range(20)]
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_batches_never_mix_epochs(run: Any) -> None:
    async def main() -> None:
        a, b = await pair()
        try:
            for epoch in (5, 6, 7):
                a.links.epoch = epoch
                for i in range(1000):
                    a.links.send("b", [epoch, i])
            await eventually(lambda: len(b.received) == 3000, 10, "all frames")
            assert all(ep == f[0] for _, ep, f in b.received)
            assert [f for _, _, f in b.received] == [
                [e, i] for e in (5, 6, 7) for i in range(1000)]
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_large_frames_and_batch_cap(run: Any) -> None:
    async def main() -> None:
        a, b = await pair()
        try:
            big = b"x" * (3 << 20)  # above the 1 MiB batch cap: travels alone
            a.links.send("b", ["big", big])
            for i in range(3000):
                a.links.send("b", ["small", i, b"y" * 1000])
            await eventually(lambda: len(b.received) == 3001, 20, "all frames")
            assert b.payloads()[0] == ["big", big]
            assert [f[1] for f in b.payloads()[1:]] == list(range(3000))
            # 3 MB of small frames cannot fit in fewer than 3 batches of 1 MiB.
            assert a.links.stats("b").batches_sent >= 4
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_frames_sent_before_the_first_dial_completes_are_delivered(run: Any) -> None:
    async def main() -> None:
        a, b = await Node("a").start(), await Node("b").start()
        try:
            a.links.connect("b", b.address)
            assert a.links.state("b") is LinkState.CONNECTING
            for i in range(100):
                assert a.links.send("b", i)
            await eventually(lambda: len(b.received) == 100, 10, "buffered frames")
            assert b.payloads() == list(range(100))
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_unknown_peer_and_failed_dial(run: Any) -> None:
    async def main() -> None:
        a = await Node("a").start()
        try:
            assert a.links.send("nobody", 1) is False
            a.links.connect("ghost", f"127.0.0.1:{free_port()}")  # nothing listens
            await eventually(lambda: a.downs == ["ghost"], 10, "peer down for a failed dial")
            assert a.links.state("ghost") is LinkState.DOWN
            assert a.links.send("ghost", 1) is False
            assert a.links.stats("ghost").frames_dropped >= 1
        finally:
            await a.close()

    run(main())


@pytest.mark.timeout(60)
def test_wrong_node_at_the_address_is_refused(run: Any) -> None:
    async def main() -> None:
        a, b = await Node("a").start(), await Node("b").start()
        try:
            a.links.connect("c", b.address)  # b answers there, not c
            await eventually(lambda: a.downs == ["c"], 10, "the impostor to be refused")
            assert a.ups == []
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_peer_down_then_reconnect_in_process(run: Any) -> None:
    async def main() -> None:
        a, b = await pair()
        port = b.server.port
        try:
            a.links.send("b", "before")
            await eventually(lambda: b.payloads() == ["before"], 5, "first frame")
            await b.server.stop(0)
            await eventually(lambda: a.downs == ["b"], 10, "peer down after b's server stopped")
            assert a.links.send("b", "while down") is False
            b.server = PeerLinkServer(b.links, "127.0.0.1", port)
            await b.server.start()
            await eventually(lambda: a.ups == ["b", "b"], 10, "the link to come back")
            assert a.links.send("b", "after")
            await eventually(lambda: b.payloads() == ["before", "after"], 5, "frame after")
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_disconnect_is_silent_and_stops_redialling(run: Any) -> None:
    async def main() -> None:
        a, b = await pair()
        try:
            a.links.disconnect("b")
            assert a.links.state("b") is None
            assert a.links.send("b", 1) is False
            await a.links.close()
            assert a.downs == []
            assert a.links.peers() == {}
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_failing_on_frames_callback_keeps_the_link(run: Any) -> None:
    async def main() -> None:
        a, b = await pair()
        seen: list[Any] = []

        def flaky(frm: str, epoch: int, frames: list[Any]) -> None:
            seen.extend(frames)
            if frames[0] == "boom":
                raise RuntimeError("node bug")

        b.links.on_frames(flaky)
        try:
            a.links.send("b", "boom")
            await eventually(lambda: seen == ["boom"], 5, "the failing batch")
            a.links.send("b", "fine")
            await eventually(lambda: seen == ["boom", "fine"], 5, "the next batch")
            assert a.downs == []
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(120)
def test_two_processes_order_kill_and_reconnect(run: Any, spawn_child: Any) -> None:
    total = 100_000

    async def main() -> None:
        a = await Node("a").start()
        child_port = free_port()
        child = spawn_child(["peer", "b", str(child_port), "a", a.address], name="peer-b")
        try:
            await asyncio.to_thread(child.wait_for_line, r"^LISTENING \d+", 20)
            a.links.connect("b", f"127.0.0.1:{child_port}")
            await eventually(lambda: a.ups == ["b"], 10, "link to the child")
            for i in range(total):
                a.links.send("b", [i, b"0123456789abcdef"])
                if i % 5000 == 0:
                    await asyncio.sleep(0)
            # The child echoes everything back over its own link to us.
            await eventually(lambda: len(a.received) >= total, 60, "all echoes")
            assert [f[0] for f in a.payloads()] == list(range(total))
            assert a.links.stats("b").batches_sent < total / 50

            child.kill()
            await eventually(lambda: a.downs == ["b"], 10, "peer down after kill -9")
            assert a.links.send("b", "lost") is False

            again = spawn_child(["peer", "b", str(child_port), "a", a.address], name="peer-b2")
            await eventually(lambda: a.ups == ["b", "b"], 20, "reconnect to the new child")
            a.received.clear()
            a.links.send("b", "hello again")
            await eventually(lambda: a.payloads() == ["hello again"], 10, "echo after restart")
            again.kill()
        finally:
            await a.close()

    run(main(), timeout=100)
