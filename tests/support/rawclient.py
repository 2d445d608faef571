"""A deliberately dumb Gearman client for byte-level tests.

It frames packets (magic, type, size, payload) and admin lines and hands back
exactly what the server sent, so tests can assert on bytes.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import struct
import time
from enum import IntEnum
from types import TracebackType
from typing import NamedTuple

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")


class T(IntEnum):
    """Packet types, numbered as on the wire."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


Arg = bytes | str


def _b(value: Arg) -> bytes:
    return value.encode() if isinstance(value, str) else value


def join(*args: Arg) -> bytes:
    """NUL-join arguments into a payload (the last one is not terminated)."""
    return b"\0".join(_b(a) for a in args)


def pack(ptype: int, payload: bytes = b"", magic: bytes = REQ) -> bytes:
    return HEADER.pack(magic, int(ptype), len(payload)) + payload


class Packet(NamedTuple):
    """A packet as received; compares equal to a plain (magic, type, payload) tuple."""

    magic: bytes
    ptype: int
    payload: bytes

    def args(self) -> list[bytes]:
        return self.payload.split(b"\0")

    def __repr__(self) -> str:
        try:
            name = T(self.ptype).name
        except ValueError:
            name = str(self.ptype)
        return f"Packet({self.magic!r}, {name}, {self.payload!r})"


class ConnectionClosed(Exception):
    """The server closed the connection (EOF or reset)."""


_tokens = itertools.count(1)


class RawClient:
    """One TCP connection to a Gearman server."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 5.0,
                 tls: ssl.SSLContext | None = None) -> None:
        if isinstance(address, str):
            host, port = address.rsplit(":", 1)
            address = (host, int(port))
        self.timeout = timeout
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # With a context the TLS handshake happens here, so a refused
        # certificate fails the constructor (ssl.SSLError).
        self.sock = tls.wrap_socket(sock, server_hostname=address[0]) if tls else sock
        self._buf = bytearray()

    # -- low level -------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, ptype: int, *args: Arg, magic: bytes = REQ) -> None:
        self.send_raw(pack(ptype, join(*args), magic))

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no data from server; buffered: {bytes(self._buf)!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(f"no data from server; buffered: {bytes(self._buf)!r}") from None
        except (ConnectionResetError, ssl.SSLEOFError) as exc:
            raise ConnectionClosed(f"reset; buffered: {bytes(self._buf)!r}") from exc
        if not chunk:
            raise ConnectionClosed(f"EOF; buffered: {bytes(self._buf)!r}")
        self._buf += chunk

    def _take(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def recv(self, timeout: float | None = None) -> Packet:
        """Next binary packet from the server."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        magic, ptype, size = HEADER.unpack(self._take(HEADER.size, deadline))
        return Packet(magic, ptype, self._take(size, deadline))

    def expect(self, ptype: int, timeout: float | None = None) -> Packet:
        """Next packet, which must be of type ``ptype`` and carry the RES magic."""
        packet = self.recv(timeout)
        assert (packet.magic, packet.ptype) == (RES, ptype), (
            f"expected {T(ptype).name}, got {packet!r}"
        )
        return packet

    def request(self, ptype: int, *args: Arg) -> Packet:
        self.send(ptype, *args)
        return self.recv()

    def sync(self, timeout: float | None = None) -> list[Packet]:
        """Send an ECHO and return every packet that arrived before its answer.

        Replies on one connection keep their order, so this proves the server
        has processed everything sent before it, and that it answered nothing
        else (empty list), without waiting for an arbitrary time.
        """
        token = f"sync-{next(_tokens)}".encode()
        self.send(T.ECHO_REQ, token)
        seen: list[Packet] = []
        while True:
            packet = self.recv(timeout)
            if packet.ptype == T.ECHO_RES and packet.payload == token:
                return seen
            seen.append(packet)

    def wait_closed(self, timeout: float | None = None) -> None:
        """Assert that the server closes the connection without sending anything."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                self._fill(deadline)
                raise AssertionError(f"expected close, got bytes {bytes(self._buf)!r}")
        except ConnectionClosed:
            assert not self._buf, f"server sent {bytes(self._buf)!r} before closing"

    # -- common flows ----------------------------------------------------
    def submit(self, func: Arg, unique: Arg, data: Arg, ptype: int = T.SUBMIT_JOB) -> bytes:
        """Submit a job and return its handle (asserts JOB_CREATED)."""
        self.send(ptype, func, unique, data)
        return self.expect(T.JOB_CREATED).payload

    def can_do(self, *funcs: Arg) -> None:
        for func in funcs:
            self.send(T.CAN_DO, func)
        assert self.sync() == []

    def grab(self, ptype: int = T.GRAB_JOB_UNIQ) -> Packet:
        self.send(ptype)
        return self.recv()

    def sleep_until_noop(self, timeout: float | None = None) -> None:
        """PRE_SLEEP, then block until the server wakes this worker."""
        self.send(T.PRE_SLEEP)
        self.expect(T.NOOP, timeout)

    # -- admin text protocol ----------------------------------------------
    def send_line(self, line: Arg, eol: bytes = b"\r\n") -> None:
        self.send_raw(_b(line) + eol)

    def read_line(self, timeout: float | None = None) -> bytes:
        """One raw reply line, terminator included."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buf:
            self._fill(deadline)
        end = self._buf.index(b"\n") + 1
        line = bytes(self._buf[:end])
        del self._buf[:end]
        return line

    def read_list(self, timeout: float | None = None) -> bytes:
        """A raw list reply up to and including the final ``.\\n`` line."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = b""
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.001))
            out += line
            if line in (b".\n", b".\r\n"):
                return out

    def admin_line(self, command: Arg, eol: bytes = b"\r\n") -> bytes:
        self.send_line(command, eol)
        return self.read_line()

    def admin_list(self, command: Arg, eol: bytes = b"\r\n") -> list[str]:
        """Lines of a list reply, without terminators and without the final dot."""
        self.send_line(command, eol)
        raw = self.read_list()
        return raw.decode(errors="replace").splitlines()[:-1]

    # -- housekeeping ----------------------------------------------------
    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
