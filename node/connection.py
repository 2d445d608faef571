"""One TCP connection: bytes in → codec → job manager; replies out.

Thin on purpose. It owns flow control: while the peer does not read its
replies the connection stops reading its requests, and a peer whose unread
output passes the hard limit is disconnected rather than allowed to grow the
node's memory without bound. A connection that submits also stops being read
while the node is saturated (node/flowcontrol.py decides when).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol, cast

from node import protocol as P
from node.admin import Admin
from node.config import NodeConfig
from node.dispatch import Dispatcher
from node.flowcontrol import FlowControl
from node.guard import Guard
from node.jobs import JobManager
from node.session import Session
from node.stats import Counters

_SUBMITS = frozenset({P.SUBMIT_JOB, P.SUBMIT_JOB_BG, P.SUBMIT_JOB_HIGH, P.SUBMIT_JOB_HIGH_BG,
                      P.SUBMIT_JOB_LOW, P.SUBMIT_JOB_LOW_BG, P.SUBMIT_JOB_SCHED,
                      P.SUBMIT_JOB_EPOCH, P.SUBMIT_REDUCE_JOB,
                      P.SUBMIT_REDUCE_JOB_BACKGROUND})

log = logging.getLogger("gearmesh.connection")


class ConnectionHost(Protocol):
    """What a connection needs of its node (node.server.Node implements it);
    a protocol, so this module does not import the server that imports it."""

    config: NodeConfig
    counters: Counters
    loop: asyncio.AbstractEventLoop
    manager: JobManager
    dispatcher: Dispatcher
    admin: Admin
    flow: FlowControl

    def new_session_id(self) -> int: ...

    def check_store(self) -> None: ...

    def admit(self, conn: GearmanConnection) -> bool: ...

    def release(self, conn: GearmanConnection) -> None: ...

    def guard_for(self, transport: asyncio.BaseTransport, admin_only: bool) -> Guard | None: ...


class GearmanConnection(asyncio.Protocol):
    __slots__ = ("_admin_only", "_decoder", "_fed_paused", "_flush_scheduled", "_node", "_out",
                 "_paused", "_transport", "guard", "session")

    def __init__(self, node: ConnectionHost, admin_only: bool = False) -> None:
        self._node = node
        self._admin_only = admin_only
        # Consulted before any request is handled; None when nothing is checked.
        self.guard: Guard | None = None
        self._decoder = P.Decoder(node.config.max_packet)
        self._transport: asyncio.Transport | None = None
        self._paused = False  # the peer does not read our replies
        self._fed_paused = False  # the node is saturated and we feed it
        # Output is gathered and written once per batch of input (or per loop
        # iteration for output other connections cause): one send() for many
        # replies instead of one each, which is most of a small reply's cost.
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but quack alike.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        node = self._node
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "-"
        fd = sock.fileno() if sock is not None else -1
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        if not node.admit(self):
            transport.abort()
            return
        high = node.config.max_output_buffer
        transport.set_write_buffer_limits(high=max(65536, high // 16))
        self.session = Session(node.new_session_id(), self._write, ip, fd)
        self.session.flush = self._flush
        self.guard = node.guard_for(transport, self._admin_only)
        node.dispatcher.attach(self.session)

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._node.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        t = self._transport
        if t is None:
            out.clear()
            return
        t.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        if self._paused and t.get_write_buffer_size() > self._node.config.max_output_buffer:
            log.warning("closing %s: %d bytes of replies unread", self.session,
                        t.get_write_buffer_size())
            self._node.counters.protocol_errors += 1
            t.abort()

    def data_received(self, data: bytes) -> None:
        s = self.session
        if s is None:
            return
        handlers = self._node.dispatcher.handlers
        guard = self.guard
        submitted = False
        for ev in self._decoder.feed(data):
            ptype = ev[0]
            if ptype > 0:
                if ptype in _SUBMITS:
                    submitted = True
                try:
                    if guard is not None:
                        refusal = guard.packet(ptype, ev[1])
                        if refusal is not None:
                            if refusal:
                                s.send(refusal)
                            continue
                    handlers[ptype](s, ev[1])
                except Exception:
                    # A bug must cost this request, not the node or other clients.
                    log.exception("error handling packet type %d from %s", ptype, s.peer)
                    s.send(P.error_packet(b"SERVER_ERROR", b"Internal error"))
            elif ptype == P.TEXT:
                reply = guard.admin(ev[1]) if guard is not None else None
                if reply is None:
                    reply = self._node.admin.handle(s, ev[1])
                if reply is None:
                    self._close()
                    return
                s.send(reply)
            else:
                _, code, text, close = ev
                self._node.counters.protocol_errors += 1
                s.send(P.error_packet(code, text))
                if close:
                    log.info("closing %s: %s", s.peer, text.decode(errors="replace"))
                    self._close()
                    return
        if self._out:
            self._flush()  # replies leave now, not a loop iteration later
        if submitted and not s.regs:
            self._node.check_store()
            self._node.flow.feeding(self)
        elif s.regs and self._node.flow.is_feeder(self):
            self._node.flow.not_feeding(self)  # a worker: it must always be read

    def pause_feeding(self) -> None:
        self._fed_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_feeding(self) -> None:
        self._fed_paused = False
        if not self._paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def pause_writing(self) -> None:
        # The peer is not reading: stop taking its requests until it does.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if (not self._fed_paused and self._transport is not None
                and not self._transport.is_closing()):
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.session
        self._transport = None
        if s is not None:
            self.session = None
            self._node.dispatcher.detach(s)
        self._node.flow.not_feeding(self)
        self._node.release(self)
