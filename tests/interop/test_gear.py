"""python `gear`: its Client and Worker run in this process.

The gear worker grabs with GRAB_JOB_UNIQ, so these tests cover the
JOB_ASSIGN_UNIQ path that libgearman and Perl do not use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.admin import wait_for_status
from tests.support.servers import ServerProcess
from tests.support.waiting import wait_until

pytest.importorskip("gear")
import gear

pytestmark = [
    pytest.mark.timeout(30),
    # gear 0.16 still calls notifyAll(); that is its business, not ours.
    pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning"),
]

HANDLE = re.compile(rb"H:[^:]+:\d+")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[gear.Client]:
    c = gear.Client("interop-client")
    c.addServer("127.0.0.1", server.port)
    c.waitForServer(10)
    yield c
    c.shutdown()


@pytest.fixture
def worker(server: ServerProcess) -> Iterator[gear.Worker]:
    w = gear.Worker("interop-worker")
    w.addServer("127.0.0.1", server.port)
    w.waitForServer(10)
    yield w
    w.shutdown()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def register(worker: gear.Worker, server: ServerProcess, *names: str) -> None:
    for name in names:
        worker.registerFunction(name)
    for name in names:
        wait_for_status(server.host_port, name, workers=1)


def next_job(worker: gear.Worker, pool: ThreadPoolExecutor, timeout: float = 10.0) -> Any:
    """worker.getJob() blocks forever; give it a deadline."""
    future = pool.submit(worker.getJob)
    try:
        return future.result(timeout)
    except TimeoutError:
        worker.stopWaitingForJobs()
        raise


def wait_done(job: gear.Job) -> None:
    wait_until(lambda: job.complete, what=f"completion of {job}")


def test_submit_and_complete(
    client: gear.Client, worker: gear.Worker, server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    register(worker, server, "reverse")
    job = gear.Job("reverse", b"abc\x00def", unique="u-123")
    client.submitJob(job, timeout=10)
    assert HANDLE.fullmatch(job.handle)
    got = next_job(worker, pool)
    # GRAB_JOB_UNIQ hands the unique to the worker.
    assert (got.handle, got.name, got.unique, got.arguments) == (
        job.handle,
        "reverse",
        b"u-123",
        b"abc\x00def",
    )
    got.sendWorkComplete(got.arguments[::-1])
    wait_done(job)
    assert (job.failure, job.data) == (False, [b"fed\x00cba"])


def test_empty_unique_reaches_worker_as_none(
    client: gear.Client, worker: gear.Worker, server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    register(worker, server, "f")
    job = gear.Job("f", b"x")  # gear sends an empty unique by default
    client.submitJob(job, timeout=10)
    got = next_job(worker, pool)
    assert got.unique is None
    got.sendWorkComplete(b"")
    wait_done(job)
    assert not job.failure


@pytest.mark.parametrize("precedence", ["PRECEDENCE_NORMAL", "PRECEDENCE_HIGH", "PRECEDENCE_LOW"])
def test_background_jobs_of_every_precedence(
    client: gear.Client,
    worker: gear.Worker,
    server: ServerProcess,
    pool: ThreadPoolExecutor,
    precedence: str,
) -> None:
    job = gear.Job("bg", b"payload", unique="bg-1")
    client.submitJob(job, background=True, precedence=getattr(gear, precedence), timeout=10)
    assert HANDLE.fullmatch(job.handle)
    wait_for_status(server.host_port, "bg", total=1, running=0, workers=0)
    register(worker, server, "bg")
    got = next_job(worker, pool)
    assert (got.handle, got.arguments, got.unique) == (job.handle, b"payload", b"bg-1")
    got.sendWorkComplete(b"ignored")
    wait_for_status(server.host_port, "bg", total=0, running=0)
    assert not job.complete  # a background submitter hears nothing


def test_status_data_and_warning_updates(
    client: gear.Client, worker: gear.Worker, server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    register(worker, server, "chatty")
    job = gear.Job("chatty", b"x")
    client.submitJob(job, timeout=10)
    got = next_job(worker, pool)
    got.sendWorkStatus(1, 4)
    wait_until(lambda: job.numerator == b"1", what="WORK_STATUS at the client")
    assert (job.numerator, job.denominator) == (b"1", b"4")

    # GET_STATUS while the worker holds the job.
    client.sendPacket(
        gear.Packet(gear.constants.REQ, gear.constants.GET_STATUS, job.handle), job.connection
    )
    wait_until(lambda: job.known is not None, what="STATUS_RES")
    assert (job.known, job.running, job.numerator, job.denominator) == (True, True, b"1", b"4")

    got.sendWorkData(b"part")
    got.sendWorkWarning(b"careful")
    got.sendWorkComplete(b"done")
    wait_done(job)
    assert job.data == [b"part", b"careful", b"done"]
    assert job.warning and not job.failure


def test_work_fail(
    client: gear.Client, worker: gear.Worker, server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    register(worker, server, "f")
    job = gear.Job("f", b"x")
    client.submitJob(job, timeout=10)
    next_job(worker, pool).sendWorkFail()
    wait_done(job)
    assert job.failure and job.exception is None


def test_work_exception_with_exceptions_option(
    client: gear.Client, worker: gear.Worker, server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    assert client.setOption("exceptions", timeout=10)
    register(worker, server, "f")
    job = gear.Job("f", b"x")
    client.submitJob(job, timeout=10)
    next_job(worker, pool).sendWorkException(b"boom")
    wait_done(job)
    assert job.failure and job.exception == b"boom"


def test_admin_requests_through_gear(client: gear.Client, server: ServerProcess) -> None:
    conn = client.getConnection()
    version = gear.VersionAdminRequest()
    conn.sendAdminRequest(version, timeout=10)
    assert re.fullmatch(rb"OK 1\.1\.20\S*\n", version.response)
    status = gear.StatusAdminRequest()
    conn.sendAdminRequest(status, timeout=10)
    assert status.response == b".\n"
