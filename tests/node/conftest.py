"""Fakes for driving the node's pure layers without sockets or real time.

* :class:`FakeClock` — the job manager's Clock; timers fire only when a test
  calls :meth:`FakeClock.advance`.
* :class:`Peer` — one connection as the job manager sees it: requests are
  framed with the real codec (``protocol.request`` → ``Decoder``) and handed
  to ``Dispatcher.handle`` the way node/connection.py does; everything the
  manager writes is collected and parsed back strictly as server packets
  (``\\0RES`` magic, exact sizes), so a test compares exact bytes.
* :class:`Harness` — a JobManager with a fake clock and peers.

Exposed as fixtures (``clock``, ``harness``, ``make_harness``) rather than
imported, so the tests work in any pytest import mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from node import protocol as P
from node.dispatch import Dispatcher
from node.jobs import JobManager, ManagerConfig
from node.session import Session
from node.store import Store

PREFIX = b"H:t"


class FakeTimer:
    __slots__ = ("callback", "cancelled", "fired", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Wall-clock time that only moves when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.timers: list[FakeTimer] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        self._seq += 1
        timer = FakeTimer(self.now + delay, self._seq, callback)
        self.timers.append(timer)
        return timer

    def active(self) -> list[FakeTimer]:
        return sorted((t for t in self.timers if not t.cancelled and not t.fired),
                      key=lambda t: (t.when, t.seq))

    def advance(self, seconds: float) -> int:
        """Move time forward, firing due timers in order; returns how many fired."""
        target = self.now + seconds
        fired = 0
        while True:
            due = [t for t in self.active() if t.when <= target]
            if not due:
                break
            t = due[0]
            self.now = max(self.now, t.when)
            t.fired = True
            t.callback()
            fired += 1
        self.now = target
        return fired


def parse_server_packets(data: bytes) -> list[tuple[int, bytes]]:
    """Split bytes written by the server into (type, payload); strict framing."""
    try:
        return P.responses(data)
    except ValueError as e:  # BadMagic too
        raise AssertionError(f"server wrote {data!r}: {e}") from e


class Peer:
    """A client/worker connection without a socket."""

    def __init__(self, dispatcher: Dispatcher, sid: int, fd: int, ip: str) -> None:
        self.dispatcher = dispatcher
        self.manager = dispatcher.m
        self.out = bytearray()
        self.session = Session(sid, self.out.extend, ip, fd)
        self.decoder = P.Decoder()
        dispatcher.attach(self.session)

    def send(self, ptype: int, *args: bytes) -> None:
        self.send_raw(P.request(ptype, *args))

    def send_raw(self, data: bytes) -> None:
        for ev in self.decoder.feed(data):
            assert ev[0] > 0, f"request did not frame as a packet: {ev!r}"
            self.dispatcher.handle(self.session, ev[0], ev[1])

    def raw(self) -> bytes:
        """Bytes written since the last read, and forget them."""
        data = bytes(self.out)
        self.out.clear()
        return data

    def recv(self) -> list[tuple[int, bytes]]:
        """Packets written since the last read, and forget them."""
        return parse_server_packets(self.raw())

    def close(self) -> None:
        self.dispatcher.detach(self.session)

    # -- common flows

    def submit(self, func: bytes, unique: bytes, data: bytes,
               ptype: int = P.SUBMIT_JOB) -> bytes:
        self.send(ptype, func, unique, data)
        got = self.recv()
        assert len(got) == 1 and got[0][0] == P.JOB_CREATED, got
        return got[0][1]

    def can_do(self, *funcs: bytes) -> None:
        for f in funcs:
            self.send(P.CAN_DO, f)

    def sleep(self) -> None:
        """PRE_SLEEP; asserts nothing came back (no work waiting)."""
        self.send(P.PRE_SLEEP)
        assert self.recv() == []

    def grab(self, ptype: int = P.GRAB_JOB) -> tuple[int, bytes]:
        self.send(ptype)
        got = self.recv()
        assert len(got) == 1, got
        return got[0]

    def grab_handle(self) -> bytes:
        ptype, payload = self.grab()
        assert ptype == P.JOB_ASSIGN, (ptype, payload)
        return payload.split(b"\0", 1)[0]


class Harness:
    def __init__(self, clock: FakeClock, store: Store | None = None, **config: Any) -> None:
        self.clock = clock
        self.m = JobManager(clock, ManagerConfig(handle_prefix=PREFIX, **config), store=store)
        self.dispatcher = Dispatcher(self.m)
        self._sid = 0

    def peer(self, ip: str = "127.0.0.1", fd: int | None = None) -> Peer:
        self._sid += 1
        return Peer(self.dispatcher, self._sid, 30 + self._sid if fd is None else fd, ip)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_harness(clock: FakeClock) -> Callable[..., Harness]:
    """Harness factory; ``fresh_clock=True`` gives it its own clock (for
    hypothesis tests, which build one harness per example)."""
    def make(store: Store | None = None, fresh_clock: bool = False, **config: Any) -> Harness:
        return Harness(FakeClock() if fresh_clock else clock, store, **config)
    return make


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


# The TLS and ACL tests' certificates (made once per session with openssl).
from tests.support.certs import pki  # noqa: E402, F401
