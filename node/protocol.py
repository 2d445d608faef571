"""Sans-IO codec for the Gearman binary and admin text protocols.

Bytes go in through :meth:`Decoder.feed`, events come out as plain tuples so
the hot path allocates nothing but the arguments themselves:

* ``(ptype, args)`` — a binary request packet, ``1 <= ptype <= 42``; ``args``
  is a tuple of ``bytes`` laid out as gearmand's parser lays them out (the data
  blob, when the type has one, is the last element);
* ``(TEXT, line)`` — one admin text line, without its ``\\n`` / ``\\r\\n``;
* ``(VIOLATION, code, text, close)`` — bad input. ``code``/``text`` form the
  ERROR packet to send; ``close`` says whether the stream can no longer be
  framed (the decoder then discards everything after it).

The decoder never raises on input: anything it cannot frame is a VIOLATION.
Deliberate differences from gearmand's parser (see docs/compatibility.md): a
NUL-terminated argument is searched for only inside its own packet, so a
truncated argument can never swallow the next packet.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any, Final

REQ: Final = b"\0REQ"
RES: Final = b"\0RES"

TEXT: Final = -1
VIOLATION: Final = -2

# Packet types (the numbers are the protocol's).
CAN_DO: Final = 1
CANT_DO: Final = 2
RESET_ABILITIES: Final = 3
PRE_SLEEP: Final = 4
NOOP: Final = 6
SUBMIT_JOB: Final = 7
JOB_CREATED: Final = 8
GRAB_JOB: Final = 9
NO_JOB: Final = 10
JOB_ASSIGN: Final = 11
WORK_STATUS: Final = 12
WORK_COMPLETE: Final = 13
WORK_FAIL: Final = 14
GET_STATUS: Final = 15
ECHO_REQ: Final = 16
ECHO_RES: Final = 17
SUBMIT_JOB_BG: Final = 18
ERROR: Final = 19
STATUS_RES: Final = 20
SUBMIT_JOB_HIGH: Final = 21
SET_CLIENT_ID: Final = 22
CAN_DO_TIMEOUT: Final = 23
ALL_YOURS: Final = 24
WORK_EXCEPTION: Final = 25
OPTION_REQ: Final = 26
OPTION_RES: Final = 27
WORK_DATA: Final = 28
WORK_WARNING: Final = 29
GRAB_JOB_UNIQ: Final = 30
JOB_ASSIGN_UNIQ: Final = 31
SUBMIT_JOB_HIGH_BG: Final = 32
SUBMIT_JOB_LOW: Final = 33
SUBMIT_JOB_LOW_BG: Final = 34
SUBMIT_JOB_SCHED: Final = 35
SUBMIT_JOB_EPOCH: Final = 36
SUBMIT_REDUCE_JOB: Final = 37
SUBMIT_REDUCE_JOB_BACKGROUND: Final = 38
GRAB_JOB_ALL: Final = 39
JOB_ASSIGN_ALL: Final = 40
GET_STATUS_UNIQUE: Final = 41
STATUS_RES_UNIQUE: Final = 42

MAX_TYPE: Final = 42

# (argc, has_data) per type, as gearmand's command table has them. Note the 4
# NUL-terminated arguments of the REDUCE submits (the PROTOCOL text says 3).
_SPEC: Final[dict[int, tuple[int, bool]]] = {
    1: (1, False), 2: (1, False), 3: (0, False), 4: (0, False), 5: (0, False),
    6: (0, False), 7: (2, True), 8: (1, False), 9: (0, False), 10: (0, False),
    11: (2, True), 12: (3, False), 13: (1, True), 14: (1, False), 15: (1, False),
    16: (0, True), 17: (0, True), 18: (2, True), 19: (2, False), 20: (5, False),
    21: (2, True), 22: (1, False), 23: (2, False), 24: (0, False), 25: (1, True),
    26: (1, False), 27: (1, False), 28: (1, True), 29: (1, True), 30: (0, False),
    31: (3, True), 32: (2, True), 33: (2, True), 34: (2, True), 35: (7, True),
    36: (3, True), 37: (4, True), 38: (4, True), 39: (0, False), 40: (4, True),
    41: (1, False), 42: (6, False),
}
SPEC: Final[tuple[tuple[int, bool], ...]] = tuple(_SPEC.get(t, (0, False)) for t in range(43))

# gearmand reads every NUL-terminated argument and every text line into an
# 8192-byte buffer and drops the connection past it; we keep the same bound.
MAX_ARG: Final = 8192
MAX_LINE: Final = 8192
DEFAULT_MAX_PACKET: Final = 64 * 1024 * 1024

# Every packet starts with this header: magic (REQ or RES), type, payload size.
# The one place it is spelled; everything that frames packets uses it.
HEADER: Final = struct.Struct(">4sII")
HEADER_SIZE: Final = HEADER.size  # 12: where a packet's payload starts
# Type and size alone, for the decoder (it checks the magic itself) and for
# building packets behind a constant magic.
_TYPE_SIZE: Final = struct.Struct(">II")
_unpack_header = _TYPE_SIZE.unpack_from
_pack_header = _TYPE_SIZE.pack

# (ptype, args) | (TEXT, line) | (VIOLATION, code, text, close)
Event = tuple[Any, ...]


class Decoder:
    """Incremental parser for one connection's inbound byte stream."""

    __slots__ = ("_buf", "_closed", "_need", "max_packet")

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()
        self._need = 0  # bytes the buffered packet needs before parsing is worth it
        self._closed = False

    def feed(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                # Large packets arrive in pieces; don't rescan per piece.
                return []
            data = bytes(self._buf)
            self._buf.clear()
        self._need = 0
        events: list[Event] = []
        pos = self._parse(data, events)
        if pos < len(data) and not self._closed:
            self._buf += data[pos:]
        return events

    def _parse(self, data: bytes, events: list[Event]) -> int:
        n = len(data)
        pos = 0
        while pos < n:
            if data[pos] != 0:
                nl = data.find(b"\n", pos, pos + MAX_LINE)
                if nl < 0:
                    if n - pos >= MAX_LINE:
                        return self._violation(events, "ARGUMENT_TOO_LARGE",
                                               "Text line longer than 8192 bytes", n)
                    return pos
                end = nl - 1 if nl > pos and data[nl - 1] == 13 else nl
                events.append((TEXT, data[pos:end]))
                pos = nl + 1
                continue
            if n - pos < 12:
                return pos
            magic = data[pos:pos + 4]
            ptype, size = _unpack_header(data, pos + 4)
            if magic != REQ:
                if magic == RES and 0 < ptype <= MAX_TYPE and size <= self.max_packet:
                    if n - pos < 12 + size:
                        self._need = 12 + size
                        return pos
                    events.append((VIOLATION, b"INVALID_MAGIC", b"Request magic expected", False))
                    pos += 12 + size
                    continue
                return self._violation(events, "INVALID_MAGIC", "Request magic expected", n)
            if ptype == 0 or ptype > MAX_TYPE:
                return self._violation(events, "INVALID_COMMAND",
                                        f"Invalid command {ptype}", n)
            if size > self.max_packet:
                return self._violation(
                    events, "ARGUMENT_TOO_LARGE",
                    f"Packet of {size} bytes is over the {self.max_packet}-byte limit", n)
            start = pos + 12
            end = start + size
            if end > n:
                self._need = end - pos
                return pos
            pos = end
            argc, has_data = SPEC[ptype]
            if argc == 0:
                events.append((ptype, (data[start:end],) if has_data else ()))
                continue
            args: list[bytes] = []
            fixed = argc if has_data else argc - 1
            cur = start
            bad = False
            for _ in range(fixed):
                z = data.find(b"\0", cur, end)
                if z < 0:
                    bad = True
                    break
                if z - cur > MAX_ARG:
                    return self._violation(events, "ARGUMENT_TOO_LARGE",
                                           "Argument longer than 8192 bytes", n)
                args.append(data[cur:z])
                cur = z + 1
            if bad:
                events.append((VIOLATION, b"INVALID_ARGUMENT",
                               b"Packet is missing a NUL-terminated argument", False))
                continue
            if not has_data and end - cur > MAX_ARG:
                return self._violation(events, "ARGUMENT_TOO_LARGE",
                                       "Argument longer than 8192 bytes", n)
            args.append(data[cur:end])
            events.append((ptype, tuple(args)))
        return pos

    def _violation(self, events: list[Event], code: str, text: str, n: int) -> int:
        events.append((VIOLATION, code.encode(), text.encode(), True))
        self._closed = True
        self._buf.clear()
        return n


def packet(ptype: int, payload: bytes = b"") -> bytes:
    """One server-to-peer packet."""
    return RES + _pack_header(ptype, len(payload)) + payload


def packet_args(ptype: int, *args: bytes) -> bytes:
    payload = b"\0".join(args)
    return RES + _pack_header(ptype, len(payload)) + payload


def request(ptype: int, *args: bytes) -> bytes:
    """One peer-to-server packet (for clients, tests and the bench tool)."""
    payload = b"\0".join(args)
    return REQ + _pack_header(ptype, len(payload)) + payload


def error_packet(code: bytes, text: bytes) -> bytes:
    return packet(ERROR, code + b"\0" + text)


def packet_type(data: bytes) -> int:
    """The type of one packet in ``data`` (0 if it is shorter than a header)."""
    return int.from_bytes(data[4:8], "big") if len(data) >= HEADER_SIZE else 0


def payload_of(data: bytes) -> bytes:
    """The payload of one whole packet."""
    return data[HEADER_SIZE:]


def first_arg(data: bytes) -> bytes:
    """The first NUL-separated argument of one whole packet (its handle, for
    JOB_CREATED and WORK_*)."""
    end = data.find(b"\0", HEADER_SIZE)
    return data[HEADER_SIZE:] if end < 0 else data[HEADER_SIZE:end]


class BadMagic(ValueError):
    """A packet did not start with the magic the reader expected."""


def decode_packets(data: bytes, on_packet: Callable[[int, bytes], object], pos: int = 0,
                   magic: bytes = RES) -> int:
    """Call ``on_packet(ptype, payload)`` for each whole packet in ``data``
    from ``pos``, and return where the incomplete rest begins. For readers of
    a server's responses (tests, the load generator), so it is a plain loop
    over the header: a callback per packet, no objects of its own. Raises
    :class:`BadMagic` on a packet that does not start with ``magic``."""
    end = len(data)
    unpack = HEADER.unpack_from
    while end - pos >= HEADER_SIZE:
        head, ptype, size = unpack(data, pos)
        stop = pos + HEADER_SIZE + size
        if stop > end:
            break
        if head != magic:
            raise BadMagic(f"bad magic {head!r} at byte {pos}")
        on_packet(ptype, data[pos + HEADER_SIZE:stop])
        pos = stop
    return pos


def responses(data: bytes, magic: bytes = RES) -> list[tuple[int, bytes]]:
    """Every packet in ``data``, which must hold whole packets only:
    [(ptype, payload)]. Raises ValueError on a truncated one."""
    out: list[tuple[int, bytes]] = []
    rest = decode_packets(data, lambda t, p: out.append((t, p)), 0, magic)
    if rest != len(data):
        raise ValueError(f"truncated packet in {data[rest:]!r}")
    return out


NOOP_PACKET: Final = packet(NOOP)
NO_JOB_PACKET: Final = packet(NO_JOB)
ERR_INVALID_COMMAND: Final = error_packet(b"INVALID_COMMAND", b"Command not expected")

_SPACES = re.compile(b" +")


def split_admin(line: bytes) -> list[bytes]:
    """Tokens the way gearmand splits an admin line: runs of spaces separate,
    a leading or trailing space yields an empty token, tabs are not spaces."""
    return _SPACES.split(line)


def c_atoi(text: bytes) -> int:
    """C atoi/strtol on an argument, as gearmand reads numbers: optional
    blanks, a sign, digits; anything else ends the number (junk is 0)."""
    s = text.lstrip(b" \t\n\r\v\f")
    sign = 1
    if s[:1] in (b"-", b"+"):
        sign = -1 if s[:1] == b"-" else 1
        s = s[1:]
    n = 0
    for c in s:
        if 48 <= c <= 57:
            n = n * 10 + c - 48
        else:
            break
    return sign * n
