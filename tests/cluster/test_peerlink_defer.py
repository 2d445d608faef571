"""Frames that ride with the next urgent one (PeerLinks.send, urgent=False),
over real gRPC: they wait for company, keep their order, and are never
stranded on a link that goes idle."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cluster.peerlink import PeerLinks, PeerLinkServer
from tests.cluster.test_peerlink import Node, eventually

pytestmark = pytest.mark.timeout(60)


async def pair(defer: float) -> tuple[Node, Node]:
    a, b = Node("a"), await Node("b").start()
    a.links = PeerLinks("a", connect_timeout=2.0, max_backoff=0.2, defer=defer)
    a.server = PeerLinkServer(a.links, "127.0.0.1", 0)
    a.links.on_frames(a._frames)
    a.links.on_peer_up(a.ups.append)
    await a.start()
    a.links.connect("b", b.address)
    await eventually(lambda: a.ups == ["b"], 10, "link up")
    return a, b


def test_a_deferred_frame_waits_and_rides_with_the_next_urgent_one(run: Any) -> None:
    async def main() -> None:
        # A bound far beyond the test: only the urgent frame can send it.
        a, b = await pair(defer=3600.0)
        try:
            assert a.links.send("b", ["created", 1], urgent=False)
            assert a.links.send("b", ["created", 2], urgent=False)
            # Let the loop run many times over: nothing may leave yet.
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert a.links.stats("b").batches_sent == 0
            assert b.received == []
            assert a.links.send("b", ["complete", 1])
            await eventually(lambda: len(b.received) == 3, 10, "all three frames")
            # In order, and all in the urgent frame's one message.
            assert b.payloads() == [["created", 1], ["created", 2], ["complete", 1]]
            assert b.batches == 1
            assert a.links.stats("b").batch_sizes == {4: 1}
        finally:
            await a.close()
            await b.close()

    run(main())


def test_a_deferred_frame_is_not_stranded_when_nothing_else_is_sent(run: Any) -> None:
    async def main() -> None:
        a, b = await pair(defer=0.02)
        try:
            for i in range(5):
                assert a.links.send("b", ["created", i], urgent=False)
                # Nothing else is ever sent: its bound sends it.
                await eventually(lambda i=i: len(b.received) == i + 1, 10, f"frame {i}")
            assert b.payloads() == [["created", i] for i in range(5)]
            assert a.links.stats("b").batch_sizes == {1: 5}
        finally:
            await a.close()
            await b.close()

    run(main())


def test_defer_zero_sends_every_frame_at_once(run: Any) -> None:
    async def main() -> None:
        a, b = await pair(defer=0.0)
        try:
            assert a.links.send("b", ["created", 1], urgent=False)
            await eventually(lambda: len(b.received) == 1, 10, "the frame")
        finally:
            await a.close()
            await b.close()

    run(main())
