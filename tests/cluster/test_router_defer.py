"""Which peer-link frames may wait for company (cluster/router.py), on the
in-memory network of tests/support/peernet.py: a forwarded foreground job's
JOB_CREATED may, nothing else a client waits for may, and the client still
sees its replies in order."""

from __future__ import annotations

import pytest

from cluster import router as R
from node import protocol as P
from tests.support.peernet import cluster, in_loop, sleep_worker, unique_owned_by

pytestmark = pytest.mark.timeout(30)


@in_loop
async def test_foreground_job_created_is_deferred_and_results_keep_their_order() -> None:
    net, n = await cluster("n1", "n2")
    w = n["n2"].worker(b"f")
    await sleep_worker(net, w)
    c = n["n1"].conn()
    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n2", ("n1", "n2")), b"data")
    assert c.recv() == []  # forwarded: the reply comes from n2
    await net.settle()
    [(created, handle)] = c.recv()
    assert created == P.JOB_CREATED and handle.startswith(b"H:n2:")
    # The owner let its JOB_CREATED wait for the result, and only that.
    assert [(src, dst, f[0]) for src, dst, f in net.deferred] == [("n2", "n1", R.REP)]
    assert int.from_bytes(net.deferred[0][2][3][4:8], "big") == P.JOB_CREATED

    assert w.recv() == [(P.NOOP, b"")]
    w.send(P.GRAB_JOB)
    [(assign, _)] = w.recv()
    assert assign == P.JOB_ASSIGN
    w.send(P.WORK_DATA, handle, b"part")
    w.send(P.WORK_STATUS, handle, b"1", b"2")
    w.send(P.WORK_COMPLETE, handle, b"done")
    await net.settle()
    assert c.recv() == [(P.WORK_DATA, handle + b"\0part"), (P.WORK_STATUS, handle + b"\0001\0002"),
                        (P.WORK_COMPLETE, handle + b"\0done")]
    assert len(net.deferred) == 1


@in_loop
async def test_background_job_created_and_errors_are_urgent() -> None:
    net, n = await cluster("n1", "n2")
    c = n["n1"].conn()
    c.send(P.SUBMIT_JOB_BG, b"f", unique_owned_by("n2", ("n1", "n2")), b"data")
    await net.settle()
    [(created, _)] = c.recv()
    assert created == P.JOB_CREATED
    # A foreground submit whose unique is too long gets an error at once.
    c.send(P.SUBMIT_JOB, b"f", unique_owned_by("n2", ("n1", "n2"), 5) + b"x" * 70, b"data")
    await net.settle()
    [(err, _)] = c.recv()
    assert err in (P.ERROR, P.WORK_FAIL)
    assert net.deferred == []
