"""Perl Gearman::Client / Gearman::Worker (pure Perl, its own protocol code).

Notable differences from libgearman: the worker uses plain GRAB_JOB and sends
a random SET_CLIENT_ID; the client sends no unique unless asked and returns
handles as "<host:port>//<handle>".
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.admin import wait_for_status
from tests.support.procs import Spawned
from tests.support.rawclient import RawClient, T, join
from tests.support.servers import ServerProcess
from tests.support.waiting import wait_until


def _has_perl_gearman() -> bool:
    probe = ["perl", "-MGearman::Client", "-MGearman::Worker", "-e", "1"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
    except OSError:
        return False


pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not _has_perl_gearman(), reason="Perl Gearman modules not installed"),
]

Perl = Callable[..., Spawned]
HANDLE = r"127\.0\.0\.1:\d+//H:[^:\s]+:\d+"


def lines_of(proc: Spawned) -> list[str]:
    return proc.finish().splitlines()


def start_worker(
    perl: Perl, server: ServerProcess, funcs: str, wid: str = "pw", max_jobs: int = 0
) -> Spawned:
    args = [wid, funcs] + ([str(max_jobs)] if max_jobs else [])
    proc = perl("worker.pl", *args, name=f"perl worker {wid}")
    wait_for_status(server.host_port, funcs.split(",")[0], workers=1)
    return proc


def test_do_task(perl: Perl, server: ServerProcess) -> None:
    start_worker(perl, server, "reverse")
    assert lines_of(perl("client.pl", "do", "reverse", "hello")) == ["RESULT olleh"]


def test_do_task_status_callback(perl: Perl, server: ServerProcess) -> None:
    start_worker(perl, server, "progress")
    assert lines_of(perl("client.pl", "do", "progress", "3")) == [
        "STATUS 1/3",
        "STATUS 2/3",
        "STATUS 3/3",
        "RESULT progress-done",
    ]


def test_do_task_failure(perl: Perl, server: ServerProcess) -> None:
    start_worker(perl, server, "fail")
    assert lines_of(perl("client.pl", "do", "fail", "x")) == ["FAIL", "NORESULT"]


def test_dispatch_background_and_get_status(
    perl: Perl, server: ServerProcess, tmp_path: Path
) -> None:
    worker = start_worker(perl, server, "gated")
    gate = tmp_path / "gate"
    (line,) = lines_of(perl("client.pl", "bg", "gated", f"{gate}|t"))
    match = re.fullmatch(rf"HANDLE ({HANDLE})", line)
    assert match, line
    handle = match[1]
    assert handle.startswith(f"{server.address}//")
    worker.wait_for_line(rf"^STATUS_SENT pw {re.escape(handle.split('//')[1])}$")
    assert lines_of(perl("client.pl", "status", handle, "1 1 2 5")) == ["STATUS 1 1 2 5"]
    gate.touch()
    # Once done, the job is unknown to the server.
    assert lines_of(perl("client.pl", "status", handle, "0 0 0 0")) == ["STATUS 0 0 0 0"]


def test_get_status_of_queued_job(perl: Perl, server: ServerProcess) -> None:
    (line,) = lines_of(perl("client.pl", "bg", "nobody", "x"))
    handle = line.split()[1]
    assert lines_of(perl("client.pl", "status", handle)) == ["STATUS 1 0 0 0"]


def test_task_set_runs_all_tasks(perl: Perl, server: ServerProcess) -> None:
    worker = start_worker(perl, server, "reverse")
    out = lines_of(perl("client.pl", "set", "reverse", "abc", "def", "ghi"))
    assert out[-1] == "WAITED"
    assert sorted(out[:-1]) == ["COMPLETE abc cba", "COMPLETE def fed", "COMPLETE ghi ihg"]
    assert len(worker.matching(r"^START pw ")) == 3


def test_uniq_coalesces_clients(perl: Perl, server: ServerProcess, tmp_path: Path) -> None:
    worker = start_worker(perl, server, "gated")
    gate = tmp_path / "gate"
    first = perl("client.pl", "do", "gated", f"{gate}|first", "key", name="client 1")
    worker.wait_for_line(r"^START pw ")
    second = perl("client.pl", "do", "gated", f"{gate}|second", "key", name="client 2")
    with RawClient(server.host_port) as q:
        want = join("key", "1", "1", "2", "5", "2")
        wait_until(
            lambda: q.request(T.GET_STATUS_UNIQUE, "key").payload == want,
            what="both clients attached to 'key'",
        )
    gate.touch()
    # The status update was sent before the second client attached, so
    # only the first one saw it.
    assert lines_of(first) == ["STATUS 2/5", "RESULT pw:first"]
    assert lines_of(second) == ["RESULT pw:first"]
    assert len(worker.matching(r"^START ")) == 1


def test_background_priorities(perl: Perl, server: ServerProcess) -> None:
    for tag, priority in [("L1", "low"), ("N1", "normal"), ("H1", "high"), ("N2", "normal")]:
        (line,) = lines_of(perl("client.pl", "bg", "record", tag, "", priority))
        assert re.fullmatch(rf"HANDLE {HANDLE}", line), line
    wait_for_status(server.host_port, "record", total=4)
    worker = perl("worker.pl", "pw", "record", "4")
    out = lines_of(worker)
    assert [line.split()[3] for line in out if line.startswith("START ")] == [
        "H1",
        "N1",
        "N2",
        "L1",
    ]
    assert out[-1] == "EXIT pw 4"


def test_admin_status_helper(perl: Perl, server: ServerProcess) -> None:
    lines_of(perl("client.pl", "bg", "queued", "x"))
    start_worker(perl, server, "reverse")
    assert lines_of(perl("client.pl", "server_status")) == [
        "FUNC queued 1 0 0",
        "FUNC reverse 0 0 1",
    ]
