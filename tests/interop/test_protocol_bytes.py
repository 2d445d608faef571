"""Byte-exact protocol checks over raw sockets.

Unmarked tests pass against gearmand 1.1.20 byte for byte (run them with
GEARMESH_TEST_SERVER=gearmand). Tests marked ``gearmesh_only`` encode where
gearmesh deliberately fixes a gearmand bug (docs/compatibility.md). Handles
differ between servers, so only their shape is asserted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.admin import connection_count, wait_for_status
from tests.support.rawclient import RES, ConnectionClosed, Packet, RawClient, T, join, pack
from tests.support.servers import ServerProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

HANDLE = re.compile(rb"H:[^:\x00]+:\d+")
Connect = Callable[[], RawClient]


@pytest.fixture
def connect(server: ServerProcess) -> Iterator[Connect]:
    opened: list[RawClient] = []

    def factory() -> RawClient:
        conn = RawClient(server.host_port)
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        conn.close()


def unknown_handle(known: bytes) -> bytes:
    """A handle in this server's format that it never issued."""
    return known.rsplit(b":", 1)[0] + b":987654321"


def wait_connections(server: ServerProcess, count: int) -> None:
    """Wait until the server has processed disconnects (admin connection included)."""
    wait_until(lambda: connection_count(server.host_port) == count, what=f"{count} connections")


# -- ECHO / OPTION ---------------------------------------------------------


def test_echo_returns_payload_byte_for_byte(connect: Connect) -> None:
    c = connect()
    for payload in (b"hello", b"", b"a\0b\0", bytes(range(256)) * 400):
        c.send(T.ECHO_REQ, payload)
        assert c.recv() == (RES, T.ECHO_RES, payload)
    # The whole reply, header included, byte for byte.
    c.send_raw(pack(T.ECHO_REQ, b"ping\0pong"))
    c.send_line("verbose")  # a text reply follows, so the raw read below ends cleanly
    raw = c.read_line()
    assert raw == b"\0RES\0\0\0\x11\0\0\0\x09ping\0pongOK ERROR\n"


def test_option_exceptions_is_echoed_verbatim(connect: Connect) -> None:
    c = connect()
    for name in (b"exceptions", b"EXCEPTIONS"):
        assert c.request(T.OPTION_REQ, name) == (RES, T.OPTION_RES, name)


def test_unknown_option_is_an_error_and_connection_survives(connect: Connect) -> None:
    c = connect()
    reply = c.request(T.OPTION_REQ, b"bogus")
    assert reply == (RES, T.ERROR, b"UNKNOWN_OPTION\0Server does not recognize given option")
    assert c.sync() == []


# -- job creation, handles, coalescing --------------------------------------

SUBMITS = (
    T.SUBMIT_JOB,
    T.SUBMIT_JOB_HIGH,
    T.SUBMIT_JOB_LOW,
    T.SUBMIT_JOB_BG,
    T.SUBMIT_JOB_HIGH_BG,
    T.SUBMIT_JOB_LOW_BG,
)


def test_job_created_carries_a_bare_handle(server: ServerProcess, connect: Connect) -> None:
    c = connect()
    handles = []
    for ptype in SUBMITS:
        handle = c.submit("f", "", "data", ptype)
        assert HANDLE.fullmatch(handle), handle
        handles.append(handle)
    # An empty unique never coalesces: six submits, six jobs.
    assert len(set(handles)) == len(SUBMITS)
    wait_for_status(server.host_port, "f", total=6, running=0, workers=0)


def test_coalescing_same_function_and_unique_gives_one_job(connect: Connect) -> None:
    c1, c2, c3, w = connect(), connect(), connect(), connect()
    h = c1.submit("f", "u1", "data1")
    # Priority, background flag and payload of later submits are ignored.
    assert c2.submit("f", "u1", "data2-different", T.SUBMIT_JOB_HIGH) == h
    assert c3.submit("f", "u1", "data3", T.SUBMIT_JOB_LOW_BG) == h
    # Same unique under another function is another job.
    other = c3.submit("g", "u1", "x", T.SUBMIT_JOB_BG)
    assert other != h

    w.can_do("f")
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", "u1", "data1"))
    assert w.grab() == (RES, T.NO_JOB, b"")
    w.send(T.WORK_COMPLETE, h, "result")
    for client in (c1, c2):
        assert client.recv() == (RES, T.WORK_COMPLETE, join(h, "result"))
        assert client.sync() == []
    assert c3.sync() == []  # background submitters hear nothing

    # After completion the unique is free again: a fresh job.
    fresh = c1.submit("f", "u1", "again")
    assert fresh != h and HANDLE.fullmatch(fresh)


def test_work_packets_reach_every_listener_unchanged(connect: Connect) -> None:
    c1, c2, w = connect(), connect(), connect()
    h = c1.submit("f", "shared", "in")
    assert c2.submit("f", "shared", "in") == h
    w.can_do("f")
    assert w.grab(T.GRAB_JOB).payload == join(h, "f", "in")
    sent = [
        (T.WORK_DATA, join(h, b"part\0one")),
        (T.WORK_WARNING, join(h, "careful")),
        (T.WORK_STATUS, join(h, "1", "3")),
        (T.WORK_COMPLETE, join(h, "")),  # empty result: handle + NUL
    ]
    for ptype, payload in sent:
        w.send_raw(pack(ptype, payload))
    for client in (c1, c2):
        got = [client.recv() for _ in sent]
        assert got == [(RES, ptype, payload) for ptype, payload in sent]
        assert client.sync() == []
    assert w.sync() == []


def test_work_fail_is_forwarded(connect: Connect) -> None:
    c, w = connect(), connect()
    h = c.submit("f", "u", "in")
    w.can_do("f")
    w.grab()
    w.send(T.WORK_FAIL, h)
    assert c.recv() == (RES, T.WORK_FAIL, h)
    assert w.sync() == []


def test_work_exception_reaches_clients_that_asked_and_fails_the_others(
    connect: Connect,
) -> None:
    with_exc, without, w = connect(), connect(), connect()
    assert with_exc.request(T.OPTION_REQ, "exceptions").ptype == T.OPTION_RES
    h = with_exc.submit("f", "u", "in")
    assert without.submit("f", "u", "in") == h
    w.can_do("f")
    w.grab()
    w.send(T.WORK_EXCEPTION, h, "boom")
    assert with_exc.recv() == (RES, T.WORK_EXCEPTION, join(h, "boom"))
    fail = without.recv()
    assert fail.ptype == T.WORK_FAIL
    # gearmand appends a NUL here; gearmesh must not (see the gearmesh_only test).
    assert fail.payload.rstrip(b"\0") == h
    assert with_exc.sync() == [] and without.sync() == []


@pytest.mark.gearmesh_only
def test_exception_downgrade_has_no_stray_nul(connect: Connect) -> None:
    # gearmand 1.1.20 sends "WORK_FAIL handle\0", which libgearman cannot
    # match to its task; gearmesh sends the plain handle like any WORK_FAIL.
    c, w = connect(), connect()
    h = c.submit("f", "u", "in")
    w.can_do("f")
    w.grab()
    w.send(T.WORK_EXCEPTION, h, "boom")
    assert c.recv() == (RES, T.WORK_FAIL, h)


def test_work_results_for_jobs_not_held_are_errors(connect: Connect) -> None:
    c, w = connect(), connect()
    h = c.submit("f", "u", "in")  # queued, but nobody holds it
    for ptype, args, text in (
        (T.WORK_DATA, (h, "x"), b"Job does not exist on server"),
        (T.WORK_WARNING, (h, "x"), b"Job does not exist on server"),
        (T.WORK_STATUS, (h, "1", "2"), b"Job given in work result not found"),
        (T.WORK_COMPLETE, (h, "x"), b"Job given in work result not found"),
        (T.WORK_FAIL, (h,), b"Job given in work result not found"),
        (
            T.WORK_EXCEPTION,
            (h, "x"),
            b"An exception was received for a job that does not exist",
        ),
    ):
        assert w.request(ptype, *args) == (RES, T.ERROR, b"JOB_NOT_FOUND\0" + text), ptype
    assert c.sync() == []


# -- grabbing and priorities ------------------------------------------------


def test_grab_variants_and_no_job(connect: Connect) -> None:
    c, w = connect(), connect()
    w.can_do("f")
    assert w.grab(T.GRAB_JOB) == (RES, T.NO_JOB, b"")
    assert w.grab(T.GRAB_JOB_UNIQ) == (RES, T.NO_JOB, b"")
    assert w.grab(T.GRAB_JOB_ALL) == (RES, T.NO_JOB, b"")
    h1 = c.submit("f", "u1", "d1", T.SUBMIT_JOB_BG)
    h2 = c.submit("f", "", "d2", T.SUBMIT_JOB_BG)
    h3 = c.submit("f", "u3", b"d\x003", T.SUBMIT_JOB_BG)
    assert w.grab(T.GRAB_JOB) == (RES, T.JOB_ASSIGN, join(h1, "f", "d1"))
    assert w.grab(T.GRAB_JOB_UNIQ) == (RES, T.JOB_ASSIGN_UNIQ, join(h2, "f", "", "d2"))
    # Without a reducer GRAB_JOB_ALL is answered like GRAB_JOB_UNIQ.
    assert w.grab(T.GRAB_JOB_ALL) == (RES, T.JOB_ASSIGN_UNIQ, join(h3, "f", "u3", b"d\x003"))


def test_priorities_within_one_function(connect: Connect) -> None:
    c, w = connect(), connect()
    order = [
        ("low1", T.SUBMIT_JOB_LOW_BG),
        ("norm1", T.SUBMIT_JOB_BG),
        ("high1", T.SUBMIT_JOB_HIGH_BG),
        ("low2", T.SUBMIT_JOB_LOW_BG),
        ("norm2", T.SUBMIT_JOB_BG),
        ("high2", T.SUBMIT_JOB_HIGH_BG),
    ]
    for data, ptype in order:
        c.submit("f", data, data, ptype)
    w.can_do("f")
    got = [w.grab().args()[3].decode() for _ in order]
    assert got == ["high1", "high2", "norm1", "norm2", "low1", "low2"]
    assert w.grab().ptype == T.NO_JOB


def test_sleeping_worker_is_woken_by_noop(connect: Connect) -> None:
    c, w = connect(), connect()
    w.can_do("f")
    w.send(T.PRE_SLEEP)
    assert w.sync() == []  # nothing to do: no NOOP yet
    h = c.submit("f", "", "wake", T.SUBMIT_JOB_BG)
    w.expect(T.NOOP)
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", "", "wake"))


def test_pre_sleep_with_queued_job_gets_immediate_noop(connect: Connect) -> None:
    c, w = connect(), connect()
    c.submit("f", "", "waiting", T.SUBMIT_JOB_BG)
    w.can_do("f")
    w.sleep_until_noop()


# -- status queries -----------------------------------------------------------


def test_get_status_payloads(connect: Connect) -> None:
    c, w, q = connect(), connect(), connect()
    h = c.submit("f", "u", "in")
    nobody = unknown_handle(h)
    assert q.request(T.GET_STATUS, nobody) == (RES, T.STATUS_RES, join(nobody, "0", "0", "0", "0"))
    assert q.request(T.GET_STATUS, h) == (RES, T.STATUS_RES, join(h, "1", "0", "0", "0"))
    w.can_do("f")
    w.grab()
    assert q.request(T.GET_STATUS, h) == (RES, T.STATUS_RES, join(h, "1", "1", "0", "0"))
    w.send(T.WORK_STATUS, h, "3", "10")
    assert c.recv() == (RES, T.WORK_STATUS, join(h, "3", "10"))
    assert q.request(T.GET_STATUS, h) == (RES, T.STATUS_RES, join(h, "1", "1", "3", "10"))
    w.send(T.WORK_COMPLETE, h, "done")
    assert c.recv().ptype == T.WORK_COMPLETE
    assert q.request(T.GET_STATUS, h) == (RES, T.STATUS_RES, join(h, "0", "0", "0", "0"))


def test_get_status_unique_counts_foreground_clients(connect: Connect) -> None:
    c1, c2, c3, w, q = connect(), connect(), connect(), connect(), connect()
    assert q.request(T.GET_STATUS_UNIQUE, "nope") == (
        RES,
        T.STATUS_RES_UNIQUE,
        join("nope", "0", "0", "0", "0", "0"),
    )
    h = c1.submit("f", "uq", "in")
    c2.submit("f", "uq", "in")
    c3.submit("f", "uq", "in", T.SUBMIT_JOB_BG)
    expect_queued = join("uq", "1", "0", "0", "0", "2")
    assert q.request(T.GET_STATUS_UNIQUE, "uq") == (RES, T.STATUS_RES_UNIQUE, expect_queued)
    w.can_do("f")
    w.grab()
    w.send(T.WORK_STATUS, h, "1", "2")
    assert c1.recv().ptype == T.WORK_STATUS
    expect_running = join("uq", "1", "1", "1", "2", "2")
    assert q.request(T.GET_STATUS_UNIQUE, "uq") == (RES, T.STATUS_RES_UNIQUE, expect_running)

    c3.submit("f", "bgonly", "x", T.SUBMIT_JOB_BG)
    expect_bg = join("bgonly", "1", "0", "0", "0", "0")
    assert q.request(T.GET_STATUS_UNIQUE, "bgonly") == (RES, T.STATUS_RES_UNIQUE, expect_bg)


# -- framing errors -------------------------------------------------------------


def test_res_magic_is_rejected_but_connection_stays(connect: Connect) -> None:
    c = connect()
    c.send(T.ECHO_REQ, "x", magic=RES)
    assert c.recv() == (RES, T.ERROR, b"INVALID_MAGIC\0Request magic expected")
    assert c.sync() == []


@pytest.mark.parametrize(
    ("ptype", "payload"),
    [
        (5, b""),
        (T.NOOP, b""),
        (T.JOB_CREATED, b"H:x:1"),
        (T.NO_JOB, b""),
        (T.ECHO_RES, b"x"),
        (T.ALL_YOURS, b""),
        (T.OPTION_RES, b"exceptions"),
        (T.SUBMIT_JOB_SCHED, join("f", "u", "1", "1", "1", "1", "1", "data")),
    ],
)
def test_commands_not_accepted_from_peers(connect: Connect, ptype: int, payload: bytes) -> None:
    c = connect()
    c.send_raw(pack(ptype, payload))
    assert c.recv() == (RES, T.ERROR, b"INVALID_COMMAND\0Command not expected")
    assert c.sync() == []


@pytest.mark.parametrize(
    "header",
    [
        b"\0XYZ" + b"\0\0\0\x10\0\0\0\0",  # unknown magic
        b"\0REQ" + b"\0\0\0\0\0\0\0\0",  # type 0
        b"\0REQ" + b"\0\0\0\x2b\0\0\0\0",  # type 43
    ],
)
def test_bad_header_closes_connection(connect: Connect, header: bytes) -> None:
    c = connect()
    c.send_raw(header)
    # gearmand closes without a word; gearmesh first sends one ERROR saying
    # why (docs/compatibility.md). Either way nothing else, then EOF.
    try:
        reply = c.recv()
    except ConnectionClosed:
        return
    code = b"INVALID_MAGIC\0" if header.startswith(b"\0XYZ") else b"INVALID_COMMAND\0"
    assert reply.ptype == T.ERROR and reply.payload.startswith(code), reply
    c.wait_closed()


# -- unique length ------------------------------------------------------------------


def test_unique_longer_than_64_bytes_is_rejected(connect: Connect) -> None:
    c, w = connect(), connect()
    for ptype in (T.SUBMIT_JOB, T.SUBMIT_JOB_BG):
        c.send(ptype, "f", "u" * 65, "data")
        assert c.recv() == (RES, T.ERROR, b"ARGUMENT_TOO_LARGE\0Unique value too large")
    unique = "k" * 63
    h = c.submit("f", unique, "data", T.SUBMIT_JOB_BG)
    w.can_do("f")
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", unique, "data"))


@pytest.mark.gearmesh_only
def test_unique_of_64_bytes_is_kept_whole(connect: Connect) -> None:
    # gearmand 1.1.20 accepts it, stores 63 chars and then sends a corrupt
    # JOB_ASSIGN_UNIQ; gearmesh stores all 64 bytes.
    c, c2, w = connect(), connect(), connect()
    unique = "k" * 64
    h = c.submit("f", unique, "data", T.SUBMIT_JOB_BG)
    assert c2.submit("f", unique, "other") == h  # and coalesces on all 64
    assert c2.submit("f", unique[:63], "short") != h
    w.can_do("f")
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", unique, "data"))


# -- admin text protocol -------------------------------------------------------------


def test_admin_replies_on_idle_server(server: ServerProcess, connect: Connect) -> None:
    a = connect()
    assert a.admin_line("status") == b".\n"
    assert re.fullmatch(rb"OK 1\.1\.20\S*\n", a.admin_line("version"))
    assert a.admin_line("getpid") == f"OK {server.pid}\n".encode()
    assert a.admin_line("verbose") == b"OK ERROR\n"
    # Only this admin connection is open.
    a.send_line("workers")
    assert re.fullmatch(rb"\d+ 127\.0\.0\.1 - :\n\.\n", a.read_list())
    # LF-only lines work as well, and command words ignore case.
    assert re.fullmatch(rb"OK 1\.1\.20\S*\n", a.admin_line("VeRsIoN", eol=b"\n"))
    assert a.admin_line("STATUS", eol=b"\n") == b".\n"


def test_admin_error_texts(connect: Connect) -> None:
    a = connect()
    unknown = b"ERR UNKNOWN_COMMAND Unknown+server+command"
    assert a.admin_line("bogus arg") == unknown + b"bogus\r\n"
    assert a.admin_line("jobs") == unknown + b"jobs\r\n"
    assert a.admin_line("show") == unknown + b"show\r\n"
    assert a.admin_line("") == unknown + b"\r\n"
    assert a.admin_line("show stuff") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert a.admin_line("maxqueue") == (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+maxqueue"
        b"\r\n"
    )
    assert a.admin_line("cancel job H:nosuch:1") == b"ERR UNKNOWN_JOB\r\n"
    assert a.admin_line("drop function nosuch") == b"ERR function not found\r\n"


def test_admin_pipelined_commands_answer_in_order(server: ServerProcess, connect: Connect) -> None:
    a = connect()
    a.send_raw(b"version\nstatus\ngetpid\n")
    assert re.fullmatch(rb"OK 1\.1\.20\S*\n", a.read_line())
    assert a.read_list() == b".\n"
    assert a.read_line() == f"OK {server.pid}\n".encode()


def test_text_and_binary_mix_on_one_connection(connect: Connect) -> None:
    c = connect()
    c.send(T.ECHO_REQ, "one")
    c.send_line("verbose")
    c.send(T.ECHO_REQ, "two")
    assert c.recv() == (RES, T.ECHO_RES, b"one")
    assert c.read_line() == b"OK ERROR\n"
    assert c.recv() == (RES, T.ECHO_RES, b"two")


def test_admin_lists_with_jobs_and_workers(connect: Connect) -> None:
    wa, wb, c, a = connect(), connect(), connect(), connect()
    wa.send(T.SET_CLIENT_ID, "worker-A")
    wa.can_do("resize", "reverse")
    wb.can_do("reverse")
    h1 = c.submit("reverse", "abc", "hello")
    h2 = c.submit("reverse", "", "x", T.SUBMIT_JOB_HIGH_BG)
    h3 = c.submit("resize", "img1", "y", T.SUBMIT_JOB_LOW_BG)
    assert wa.grab().args()[0] == h2  # the HIGH job

    def listing(command: str) -> tuple[bytes, list[str]]:
        a.send_line(command)
        raw = a.read_list()
        assert b"\r" not in raw  # list lines end in LF only, then ".\n"
        return raw, raw.decode().splitlines()[:-1]

    _, status = listing("status")
    assert sorted(status) == ["resize\t1\t0\t1", "reverse\t2\t1\t2"]
    _, prio = listing("prioritystatus")
    assert sorted(prio) == ["resize\t0\t0\t1\t1", "reverse\t0\t1\t0\t2"]
    _, workers = listing("workers")
    shapes = sorted(re.sub(r"^\d+ ", "FD ", line) for line in workers)
    assert shapes == [
        "FD 127.0.0.1 - :",  # client
        "FD 127.0.0.1 - :",  # this admin connection
        "FD 127.0.0.1 - : reverse",
        "FD 127.0.0.1 worker-A : reverse resize",  # newest registration first
    ]
    _, jobs = listing("show jobs")
    assert sorted(jobs) == sorted(
        [f"{h1.decode()}\t0\t0\t0", f"{h2.decode()}\t0\t0\t1", f"{h3.decode()}\t0\t0\t1"]
    )
    _, uniques = listing("show unique jobs")
    assert sorted(uniques) == ["", "abc", "img1"]


def test_admin_function_management(connect: Connect) -> None:
    a, w = connect(), connect()
    assert a.admin_line("create function newfn") == b"OK\r\n"
    assert "newfn\t0\t0\t0" in a.admin_list("status")
    assert a.admin_line("drop function newfn") == b"OK\r\n"
    assert not any(line.startswith("newfn\t") for line in a.admin_list("status"))
    w.can_do("busy")
    assert (
        a.admin_line("drop function busy")
        == b"ERR there are still connected workers or executing clients\r\n"
    )
    assert a.admin_line("maxqueue busy 10") == b"OK\r\n"
    assert a.admin_line("maxqueue busy 1 2 3") == b"OK\r\n"
    assert a.admin_line("maxqueue unknownfn 5") == b"OK\r\n"


def test_admin_cancel_job(connect: Connect) -> None:
    c, w, a = connect(), connect(), connect()
    h = c.submit("f", "u", "in")
    assert a.admin_line(b"cancel job " + h) == b"OK\r\n"
    assert c.recv() == (RES, T.WORK_FAIL, h)
    w.can_do("f")
    assert w.grab() == (RES, T.NO_JOB, b"")  # a cancelled job never runs


# -- limits, retries, timeouts ---------------------------------------------------------


def test_maxqueue_rejects_new_jobs_with_queue_error(connect: Connect) -> None:
    c, a = connect(), connect()
    full = (RES, T.ERROR, b"QUEUE_ERROR\0Job queue is full")
    c.submit("f", "", "1", T.SUBMIT_JOB_BG)  # creates the function, one job
    assert a.admin_line("maxqueue f 2") == b"OK\r\n"
    h2 = c.submit("f", "k2", "2", T.SUBMIT_JOB_BG)
    c.send(T.SUBMIT_JOB_BG, "f", "k3", "3")
    assert c.recv() == full
    c.send(T.SUBMIT_JOB, "f", "", "4")
    assert c.recv() == full
    # Attaching to an existing job creates nothing, so the limit does not apply.
    assert c.submit("f", "k2", "2") == h2


def test_maxqueue_limits_per_priority(connect: Connect) -> None:
    c, a = connect(), connect()
    full = (RES, T.ERROR, b"QUEUE_ERROR\0Job queue is full")
    c.submit("g", "", "first", T.SUBMIT_JOB_BG)
    assert a.admin_line("maxqueue g 1 2 3") == b"OK\r\n"
    c.send(T.SUBMIT_JOB_HIGH_BG, "g", "", "h")
    assert c.recv() == full  # 1 job >= HIGH limit 1
    c.submit("g", "", "n", T.SUBMIT_JOB_BG)  # 1 < 2
    c.send(T.SUBMIT_JOB_BG, "g", "", "n2")
    assert c.recv() == full  # 2 >= 2
    c.submit("g", "", "l", T.SUBMIT_JOB_LOW_BG)  # 2 < 3
    c.send(T.SUBMIT_JOB_LOW_BG, "g", "", "l2")
    assert c.recv() == full  # 3 >= 3


def test_job_is_requeued_when_its_worker_disconnects(
    server: ServerProcess, connect: Connect
) -> None:
    c, w1, w2, a = connect(), connect(), connect(), connect()
    h = c.submit("f", "u", "payload")
    w1.can_do("f")
    assert w1.grab().args()[0] == h
    w1.send(T.WORK_STATUS, h, "1", "2")
    assert c.recv().ptype == T.WORK_STATUS
    w2.can_do("f")
    w2.send(T.PRE_SLEEP)
    assert w2.sync() == []
    w1.close()
    w2.expect(T.NOOP)
    wait_for_status(server.host_port, "f", total=1, running=0, workers=1)
    # Requeued with its retry counter raised and its progress reset.
    assert a.admin_list("show jobs") == [f"{h.decode()}\t1\t0\t0"]
    assert a.request(T.GET_STATUS, h) == (RES, T.STATUS_RES, join(h, "1", "0", "0", "0"))
    assert w2.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", "u", "payload"))
    w2.send(T.WORK_COMPLETE, h, "ok")
    # The client was not told about the lost worker; it only sees the result.
    assert c.recv() == (RES, T.WORK_COMPLETE, join(h, "ok"))


@pytest.mark.server_args("-j", "1")
def test_job_retries_1_fails_on_first_worker_loss(server: ServerProcess, connect: Connect) -> None:
    c, w, q = connect(), connect(), connect()
    h = c.submit("f", "u", "payload")
    w.can_do("f")
    w.grab()
    w.close()
    assert c.recv() == (RES, T.WORK_FAIL, h)  # no trailing NUL on this path
    assert q.request(T.GET_STATUS, h) == (RES, T.STATUS_RES, join(h, "0", "0", "0", "0"))
    # The dropped job no longer counts anywhere.
    wait_for_status(server.host_port, "f", total=0, running=0, workers=0)
    assert q.admin_list("show jobs") == []
    # Nothing is left running, so SIGTERM must stop the server at once.
    assert server.stop(timeout=5) == 0


@pytest.mark.server_args("-j", "2")
def test_job_retries_2_allows_one_requeue(server: ServerProcess, connect: Connect) -> None:
    c, w1, w2 = connect(), connect(), connect()
    h = c.submit("f", "u", "payload")
    w1.can_do("f")
    w1.grab()
    w1.close()
    w2.can_do("f")
    assert wait_until(lambda: _grabbed(w2), what="requeued job").args()[0] == h
    assert c.sync() == []
    w2.close()
    assert c.recv() == (RES, T.WORK_FAIL, h)
    wait_for_status(server.host_port, "f", total=0, running=0, workers=0)


def _grabbed(worker: RawClient) -> Packet | None:
    packet = worker.grab()
    return packet if packet.ptype == T.JOB_ASSIGN_UNIQ else None


@pytest.mark.timeout(20)
def test_can_do_timeout_requeues_silently(connect: Connect) -> None:
    c, w1, w2 = connect(), connect(), connect()
    w1.send(T.CAN_DO_TIMEOUT, "f", "1000")  # milliseconds
    assert w1.sync() == []
    h = c.submit("f", "u", "slow")
    assert w1.grab().args()[0] == h
    w2.can_do("f")
    w2.send(T.PRE_SLEEP)
    assert w2.sync() == []
    w2.expect(T.NOOP, timeout=10)  # the timer fired and requeued the job
    assert w2.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", "u", "slow"))
    assert c.sync() == []  # the client saw nothing of it
    w1.send(T.WORK_COMPLETE, h, "late")
    assert w1.recv() == (RES, T.ERROR, b"JOB_NOT_FOUND\0Job given in work result not found")
    w2.send(T.WORK_COMPLETE, h, "ok")
    assert c.recv() == (RES, T.WORK_COMPLETE, join(h, "ok"))


@pytest.mark.timeout(20)
@pytest.mark.server_args("-j", "1")
def test_can_do_timeout_with_job_retries_fails_the_job(
    server: ServerProcess, connect: Connect
) -> None:
    c, w = connect(), connect()
    w.send(T.CAN_DO_TIMEOUT, "f", "1000")
    h = c.submit("f", "u", "slow")
    assert w.grab().args()[0] == h
    assert c.recv(timeout=10) == (RES, T.WORK_FAIL, h)
    wait_for_status(server.host_port, "f", total=0, running=0, workers=1)


def test_sigterm_stops_an_idle_server_promptly(server: ServerProcess, connect: Connect) -> None:
    # Connected clients, a sleeping worker and a queued (memory) background
    # job hold nothing up: no job is running.
    c, w = connect(), connect()
    w.can_do("g")
    w.send(T.PRE_SLEEP)
    c.submit("other", "", "queued", T.SUBMIT_JOB_BG)
    assert w.sync() == []
    assert server.stop(timeout=5) == 0
    for conn in (c, w):
        conn.wait_closed()


# -- gearmand bugs that gearmesh fixes ----------------------------------------------------


@pytest.mark.gearmesh_only
def test_background_job_survives_coalesced_foreground_client_leaving(
    server: ServerProcess, connect: Connect
) -> None:
    # gearmand 1.1.20 marks the job abandoned when the foreground client that
    # attached to it leaves, and silently drops the background job.
    bg, fg, w = connect(), connect(), connect()
    h = bg.submit("f", "u", "keep me", T.SUBMIT_JOB_BG)
    assert fg.submit("f", "u", "keep me") == h
    fg.close()
    wait_connections(server, 3)  # bg, w and the admin connection asking
    w.can_do("f")
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", "u", "keep me"))


@pytest.mark.gearmesh_only
def test_client_attaching_to_abandoned_job_gets_its_result(
    server: ServerProcess, connect: Connect
) -> None:
    # gearmand 1.1.20 hands this client JOB_CREATED and then never answers.
    first, second, w = connect(), connect(), connect()
    h = first.submit("f", "u", "data")
    first.close()
    wait_connections(server, 3)
    h2 = second.submit("f", "u", "data")
    w.can_do("f")
    assigned = w.grab()
    assert assigned.ptype == T.JOB_ASSIGN_UNIQ
    handle = assigned.args()[0]
    assert handle == h2 and (h2 == h or HANDLE.fullmatch(h2))
    w.send(T.WORK_COMPLETE, handle, "result")
    assert second.recv() == (RES, T.WORK_COMPLETE, join(handle, "result"))


@pytest.mark.gearmesh_only
def test_truncated_argument_never_reads_into_next_packet(
    server: ServerProcess, connect: Connect
) -> None:
    # The declared size (1) cannot hold "func\0unique\0"; gearmand keeps
    # scanning into the following ECHO_REQ (and here closes the connection).
    # gearmesh rejects just that packet and carries on.
    c = connect()
    c.send_raw(pack(T.SUBMIT_JOB, b"f") + pack(T.ECHO_REQ, b"\0after\0"))
    reply = c.recv()
    assert reply.ptype == T.ERROR and reply.payload.startswith(b"INVALID_ARGUMENT\0"), reply
    assert c.recv() == (RES, T.ECHO_RES, b"\0after\0")
    with RawClient(server.host_port) as a:
        assert a.admin_list("show jobs") == []


@pytest.mark.gearmesh_only
def test_cancelled_job_is_gone(connect: Connect) -> None:
    # gearmand 1.1.20 only marks a cancelled job: a resubmit with the same
    # unique attaches to it and never hears back, and a second cancel sends
    # WORK_FAIL again.
    c, c2, w, a = connect(), connect(), connect(), connect()
    h = c.submit("f", "u", "in")
    assert a.admin_line(b"cancel job " + h) == b"OK\r\n"
    assert c.recv() == (RES, T.WORK_FAIL, h)
    assert a.admin_line(b"cancel job " + h) == b"ERR UNKNOWN_JOB\r\n"
    assert c.sync() == []  # exactly one WORK_FAIL
    assert a.admin_list("show jobs") == []
    h2 = c2.submit("f", "u", "again")
    assert h2 != h
    w.can_do("f")
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h2, "f", "u", "again"))
    w.send(T.WORK_COMPLETE, h2, "ok")
    assert c2.recv() == (RES, T.WORK_COMPLETE, join(h2, "ok"))


@pytest.mark.gearmesh_only
def test_drop_function_with_queued_jobs_is_refused(connect: Connect) -> None:
    # gearmand 1.1.20 drops it and orphans the queued jobs forever.
    c, a, w = connect(), connect(), connect()
    h = c.submit("f", "u", "in", T.SUBMIT_JOB_BG)
    assert (
        a.admin_line("drop function f")
        == b"ERR there are still connected workers or executing clients\r\n"
    )
    w.can_do("f")
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", "u", "in"))


@pytest.mark.gearmesh_only
def test_status_of_overlong_handle_or_unique_is_unknown(connect: Connect) -> None:
    # gearmand 1.1.20 sends no reply at all for 64+ bytes.
    q = connect()
    handle = b"H:" + b"x" * 70
    assert q.request(T.GET_STATUS, handle) == (
        RES,
        T.STATUS_RES,
        join(handle, "0", "0", "0", "0"),
    )
    unique = b"u" * 70
    assert q.request(T.GET_STATUS_UNIQUE, unique) == (
        RES,
        T.STATUS_RES_UNIQUE,
        join(unique, "0", "0", "0", "0", "0"),
    )


# -- epoch (scheduled) jobs --------------------------------------------------------------


def test_epoch_job_in_the_past_runs_now(connect: Connect) -> None:
    c, w = connect(), connect()
    c.send(T.SUBMIT_JOB_EPOCH, "f", "e", "1", "when")
    h = c.expect(T.JOB_CREATED).payload
    assert HANDLE.fullmatch(h)
    w.can_do("f")
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", "e", "when"))


def test_future_epoch_job_waits(connect: Connect) -> None:
    c, w, q = connect(), connect(), connect()
    c.send(T.SUBMIT_JOB_EPOCH, "f", "later", str(int(time.time()) + 3600), "x")
    h = c.expect(T.JOB_CREATED).payload
    w.can_do("f")
    assert w.grab() == (RES, T.NO_JOB, b"")
    assert q.request(T.GET_STATUS, h) == (RES, T.STATUS_RES, join(h, "1", "0", "0", "0"))


@pytest.mark.gearmesh_only
@pytest.mark.timeout(20)
def test_sleeping_worker_is_woken_when_epoch_job_is_due(connect: Connect) -> None:
    # gearmand 1.1.20 has no timer: the job waits until some other event
    # makes the worker grab again.
    c, w = connect(), connect()
    w.can_do("f")
    w.send(T.PRE_SLEEP)
    assert w.sync() == []
    due = int(time.time()) + 2
    c.send(T.SUBMIT_JOB_EPOCH, "f", "soon", str(due), "x")
    h = c.expect(T.JOB_CREATED).payload
    w.expect(T.NOOP, timeout=10)
    assert w.grab() == (RES, T.JOB_ASSIGN_UNIQ, join(h, "f", "soon", "x"))
    assert time.time() >= due


def test_large_job_payload_and_result(connect: Connect) -> None:
    c, w = connect(), connect()
    data = bytes(range(256)) * 4096  # 1 MiB with every byte value, NULs included
    h = c.submit("f", "big", data)
    w.can_do("f")
    assert w.grab(T.GRAB_JOB) == (RES, T.JOB_ASSIGN, join(h, "f", data))
    w.send(T.WORK_COMPLETE, h, data[::-1])
    assert c.recv() == (RES, T.WORK_COMPLETE, join(h, data[::-1]))
