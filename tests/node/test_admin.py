"""The admin text protocol (node/admin.py): exact reply bytes and terminators.

Lines are framed by the real decoder (so `\\n` and `\\r\\n` endings are the
ones a client sends) and answered by ``Admin.handle``. Terminators follow
reference §7.2: lists end each line in `\\n` and finish with `.\\n`; OK/ERR in
`\\r\\n`; version/getpid/verbose in `\\n`. List order is ours (creation order
for functions and jobs, newest connection first for `workers`).

Deliberate differences from gearmand 1.1.20, pinned here:
* `create function xyz\\n` creates `xyz` (gearmand drops a character);
* `drop function` refuses a function that still has queued jobs (gearmand
  drops it and orphans them);
* `shutdown` / `shutdown graceful` call the node's shutdown and answer OK.
"""

from __future__ import annotations

import pytest

from node import protocol as P
from node.admin import Admin, AdminContext
from node.protocol import TEXT, Decoder

pytestmark = pytest.mark.timeout(30)

OK = b"OK\r\n"
BUSY = b"ERR there are still connected workers or executing clients\r\n"


def invalid(word: bytes) -> bytes:
    return (b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
            + word + b"\r\n")


def unknown(word: bytes) -> bytes:
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + word + b"\r\n"


class AdminConn:
    def __init__(self, harness, shutdown=None, verbose: str = "ERROR") -> None:
        self.harness = harness
        self.m = harness.m
        self.calls: list[bool] = []
        if shutdown is None:
            shutdown = self.calls.append
        self.admin = Admin(harness.m, AdminContext(verbose=verbose, shutdown=shutdown, pid=24064))
        self.peer = harness.peer(fd=38)
        self.decoder = Decoder()

    def __call__(self, raw: bytes) -> bytes | None:
        """One raw line (with its ending) in, the reply bytes out."""
        events = self.decoder.feed(raw)
        assert len(events) == 1 and events[0][0] == TEXT, events
        return self.admin.handle(self.peer.session, events[0][1])


@pytest.fixture
def admin(harness) -> AdminConn:
    return AdminConn(harness)


@pytest.fixture
def transcript(harness, admin):
    """Reference §7.4's scenario: worker A (id worker-A) does resize and reverse,
    worker B does reverse; three jobs; A grabbed the HIGH one."""
    a = harness.peer(fd=39)
    a.send(P.SET_CLIENT_ID, b"worker-A")
    a.can_do(b"resize", b"reverse")
    b = harness.peer(fd=40)
    b.can_do(b"reverse")
    c = harness.peer(fd=41)
    assert c.submit(b"reverse", b"abc", b"hello") == b"H:t:1"
    assert c.submit(b"reverse", b"", b"x", P.SUBMIT_JOB_HIGH_BG) == b"H:t:2"
    assert c.submit(b"resize", b"img1", b"y", P.SUBMIT_JOB_LOW_BG) == b"H:t:3"
    assert a.grab() == (P.JOB_ASSIGN, b"H:t:2\0reverse\0x")
    return admin, (a, b, c)


# =========================================================================== reference transcript


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_list_commands(transcript, ending: bytes) -> None:
    admin, _ = transcript
    assert admin(b"status" + ending) == b"resize\t1\t0\t1\nreverse\t2\t1\t2\n.\n"
    assert admin(b"prioritystatus" + ending) == (
        b"resize\t0\t0\t1\t1\nreverse\t0\t1\t0\t2\n.\n")
    assert admin(b"workers" + ending) == (
        b"41 127.0.0.1 - :\n"
        b"40 127.0.0.1 - : reverse\n"
        b"39 127.0.0.1 worker-A : reverse resize\n"
        b"38 127.0.0.1 - :\n"
        b".\n")
    assert admin(b"show jobs" + ending) == (
        b"H:t:1\t0\t0\t0\nH:t:2\t0\t0\t1\nH:t:3\t0\t0\t1\n.\n")
    assert admin(b"show unique jobs" + ending) == b"abc\n\nimg1\n.\n"


def test_value_commands_end_in_lf_only(admin) -> None:
    assert admin(b"version\r\n") == b"OK 1.1.20\n"
    assert admin(b"getpid\r\n") == b"OK 24064\n"
    assert admin(b"verbose\r\n") == b"OK ERROR\n"


def test_verbose_echoes_the_configured_level(harness) -> None:
    admin = AdminConn(harness, verbose="INFO")
    assert admin(b"verbose\n") == b"OK INFO\n"


def test_transcript_ok_and_err_replies(transcript, harness) -> None:
    admin, (_, _, c) = transcript
    assert admin(b"maxqueue reverse 10\r\n") == OK
    assert admin(b"maxqueue reverse 1 2 3\r\n") == OK
    assert admin(b"maxqueue\r\n") == invalid(b"maxqueue")
    assert admin(b"cancel job H:t:3\r\n") == OK
    assert admin(b"cancel job H:t:99\r\n") == b"ERR UNKNOWN_JOB\r\n"
    assert admin(b"create function newfn\r\n") == OK
    assert admin(b"drop function newfn\r\n") == OK
    assert admin(b"drop function reverse\r\n") == BUSY
    assert admin(b"drop function nosuch\r\n") == b"ERR function not found\r\n"
    assert admin(b"show\r\n") == unknown(b"show")
    assert admin(b"show stuff\r\n") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert admin(b"bogus arg\r\n") == unknown(b"bogus")
    assert c.recv() == []  # H:t:3 was background: nobody to tell


def test_idle_server(harness, admin) -> None:
    assert admin(b"status\n") == b".\n"
    assert admin(b"prioritystatus\n") == b".\n"
    assert admin(b"workers\n") == b"38 127.0.0.1 - :\n.\n"  # the asking connection itself
    assert admin(b"show jobs\n") == b".\n"
    assert admin(b"show unique jobs\n") == b".\n"


# =========================================================================== status & friends


def test_status_counts_queued_plus_running_and_registrations(harness, admin) -> None:
    c, w1, w2 = harness.peer(), harness.peer(), harness.peer()
    w1.can_do(b"f", b"f")  # duplicates count twice
    w2.can_do(b"f")
    for i in range(3):
        c.submit(b"f", b"%d" % i, b"x")
    w1.grab()
    assert admin(b"status\n") == b"f\t3\t1\t3\n.\n"
    w1.close()
    assert admin(b"status\n") == b"f\t3\t0\t1\n.\n"


def test_status_ignores_extra_tokens(transcript) -> None:
    admin, _ = transcript
    assert admin(b"status x y\n") == admin(b"status\n")
    assert admin(b"prioritystatus a\n") == admin(b"prioritystatus\n")


def test_functions_stay_listed_when_idle(harness, admin) -> None:
    c, w = harness.peer(), harness.peer()
    h = c.submit(b"f", b"", b"x")
    w.can_do(b"f")
    w.grab()
    w.send(P.WORK_COMPLETE, h, b"")
    w.close()
    assert admin(b"status\n") == b"f\t0\t0\t0\n.\n"


def test_prioritystatus_counts_queued_only(harness, admin) -> None:
    c, w = harness.peer(), harness.peer()
    c.submit(b"f", b"h1", b"x", P.SUBMIT_JOB_HIGH)
    c.submit(b"f", b"h2", b"x", P.SUBMIT_JOB_HIGH_BG)
    c.submit(b"f", b"n", b"x", P.SUBMIT_JOB)
    c.submit(b"f", b"l", b"x", P.SUBMIT_JOB_LOW)
    w.can_do(b"f")
    w.grab()  # a HIGH one: running jobs are not counted
    assert admin(b"prioritystatus\n") == b"f\t1\t1\t1\t1\n.\n"


def test_names_print_up_to_a_nul(harness, admin) -> None:
    w = harness.peer(fd=50)
    w.can_do(b"a\0b")
    assert admin(b"status\n") == b"a\t0\t0\t1\n.\n"
    assert admin(b"workers\n") == b"50 127.0.0.1 - : a\n38 127.0.0.1 - :\n.\n"


def test_workers_shows_client_id_and_every_registration_newest_first(harness, admin) -> None:
    w = harness.peer(fd=37)
    w.send(P.SET_CLIENT_ID, b"")
    w.can_do(b"f", b"g", b"f")
    assert admin(b"workers\n") == b"37 127.0.0.1  : f g f\n38 127.0.0.1 - :\n.\n"
    w.send(P.CANT_DO, b"f")
    assert admin(b"workers\n") == b"37 127.0.0.1  : g\n38 127.0.0.1 - :\n.\n"
    w.close()
    assert admin(b"workers\n") == b"38 127.0.0.1 - :\n.\n"


def test_show_jobs_lists_retries_and_background_flag(harness, admin) -> None:
    c = harness.peer()
    fg = c.submit(b"f", b"u1", b"x")
    c.submit(b"f", b"u2", b"x", P.SUBMIT_JOB_BG)
    for _ in range(2):
        w = harness.peer()
        w.can_do(b"f")
        w.grab()
        w.close()
    assert fg == b"H:t:1"
    # Each lost worker held the job at the head of the queue: one retry each.
    assert admin(b"show jobs\n") == b"H:t:1\t1\t0\t0\nH:t:2\t1\t0\t1\n.\n"
    assert admin(b"show unique jobs\n") == b"u1\nu2\n.\n"


def test_show_argument_errors(admin) -> None:
    assert admin(b"show jobs x\n") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert admin(b"show unique\n") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert admin(b"show unique jobs x\n") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert admin(b"show unique stuff\n") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert admin(b"show\n") == unknown(b"show")


# =========================================================================== cancel


def test_cancel_job_tells_listeners(harness, admin) -> None:
    c = harness.peer()
    h = c.submit(b"f", b"", b"x")
    assert admin(b"cancel job " + h + b"\r\n") == OK
    assert c.recv() == [(P.WORK_FAIL, h)]
    assert admin(b"status\n") == b"f\t0\t0\t0\n.\n"
    assert admin(b"show jobs\n") == b".\n"
    # Gone for good (gearmand answers OK again and sends a second WORK_FAIL).
    assert admin(b"cancel job " + h + b"\r\n") == b"ERR UNKNOWN_JOB\r\n"
    assert c.recv() == []


def test_cancel_shapes(admin) -> None:
    assert admin(b"cancel X Y\n") == b"ERR UNKNOWN_ERROR\r\n"
    assert admin(b"cancel job a b\n") == b"ERR UNKNOWN_ERROR\r\n"
    assert admin(b"cancel job\n") == unknown(b"cancel")
    assert admin(b"cancel\n") == unknown(b"cancel")
    assert admin(b"cancel job H:t:1\n") == b"ERR UNKNOWN_JOB\r\n"


# =========================================================================== create / drop


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_create_function_keeps_the_whole_name(admin, ending: bytes) -> None:
    # gearmand 1.1.20 creates `xy` for `create function xyz\n` (§7.1).
    assert admin(b"create function xyz" + ending) == OK
    assert admin(b"create function x" + ending) == OK
    assert admin(b"status\n") == b"xyz\t0\t0\t0\nx\t0\t0\t0\n.\n"
    assert admin(b"create function xyz" + ending) == OK  # existing: still OK
    assert admin(b"status\n") == b"xyz\t0\t0\t0\nx\t0\t0\t0\n.\n"


def test_create_function_wrong_shape(admin) -> None:
    assert admin(b"create\n") == invalid(b"create")
    assert admin(b"create function\n") == invalid(b"create")
    assert admin(b"create function a b\n") == invalid(b"create")
    assert admin(b"create thing x\n") == invalid(b"create")


def test_drop_function_is_case_insensitive(admin) -> None:
    assert admin(b"create function NewFn\n") == OK
    assert admin(b"drop function NEWFN\n") == OK
    assert admin(b"status\n") == b".\n"
    assert admin(b"drop function newfn\n") == b"ERR function not found\r\n"


def test_drop_function_refuses_queued_jobs(harness, admin) -> None:
    # gearmand 1.1.20 drops the function and orphans its queued jobs.
    c = harness.peer()
    h = c.submit(b"f", b"u", b"x", P.SUBMIT_JOB_BG)
    assert admin(b"drop function f\n") == BUSY
    assert admin(b"status\n") == b"f\t1\t0\t0\n.\n"
    w = harness.peer()
    w.can_do(b"f")
    assert w.grab() == (P.JOB_ASSIGN, h + b"\0f\0x")


def test_drop_function_refuses_workers_and_running_jobs(harness, admin) -> None:
    c, w = harness.peer(), harness.peer()
    w.can_do(b"f")
    assert admin(b"drop function f\n") == BUSY
    h = c.submit(b"f", b"", b"x")
    w.grab()
    w.send(P.CANT_DO, b"f")  # requeued, no workers left: still queued
    assert admin(b"drop function f\n") == BUSY
    w.can_do(b"f")
    w.grab()
    w.send(P.WORK_COMPLETE, h, b"")
    w.send(P.RESET_ABILITIES)
    assert admin(b"drop function f\n") == OK
    assert admin(b"status\n") == b".\n"


def test_drop_function_wrong_shape(admin) -> None:
    assert admin(b"drop\n") == invalid(b"drop")
    assert admin(b"drop function\n") == invalid(b"drop")
    assert admin(b"drop function a b\n") == invalid(b"drop")


# =========================================================================== maxqueue


@pytest.mark.parametrize(("line", "limits"), [
    (b"maxqueue f", [0, 0, 0]),
    (b"maxqueue f 5", [5, 5, 5]),
    (b"maxqueue f 1 2", [1, 2, 0]),
    (b"maxqueue f 1 2 3", [1, 2, 3]),
    (b"maxqueue f 1 ", [1, 0, 0]),  # trailing space: a 4th, empty token (§7.5)
    (b"maxqueue f -4 7x", [0, 7, 0]),  # atoi; negatives mean no limit
])
def test_maxqueue_argument_forms(harness, admin, line: bytes, limits: list[int]) -> None:
    harness.m.function(b"f").limits = [9, 9, 9]
    assert admin(line + b"\r\n") == OK
    assert harness.m.functions[b"f"].limits == limits


def test_maxqueue_limits_submits(harness, admin) -> None:
    c = harness.peer()
    c.submit(b"f", b"1", b"x")
    assert admin(b"maxqueue f 2\n") == OK
    c.submit(b"f", b"2", b"x")
    c.send(P.SUBMIT_JOB, b"f", b"3", b"x")
    assert c.recv() == [(P.ERROR, b"QUEUE_ERROR\0Job queue is full")]


def test_maxqueue_unknown_function_is_ok_and_not_created(admin) -> None:
    assert admin(b"maxqueue nosuch 5\n") == OK
    assert admin(b"status\n") == b".\n"


# =========================================================================== shutdown


def test_shutdown_calls_the_node(harness) -> None:
    admin = AdminConn(harness)
    assert admin(b"shutdown\r\n") == OK
    assert admin(b"SHUTDOWN graceful\n") == OK
    assert admin.calls == [False, True]


def test_shutdown_without_a_node_is_unknown_like_gearmand(harness) -> None:
    conn = AdminConn(harness)
    conn.admin.ctx.shutdown = None
    assert conn(b"shutdown\r\n") == unknown(b"shutdown")
    assert conn(b"shutdown graceful\r\n") == unknown(b"shutdown")


# =========================================================================== line parsing


def test_commands_are_case_insensitive(transcript) -> None:
    admin, _ = transcript
    assert admin(b"STATUS\n") == admin(b"status\n")
    assert admin(b"VeRsIoN\n") == b"OK 1.1.20\n"
    assert admin(b"Show Unique Jobs\n") == admin(b"show unique jobs\n")
    assert admin(b"SHOW JOBS\n") == admin(b"show jobs\n")
    assert admin(b"Cancel JOB H:t:1\n") == OK


def test_leading_space_and_empty_line_are_unknown_commands(admin) -> None:
    assert admin(b" status\n") == unknown(b"")
    assert admin(b"\n") == unknown(b"")
    assert admin(b"\r\n") == unknown(b"")


def test_tab_is_not_a_separator(admin) -> None:
    assert admin(b"maxqueue\tabc\t3\n") == unknown(b"maxqueue\tabc\t3")


def test_unknown_commands(admin) -> None:
    for word in (b"jobs", b"clients", b"gladiator", b"bogus"):
        assert admin(word + b" x\n") == unknown(word)
    assert admin(b"Bogus\n") == unknown(b"Bogus")  # the token as sent


def test_five_tokens_ok_six_close(admin) -> None:
    assert admin(b"maxqueue f 1 2 3\n") == OK
    assert admin(b"status a b c d\n") == b".\n"
    assert admin(b"status a b c d e\n") is None
    assert admin(b"maxqueue f 1 2 3 \n") is None  # the trailing space is a 6th token
    assert admin(b"a b c d e f g h\n") is None
