"""The batched node-to-node transport: one gRPC stream per peer and direction.

Why streams of batches: on this class of machine a gRPC message costs tens of
microseconds, so one message per job caps a link at a few thousand jobs per
second, while msgpack frames packed into one message amortise that cost over
hundreds of frames. ``send()`` only appends the encoded frame to the peer's
outbox; a writer task per peer sends everything the outbox holds as one
``Batch`` whenever the previous write has completed. An idle link therefore
sends a lone frame at once (no timer, no added latency), and a busy link
sends ever larger batches while the previous write is in flight — the batch
size adapts to the load without tuning. A batch is capped at
``max_batch_bytes``, and never mixes frames queued under different map epochs,
so its ``epoch`` says truthfully under which map its frames were routed.

Why one stream per *ordered* pair (A dials B for A→B, B dials A for B→A),
not one per unordered pair:

- Each direction has exactly one owner, the sender: it dials, reconnects,
  buffers and learns of losses. No dial races or tie-breaking on who dials,
  and a node can send to a peer it has just learned about without waiting for
  that peer to learn about it too.
- Failure is reported to the side that can act on it. ``on_peer_down`` fires
  when *our outgoing* stream to a peer breaks, which is exactly when frames we
  sent may have been lost; the node then fails or requeues that work. The
  other node learns of the break through its own outgoing stream, which breaks
  too when a node dies, and through etcd.
- The cost — two TCP connections per pair instead of one — is irrelevant at
  the size of a job-server cluster.

Order: frames to one peer leave in ``send()`` order, one stream carries them,
and the receiver hands each batch to ``on_frames`` before reading the next.
When a peer reconnects, the receiver stops delivering from the stream it
replaced, so an old stream never interleaves with the new one. Frames that
were queued or in flight when a stream broke are lost (the link is not a
durable queue); that is what ``on_peer_down`` is for.

A handshake guards against talking to the wrong node: the dialled node
answers with its node id in the response headers, and the dialler gives up on
a stream whose id differs from the one it meant (e.g. an address reused by a
different pod).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgpack
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from cluster.grpc_stack import LINK_METHOD, STREAM_STREAM, Batch, open_channel, start_server
from cluster.outbox import Outbox
from cluster.tasks import stop_tasks

log = logging.getLogger("gearmesh.cluster")

FramesCallback = Callable[[str, int, list[Any]], None]
PeerCallback = Callable[[str], None]
# Returns None to go on reading, or something to await first (see set_intake_gate).
IntakeGate = Callable[[], "Awaitable[None] | None"]

NODE_HEADER: Final = "x-gearmesh-node"
MAX_BATCH_BYTES: Final = 1 << 20
# Bytes queued for one peer at which the node stops reading the connections
# that feed it (--peer-outbox); they are read again at a quarter of it.
OUTBOX_HIGH: Final = 8 << 20
# How long a frame sent with urgent=False may wait for an urgent one to ride
# with (--peer-defer-ms); it leaves after that even if nothing else is sent.
DEFER: Final = 0.002


class LinkState(enum.Enum):
    CONNECTING = "connecting"  # first dial: frames are buffered
    UP = "up"  # stream open: frames flow
    DOWN = "down"  # broken, redialling with backoff: frames are dropped


def _bucket(count: int) -> int:
    """Smallest power of two >= count: the batch-size histogram's buckets."""
    return 1 << max(count - 1, 0).bit_length()


@dataclasses.dataclass
class LinkStats:
    """Counters of one peer, both directions. ``batch_sizes`` maps a power of
    two to the number of sent batches of at most that many frames."""

    frames_sent: int = 0
    batches_sent: int = 0
    bytes_sent: int = 0
    frames_dropped: int = 0
    frames_received: int = 0
    batches_received: int = 0
    intake_pauses: int = 0  # times we stopped reading this peer (our store was behind)
    batch_sizes: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )


class _Link:
    """Our outgoing side towards one peer."""

    def __init__(self, node_id: str, address: str, outbox: Outbox) -> None:
        self.node_id = node_id
        self.address = address
        self.state = LinkState.CONNECTING
        self.outbox = outbox
        self.wake = asyncio.Event()
        # Set while nothing is buffered and no write is in flight.
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None
        # Armed while deferred frames wait in the outbox with no urgent one.
        self.deferred: asyncio.TimerHandle | None = None
        # Checked after every await: a cancellation alone may be swallowed
        # (see cluster/tasks.py).
        self.closed = False

    def stopped(self) -> bool:
        # A method rather than the bare flag so that type checkers do not
        # assume it keeps its value across awaits.
        return self.closed


class _Incoming:
    __slots__ = ("superseded",)

    def __init__(self) -> None:
        self.superseded = False


class PeerLinks:
    """All of this node's links: dials peers, sends, receives, reports breaks.

    Every method must be called from the event loop thread; the callbacks run
    on it too, synchronously and in order, so they should hand heavy work off
    rather than block.
    """

    def __init__(
        self,
        node_id: str,
        *,
        epoch: int = 0,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        connect_timeout: float = 5.0,
        max_backoff: float = 2.0,
        outbox_high: int = OUTBOX_HIGH,
        ssl_context: ssl.SSLContext | None = None,
        defer: float = DEFER,
    ) -> None:
        self.node_id = node_id
        # mTLS to peers (cluster/security.py); None: plaintext.
        self._ssl = ssl_context
        #: The partition-map epoch stamped on frames sent from now on.
        self.epoch = epoch
        self._cap = max_batch_bytes
        self._outbox_high = outbox_high
        self._defer = defer
        self._on_full: PeerCallback | None = None
        self._on_unfull: PeerCallback | None = None
        self._gate: IntakeGate | None = None
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._links: dict[str, _Link] = {}
        self._incoming: dict[str, _Incoming] = {}
        self._stats: dict[str, LinkStats] = {}
        self._on_frames: FramesCallback | None = None
        self._on_down: PeerCallback | None = None
        self._on_up: PeerCallback | None = None
        self._pack = msgpack.Packer().pack
        self._closed = False

    # -- callbacks --------------------------------------------------------

    def on_frames(self, callback: FramesCallback) -> None:
        """``callback(from_node, epoch, frames)`` for every received batch."""
        self._on_frames = callback

    def on_peer_down(self, callback: PeerCallback) -> None:
        """``callback(node_id)`` when the outgoing stream to a peer breaks (or
        its first dial fails): frames queued or in flight may be lost, and
        ``send`` drops frames to that peer until ``on_peer_up``."""
        self._on_down = callback

    def on_peer_up(self, callback: PeerCallback) -> None:
        """``callback(node_id)`` each time a stream to a peer is established."""
        self._on_up = callback

    def on_outbox(self, full: PeerCallback, relieved: PeerCallback) -> None:
        """``full(node_id)`` when the outbox to a peer reaches its high
        watermark, ``relieved(node_id)`` when it is back at its low one (or
        cleared): the node pauses and resumes the connections feeding it."""
        self._on_full = full
        self._on_unfull = relieved

    def set_intake_gate(self, gate: IntakeGate) -> None:
        """Before reading the next batch from any peer, the receiver calls
        ``gate()`` and awaits what it returns (None: read on). While it waits,
        gRPC's flow control stops the sending node's writer, whose outbox
        then fills and pauses its clients: back-pressure across nodes."""
        self._gate = gate

    def outboxes(self) -> dict[str, tuple[int, int]]:
        """Peer → (frames, bytes) queued for it."""
        return {n: (link.outbox.frames, link.outbox.size) for n, link in self._links.items()}

    # -- outgoing ---------------------------------------------------------

    def connect(self, node_id: str, address: str) -> None:
        """Keep a stream to ``node_id`` at ``address`` open until disconnect.

        Frames sent before the first dial completes are buffered. Calling it
        again with a new address redials there; with the same one, no-op.
        """
        if self._closed:
            raise RuntimeError("PeerLinks is closed")
        if node_id == self.node_id:
            raise ValueError("a node does not link to itself")
        link = self._links.get(node_id)
        if link is not None:
            if link.address == address:
                return
            self.disconnect(node_id)
        outbox = Outbox(self._cap, self._outbox_high,
                        on_high=lambda: self._fire(self._on_full, node_id),
                        on_low=lambda: self._fire(self._on_unfull, node_id))
        link = _Link(node_id, address, outbox)
        self._links[node_id] = link
        self._stats.setdefault(node_id, LinkStats())
        link.task = asyncio.get_running_loop().create_task(
            self._run_link(link), name=f"peerlink-{node_id}"
        )

    def disconnect(self, node_id: str) -> None:
        """Stop linking to a peer (it left the membership); drops its outbox.

        No ``on_peer_down``: the caller knows.
        """
        link = self._links.pop(node_id, None)
        if link is None:
            return
        link.closed = True
        self._undefer(link)
        dropped = link.outbox.clear()
        self._stats[node_id].frames_dropped += dropped
        link.idle.set()
        if link.task is not None:
            link.task.cancel()

    def send(self, node_id: str, frame: Any, urgent: bool = True) -> bool:
        """Queue a msgpack-serialisable frame for a peer; never blocks.

        An urgent frame wakes the writer (it leaves at once on an idle link).
        A frame nothing waits for yet (``urgent=False``: a foreground job's
        JOB_CREATED, whose client needs it only before the job's first
        result) does not: it rides in the message of the next urgent frame to
        that peer, or leaves on its own after ``defer`` seconds. Either way
        frames leave in ``send()`` order.

        Returns False when the frame was dropped: unknown peer, or its link is
        down (``on_peer_down`` has fired or is about to).
        """
        link = self._links.get(node_id)
        if link is None or link.state is LinkState.DOWN:
            stats = self._stats.get(node_id)
            if stats is not None:
                stats.frames_dropped += 1
            return False
        link.outbox.add(self._pack(frame), self.epoch)
        if link.wake.is_set():
            return True
        if urgent or self._defer <= 0:
            link.wake.set()
        elif link.deferred is None:
            link.deferred = asyncio.get_running_loop().call_later(
                self._defer, self._deferred_due, link)
        link.idle.clear()
        return True

    @staticmethod
    def _deferred_due(link: _Link) -> None:
        link.deferred = None
        link.wake.set()

    @staticmethod
    def _undefer(link: _Link) -> None:
        if link.deferred is not None:
            link.deferred.cancel()
            link.deferred = None

    def state(self, node_id: str) -> LinkState | None:
        link = self._links.get(node_id)
        return link.state if link is not None else None

    def peers(self) -> dict[str, str]:
        """Connected-to peers: node id → address."""
        return {n: link.address for n, link in self._links.items()}

    def buffered_bytes(self, node_id: str) -> int:
        """Bytes queued for a peer and not yet written: a backpressure signal."""
        link = self._links.get(node_id)
        return link.outbox.size if link is not None else 0

    def totals(self) -> tuple[int, int]:
        """(frames, batches) sent to all peers since start, for the metrics."""
        frames = batches = 0
        for st in self._stats.values():
            frames += st.frames_sent
            batches += st.batches_sent
        return frames, batches

    def stats(self, node_id: str) -> LinkStats:
        return self._stats.setdefault(node_id, LinkStats())

    async def close(self) -> None:
        """Drop every link (no callbacks) and wait for their tasks to end."""
        self._closed = True
        tasks = [link.task for link in self._links.values() if link.task is not None]
        for node_id in list(self._links):
            self.disconnect(node_id)
        await stop_tasks(tasks)

    async def _run_link(self, link: _Link) -> None:
        failures = 0
        while not link.stopped():
            reason = "stream ended"
            try:
                await self._session(link)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = _describe(exc)
            if link.stopped():
                return
            if link.state is LinkState.UP:
                failures = 0
            failures += 1
            if link.state is not LinkState.DOWN:
                link.state = LinkState.DOWN
                self._undefer(link)
                dropped = link.outbox.clear()
                self._stats[link.node_id].frames_dropped += dropped
                link.idle.set()
                log.warning("peer %s (%s) down: %s; %d queued frame(s) dropped",
                            link.node_id, link.address, reason, dropped)
                self._fire(self._on_down, link.node_id)
            else:
                log.debug("peer %s (%s) still down: %s", link.node_id, link.address, reason)
            ceiling = min(self._max_backoff, 0.05 * 2.0 ** min(failures, 16))
            # Timer, not synchronisation: the pause between redials.
            await asyncio.sleep(ceiling * random.uniform(0.5, 1.0))

    async def _session(self, link: _Link) -> None:
        channel = open_channel(link.address, self._ssl)
        try:
            async with channel.request(LINK_METHOD, STREAM_STREAM, Batch, Batch,
                                       metadata={NODE_HEADER: self.node_id}) as stream:
                async with asyncio.timeout(self._connect_timeout):
                    await stream.send_request()
                    await stream.recv_initial_metadata()
                if link.stopped():
                    return
                headers: Any = stream.initial_metadata or {}
                remote = headers.get(NODE_HEADER)
                if remote != link.node_id:
                    raise ConnectionError(
                        f"{link.address} answered as node {remote!r}, expected {link.node_id!r}"
                    )
                link.state = LinkState.UP
                log.info("peer %s (%s) up", link.node_id, link.address)
                self._fire(self._on_up, link.node_id)
                reader = asyncio.create_task(self._await_end(stream))
                writer = asyncio.create_task(self._write_loop(link, stream))
                try:
                    done, _ = await asyncio.wait({reader, writer},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                finally:
                    await stop_tasks([reader, writer])
                await stream.cancel()
        finally:
            channel.close()

    @staticmethod
    async def _await_end(stream: Any) -> None:
        # The dialled side never writes; a read returns only when the stream
        # ends or breaks, which is how a silent link notices a dead peer.
        while (await stream.recv_message()) is not None:
            pass

    async def _write_loop(self, link: _Link, stream: Any) -> None:
        outbox = link.outbox
        stats = self._stats[link.node_id]
        while True:
            chunk = outbox.take()
            if chunk is None:
                link.wake.clear()
                link.idle.set()
                await link.wake.wait()
                continue
            # Deferred frames leave in this message: their timer has no job.
            self._undefer(link)
            payload = b"".join(chunk.parts)
            await stream.send_message(
                Batch(from_node=self.node_id, epoch=chunk.epoch, frames=payload, count=chunk.count)
            )
            stats.frames_sent += chunk.count
            stats.batches_sent += 1
            stats.bytes_sent += len(payload)
            stats.batch_sizes[_bucket(chunk.count)] += 1

    # -- incoming ---------------------------------------------------------

    async def serve_stream(self, stream: Any) -> None:
        """The PeerLink.Link handler body (used by PeerLinkServer)."""
        from_node = stream.metadata.get(NODE_HEADER) if stream.metadata else None
        if not from_node:
            raise GRPCError(Status.INVALID_ARGUMENT, f"missing {NODE_HEADER}")
        await stream.send_initial_metadata(metadata={NODE_HEADER: self.node_id})
        mine = _Incoming()
        previous = self._incoming.get(from_node)
        if previous is not None:
            previous.superseded = True
        self._incoming[from_node] = mine
        stats = self._stats.setdefault(from_node, LinkStats())
        log.debug("incoming stream from peer %s", from_node)
        try:
            while (batch := await stream.recv_message()) is not None:
                if mine.superseded:
                    return
                frames = self._unpack(batch.frames)
                if len(frames) != batch.count:
                    log.error("peer %s sent a batch of %d frame(s) claiming %d; closing its "
                              "stream", from_node, len(frames), batch.count)
                    raise GRPCError(Status.DATA_LOSS, "frame count mismatch")
                stats.batches_received += 1
                stats.frames_received += len(frames)
                callback = self._on_frames
                if callback is not None:
                    try:
                        callback(from_node, batch.epoch, frames)
                    except Exception:
                        log.exception("peer-link on_frames callback failed (peer %s)",
                                      from_node)
                gate = self._gate() if self._gate is not None else None
                if gate is not None:
                    stats.intake_pauses += 1
                    await gate
        finally:
            if self._incoming.get(from_node) is mine:
                del self._incoming[from_node]

    @staticmethod
    def _unpack(data: bytes) -> list[Any]:
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1)
        )
        unpacker.feed(data)
        try:
            return list(unpacker)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return []

    def _fire(self, callback: PeerCallback | None, node_id: str) -> None:
        if callback is None:
            return
        try:
            callback(node_id)
        except Exception:
            log.exception("peer-link callback failed (peer %s)", node_id)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message}"
    if isinstance(exc, ssl.SSLError):
        # The peer's CA did not sign our certificate (it says "unknown ca"), or
        # ours did not sign the peer's, or the peer does not speak TLS.
        return (f"TLS handshake refused ({exc.reason or exc}): both nodes need "
                "certificates from the cluster CA (--peer-ssl-*)")
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    if isinstance(exc, StreamTerminatedError):
        return f"stream terminated: {exc}"
    return f"{type(exc).__name__}: {exc}"


class PeerLinkServer:
    """The gRPC server other nodes dial (``--peer-port``); feeds PeerLinks."""

    def __init__(self, links: PeerLinks, host: str = "0.0.0.0", port: int = 4731,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._links = links
        self._ssl = ssl_context
        self._host = host
        self._requested_port = port
        self._server: Any = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        self._server = await start_server(self._links.serve_stream, self._host,
                                          self._requested_port, self._ssl)
        self.port = self._server.port
        log.info("peer link listening on %s:%d%s", self._host, self.port,
                 " (mTLS)" if self._ssl is not None else "")
        return self.port

    async def stop(self, grace: float | None = 1.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
