"""Job-manager bugs found by the system tests, pinned at the unit level."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from node import protocol as P
from node.dispatch import Dispatcher
from node.jobs import JobManager, ManagerConfig
from node.session import Session


class Clock:
    def time(self) -> float:
        return 1000.0

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        raise AssertionError("no timers expected")


def session(m: JobManager, sid: int) -> tuple[Session, list[bytes]]:
    out: list[bytes] = []
    s = Session(sid, out.append)
    m.attach(s)
    return s, out


def counts(m: JobManager, name: bytes) -> tuple[int, int, int]:
    fn = m.functions[name]
    return fn.queued, fn.running, fn.workers


@pytest.mark.timeout(10)
def test_retry_limit_failure_leaves_counts_at_zero() -> None:
    # -j 1 and a worker lost while running: running went to -1 (decremented twice).
    m = JobManager(Clock(), ManagerConfig(job_retries=1))
    client, out = session(m, 1)
    worker, _ = session(m, 2)
    Dispatcher(m).handle(worker, P.CAN_DO, (b"f",))
    Dispatcher(m).handle(client, P.SUBMIT_JOB, (b"f", b"", b"x"))
    Dispatcher(m).handle(worker, P.GRAB_JOB, ())
    m.detach(worker)
    assert counts(m, b"f") == (0, 0, 0)
    assert out[-1] == P.packet(P.WORK_FAIL, b"H:gearmesh:1")
    assert not m.jobs


@pytest.mark.timeout(10)
def test_abandoned_running_job_then_worker_loss_leaves_counts_at_zero() -> None:
    m = JobManager(Clock())
    client, _ = session(m, 1)
    worker, _ = session(m, 2)
    Dispatcher(m).handle(worker, P.CAN_DO, (b"f",))
    Dispatcher(m).handle(client, P.SUBMIT_JOB, (b"f", b"", b"x"))
    Dispatcher(m).handle(worker, P.GRAB_JOB, ())
    m.detach(client)
    m.detach(worker)
    assert counts(m, b"f") == (0, 0, 0)
    assert not m.jobs


@pytest.mark.timeout(10)
def test_requeue_after_worker_loss_counts_one_queued() -> None:
    m = JobManager(Clock())
    client, _ = session(m, 1)
    worker, _ = session(m, 2)
    Dispatcher(m).handle(worker, P.CAN_DO, (b"f",))
    Dispatcher(m).handle(client, P.SUBMIT_JOB, (b"f", b"", b"x"))
    Dispatcher(m).handle(worker, P.GRAB_JOB, ())
    assert counts(m, b"f") == (0, 1, 1)
    m.detach(worker)
    assert counts(m, b"f") == (1, 0, 0)
