"""Which Python gRPC implementation carries the peer link: grpclib.

The peer protocol is gRPC (proto/peer.proto is the contract; any gRPC stack
can talk to a node). The implementation is chosen by what a message costs:
benchmarks/grpc_cost.py measured a pipelined bidi stream on a 2-core machine
at about 17–24 µs of CPU per message and side with grpclib (HTTP/2 in Python
on the event loop) against 40–53 µs with grpc.aio (grpcio's C core hops
through its poller thread and a socketpair wake-up for every message), for
messages of 40 B to 4 KB — the size of the peer link's batches at the loads
where the cost decides anything. grpcio stays a dependency for the etcd
client.

Creation of the server and of a channel live here, one function each, and
both take an optional ``ssl.SSLContext`` so mutual TLS can be added in one
place.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Final

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler
from grpclib.server import Server

from cluster import peer_pb2

# The generated module registers Batch at import time, so mypy cannot see it.
Batch: Any = peer_pb2.Batch  # type: ignore[attr-defined]

LINK_METHOD: Final = "/gearmesh.peer.PeerLink/Link"
STREAM_STREAM: Final = Cardinality.STREAM_STREAM

# Pings find a peer whose host vanished without closing the connection.
_CLIENT_CONFIG: Final = Configuration(
    _keepalive_time=10.0,
    _keepalive_timeout=5.0,
    _keepalive_permit_without_calls=True,
    _http2_max_pings_without_data=0,
)
_SERVER_CONFIG: Final = Configuration(
    _keepalive_permit_without_calls=True,
    _http2_min_sent_ping_interval_without_data=5.0,
)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def open_channel(address: str, ssl_context: ssl.SSLContext | None = None) -> Channel:
    """A channel of its own to one peer (``host:port``), TLS when given."""
    host, port = _split(address)
    return Channel(host, port, ssl=ssl_context, config=_CLIENT_CONFIG)


class _Service:
    """The PeerLink service: Link(stream Batch) returns (stream Batch)."""

    def __init__(self, link: Any) -> None:
        self._link = link

    def __mapping__(self) -> dict[str, Handler]:
        return {LINK_METHOD: Handler(self._link, STREAM_STREAM, Batch, Batch)}


class PeerServer:
    """A started grpclib server that, on stop, also closes the connections
    it accepted: grpclib's own close() only cancels the handlers and stops
    listening, and a dialler would keep a half-dead connection for a
    keepalive period instead of learning at once that the node went away."""

    def __init__(self, server: Server, protocols: list[Any], port: int) -> None:
        self._server = server
        self._protocols = protocols
        self.port = port

    async def stop(self, grace: float | None) -> None:
        self._server.close()
        try:
            async with asyncio.timeout(grace or 0.01):
                await self._server.wait_closed()
        except TimeoutError:
            pass
        for proto in self._protocols:
            processor = getattr(proto, "processor", None)
            if processor is not None:
                processor.close("server stopped")
        self._protocols.clear()


async def start_server(link: Any, host: str, port: int,
                       ssl_context: ssl.SSLContext | None = None) -> PeerServer:
    """Serve PeerLink.Link with ``link(stream)`` on host:port (0: any free
    port, see ``.port``); TLS when a context is given."""
    server = Server([_Service(link)], config=_SERVER_CONFIG)
    protocols: list[Any] = []
    factory = server._protocol_factory

    def tracked() -> Any:
        proto = factory()
        protocols.append(proto)
        return proto

    server._protocol_factory = tracked  # type: ignore[method-assign]
    await server.start(host, port, ssl=ssl_context, reuse_address=True)
    inner: Any = server._server  # the asyncio server; grpclib does not expose the port
    sockets = inner.sockets if inner is not None else ()
    if not sockets:
        raise OSError(f"cannot bind the peer port {host}:{port}")
    return PeerServer(server, protocols, int(sockets[0].getsockname()[1]))
