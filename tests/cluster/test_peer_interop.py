"""The peer service is plain gRPC: a client built with the other Python gRPC
stack (grpcio's grpc.aio, from the generated stub of proto/peer.proto) opens
PeerLink.Link on a node's peer server, completes the node-id handshake and
delivers a batch of frames."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import msgpack
import pytest

from cluster import peer_pb2, peer_pb2_grpc
from cluster.peerlink import NODE_HEADER, PeerLinks, PeerLinkServer


@pytest.mark.timeout(30)
def test_grpcio_client_handshakes_and_streams_to_a_node(run: Any) -> None:
    async def main() -> None:
        links = PeerLinks("n1")
        got: asyncio.Queue[tuple[str, int, list[Any]]] = asyncio.Queue()
        links.on_frames(lambda node, epoch, frames: got.put_nowait((node, epoch, frames)))
        server = PeerLinkServer(links, "127.0.0.1", 0)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            stub = peer_pb2_grpc.PeerLinkStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Link(metadata=((NODE_HEADER, "other"),))
            async with asyncio.timeout(10):
                headers = dict(await call.initial_metadata())
            assert headers[NODE_HEADER] == "n1"
            frames = [["sup", {b"f": 1}], ["gone", 7]]
            data = b"".join(msgpack.packb(f) for f in frames)
            await call.write(peer_pb2.Batch(  # type: ignore[attr-defined]
                from_node="other", epoch=5, frames=data, count=len(frames)))
            async with asyncio.timeout(10):
                node, epoch, received = await got.get()
            assert (node, epoch) == ("other", 5)
            assert received == [["sup", {b"f": 1}], ["gone", 7]]
            await call.done_writing()
            call.cancel()
        finally:
            await channel.close()
            await links.close()
            await server.stop(0)

    run(main())


@pytest.mark.timeout(30)
def test_grpcio_client_without_node_id_is_refused(run: Any) -> None:
    async def main() -> None:
        links = PeerLinks("n1")
        server = PeerLinkServer(links, "127.0.0.1", 0)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            stub = peer_pb2_grpc.PeerLinkStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Link()
            async with asyncio.timeout(10):
                code = await call.code()
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await channel.close()
            await links.close()
            await server.stop(0)

    run(main())
