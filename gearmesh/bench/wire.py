"""Minimal Gearman wire codec for the load generator.

Only what the scenarios send and read is here. The hot paths avoid per-packet
objects beyond the payload slice itself, because at a few hundred thousand
packets a second the generator's own parsing cost is what would cap the
figures.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from gearmesh.bench.tls import ClientTLS, context
from node.protocol import (
    GRAB_JOB_UNIQ,
    HEADER,
    PRE_SLEEP,
    REQ,
    WORK_COMPLETE,
    BadMagic,
    decode_packets,
)

_HEADER = HEADER

# Requests with an empty payload never change, so they are built once.
PRE_SLEEP_PACKET = _HEADER.pack(REQ, PRE_SLEEP, 0)
GRAB_UNIQ_PACKET = _HEADER.pack(REQ, GRAB_JOB_UNIQ, 0)


def packet(ptype: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(REQ, ptype, len(payload)) + payload


def submit_packet(ptype: int, func: bytes, unique: bytes, data: bytes) -> bytes:
    size = len(func) + len(unique) + len(data) + 2
    return b"".join((_HEADER.pack(REQ, ptype, size), func, b"\0", unique, b"\0", data))


def work_complete_packet(handle: bytes, data: bytes) -> bytes:
    return b"".join((_HEADER.pack(REQ, WORK_COMPLETE, len(handle) + 1 + len(data)),
                     handle, b"\0", data))


def payload_for(unique: bytes, size: int) -> bytes:
    """The job data the generator sends for a unique id.

    Deriving it from the unique lets any process check a payload it did not
    submit itself (a worker in another process, or a coalesced result) without
    shipping the expected bytes around.
    """
    if size <= 0:
        return b""
    return (unique * (size // len(unique) + 1))[:size]


def error_text(payload: bytes) -> str:
    code, _, text = payload.partition(b"\0")
    return f"{code.decode(errors='replace')}: {text.decode(errors='replace')}"


class ProtocolViolation(Exception):
    """The server sent something that is not a Gearman response frame."""


class PacketProtocol(asyncio.Protocol):
    """Splits the byte stream into response frames and hands each to
    on_packet; after each socket read, after_batch runs once, so subclasses
    can answer a whole batch of replies with a single write."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost_reason: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small request/reply packets: without this, Nagle plus delayed
            # ACKs add tens of milliseconds to every round trip.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        try:
            pos = decode_packets(data, self.on_packet)
        except BadMagic as e:
            self.violation(str(e))
            return
        self._rest = data[pos:] if pos < len(data) else b""
        self.after_batch()

    def violation(self, why: str) -> None:
        self.lost_reason = f"protocol violation: {why}"
        if self.transport is not None:
            self.transport.close()

    def on_packet(self, ptype: int, payload: bytes) -> None:
        raise NotImplementedError

    def after_batch(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost_reason is None:
            self.lost_reason = f"connection lost: {exc}" if exc else "connection closed by server"
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_lost()

    def on_lost(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    tls: ClientTLS | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_servers(text: str) -> list[Server]:
    servers: list[Server] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "4730"
        host = host.strip("[]") or "127.0.0.1"
        servers.append(Server(host, int(port)))
    if not servers:
        raise ValueError("no servers given")
    return servers


P = TypeVar("P", bound=PacketProtocol)


async def open_connection(server: Server, factory: Callable[[], P], timeout: float = 10.0) -> P:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(factory, server.host, server.port,
                               ssl=context(server.tls) if server.tls else None), timeout
    )
    return proto


# --- admin text protocol (blocking; used by the coordinating process) -------


def admin_command(server: Server, command: str, timeout: float = 10.0) -> list[str]:
    """Send one admin command and return its reply lines (without the
    terminating "." for list replies)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((server.host, server.port), timeout=timeout) as raw, \
            (context(server.tls).wrap_socket(raw) if server.tls else raw) as sock:
        sock.sendall(command.encode() + b"\n")
        buf = b""
        while True:
            if buf.startswith((b"OK", b"ERR")) and buf.endswith(b"\n"):
                return [buf.decode(errors="replace").rstrip("\r\n")]
            if buf == b".\n" or buf.endswith(b"\n.\n"):
                return buf.decode(errors="replace").split("\n")[:-2]
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{server}: connection closed during '{command}'")
            buf += chunk


@dataclass(frozen=True)
class FunctionStatus:
    total: int
    running: int
    workers: int


def admin_status(server: Server, timeout: float = 10.0) -> dict[str, FunctionStatus]:
    out: dict[str, FunctionStatus] = {}
    for line in admin_command(server, "status", timeout):
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        try:
            out[parts[0]] = FunctionStatus(int(parts[1]), int(parts[2]), int(parts[3]))
        except ValueError:
            continue
    return out


def wait_for_port(server: Server, deadline_s: float) -> bool:
    """Poll-connect until the server accepts connections or time runs out."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection((server.host, server.port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)
