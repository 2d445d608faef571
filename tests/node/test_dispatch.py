"""Dispatcher (node/dispatch.py): what goes to the forwarder and what stays local."""

from __future__ import annotations

import pytest

from node import protocol as P
from node.dispatch import Dispatcher
from node.jobs import JobManager, ManagerConfig
from node.session import Session


class Clock:
    def time(self) -> float:
        return 1000.0

    def call_later(self, delay: float, callback: object) -> object:
        raise AssertionError("no timers expected")


class RecordingForwarder:
    """Claims every request for another node and records it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gone: list[int] = []

    def forward_submit(self, s: Session, ptype: int, args: tuple[bytes, ...]) -> bool:
        self.calls.append(("submit", ptype))
        return True

    def forward_handle(self, s: Session, ptype: int, args: tuple[bytes, ...],
                       handle: bytes) -> bool:
        self.calls.append(("handle", ptype))
        return True

    def forward_unique(self, s: Session, args: tuple[bytes, ...], unique: bytes) -> bool:
        self.calls.append(("unique", P.GET_STATUS_UNIQUE))
        return True

    def grab(self, s: Session, kind: int) -> bool:
        self.calls.append(("grab", kind))
        return False

    def remote_work(self, s: Session) -> bool:
        self.calls.append(("remote_work", 0))
        return False

    def detached(self, s: Session) -> None:
        self.gone.append(s.id)


def setup() -> tuple[JobManager, Dispatcher, RecordingForwarder, Session, list[bytes]]:
    m = JobManager(Clock(), ManagerConfig(handle_prefix=b"H:a"))
    d = Dispatcher(m)
    fwd = RecordingForwarder()
    d.set_forwarder(fwd)
    out: list[bytes] = []
    s = Session(1, out.append)
    d.attach(s)
    return m, d, fwd, s, out


@pytest.mark.timeout(10)
def test_local_connections_are_routed_through_the_forwarder() -> None:
    m, d, fwd, s, _out = setup()
    d.handle(s, P.SUBMIT_JOB, (b"f", b"u", b"x"))
    d.handle(s, P.SUBMIT_JOB_BG, (b"f", b"", b"x"))  # empty unique: never forwarded
    d.handle(s, P.WORK_COMPLETE, (b"H:b:1", b"r"))
    d.handle(s, P.GET_STATUS, (b"H:b:1",))
    d.handle(s, P.GET_STATUS_UNIQUE, (b"u",))
    d.handle(s, P.GRAB_JOB, ())
    d.handle(s, P.PRE_SLEEP, ())
    assert fwd.calls == [("submit", P.SUBMIT_JOB), ("handle", P.WORK_COMPLETE),
                         ("handle", P.GET_STATUS), ("unique", P.GET_STATUS_UNIQUE),
                         ("grab", P.JOB_ASSIGN), ("remote_work", 0)]
    assert m.job_count() == 1  # the empty-unique job stayed here
    d.detach(s)
    assert fwd.gone == [1]


@pytest.mark.timeout(10)
def test_requests_routed_here_by_another_node_never_reach_the_forwarder() -> None:
    m, d, fwd, s, out = setup()
    d.handle_local(s, P.SUBMIT_JOB, (b"f", b"u", b"x"))
    d.handle_local(s, P.WORK_COMPLETE, (b"H:b:1", b"r"))
    d.handle_local(s, P.GET_STATUS_UNIQUE, (b"u",))
    d.handle_local(s, P.CAN_DO, (b"f",))
    d.handle_local(s, P.GRAB_JOB, ())
    assert fwd.calls == []
    assert m.job_count() == 1
    types = [int.from_bytes(p[4:8], "big") for p in out]
    assert types == [P.JOB_CREATED, P.ERROR, P.STATUS_RES_UNIQUE, P.JOB_ASSIGN]


@pytest.mark.timeout(10)
def test_own_handles_and_oversized_fail_handles_stay_local() -> None:
    _m, d, fwd, s, out = setup()
    d.handle(s, P.WORK_COMPLETE, (b"H:a:7", b"r"))
    d.handle(s, P.WORK_FAIL, (b"x" * 64,))
    assert fwd.calls == []
    assert [int.from_bytes(p[4:8], "big") for p in out] == [P.ERROR, P.ERROR]
    assert b"JOB_NOT_FOUND" in out[0] and b"ARGUMENT_TOO_LARGE" in out[1]
