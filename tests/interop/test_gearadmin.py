"""Every `gearadmin` option, with its exact output.

gearadmin strips a leading "OK " and prints ERR replies to stderr as
"Error: ..." while still exiting 0. List order follows gearmand's hash
tables, which gearmesh need not copy, so lists are compared as sets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.admin import wait_for_status
from tests.support.rawclient import RES, RawClient, T
from tests.support.servers import ServerProcess

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("gearadmin") is None, reason="gearadmin not installed"),
]


def gearadmin(server: ServerProcess, *args: str) -> tuple[str, str]:
    """Run gearadmin; return (stdout, stderr) after asserting exit status 0."""
    proc = subprocess.run(
        ["gearadmin", "-h", "127.0.0.1", "-p", str(server.port), *args],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc
    return proc.stdout.decode(), proc.stderr.decode()


def listing(server: ServerProcess, option: str) -> list[str]:
    """A list reply: lines end in LF and the last one is "."; returns the rest sorted."""
    out, err = gearadmin(server, option)
    assert err == ""
    assert out.endswith("\n.\n") or out == ".\n", repr(out)
    assert "\r" not in out
    return sorted(out.splitlines()[:-1])


@pytest.fixture
def busy(server: ServerProcess) -> Iterator[dict[str, bytes]]:
    """A worker "wid" for fa and fb, a queued foreground job on fa, a HIGH
    background job on fb, and a client that stays connected."""
    worker, client = RawClient(server.host_port), RawClient(server.host_port)
    worker.send(T.SET_CLIENT_ID, "wid")
    worker.can_do("fa", "fb")
    handles = {
        "fa": client.submit("fa", "u1", "x"),
        "fb": client.submit("fb", "u2", "y", T.SUBMIT_JOB_HIGH_BG),
    }
    yield handles
    worker.close()
    client.close()


def test_status(server: ServerProcess, busy: dict[str, bytes]) -> None:
    assert listing(server, "--status") == ["fa\t1\t0\t1", "fb\t1\t0\t1"]


def test_status_on_idle_server(server: ServerProcess) -> None:
    assert gearadmin(server, "--status") == (".\n", "")


def test_priority_status(server: ServerProcess, busy: dict[str, bytes]) -> None:
    assert listing(server, "--priority-status") == ["fa\t0\t1\t0\t1", "fb\t1\t0\t0\t1"]


def test_workers(server: ServerProcess, busy: dict[str, bytes]) -> None:
    lines = [re.sub(r"^\d+ ", "FD ", line) for line in listing(server, "--workers")]
    assert sorted(lines) == [
        "FD 127.0.0.1 - :",  # the client
        "FD 127.0.0.1 - :",  # gearadmin itself
        "FD 127.0.0.1 wid : fb fa",  # newest registration first
    ]


def test_show_jobs(server: ServerProcess, busy: dict[str, bytes]) -> None:
    # HANDLE, retries, ignored, queued (1 for background jobs)
    assert listing(server, "--show-jobs") == sorted(
        [f"{busy['fa'].decode()}\t0\t0\t0", f"{busy['fb'].decode()}\t0\t0\t1"]
    )


def test_show_unique_jobs(server: ServerProcess, busy: dict[str, bytes]) -> None:
    assert listing(server, "--show-unique-jobs") == ["u1", "u2"]


def test_empty_lists(server: ServerProcess) -> None:
    for option in ("--priority-status", "--show-jobs", "--show-unique-jobs"):
        assert gearadmin(server, option) == (".\n", ""), option
    out, _ = gearadmin(server, "--workers")
    assert re.fullmatch(r"\d+ 127\.0\.0\.1 - :\n\.\n", out)


def test_server_version(server: ServerProcess) -> None:
    out, err = gearadmin(server, "--server-version")
    assert re.fullmatch(r"1\.1\.20\S*\n", out) and err == ""


def test_server_verbose(server: ServerProcess) -> None:
    assert gearadmin(server, "--server-verbose") == ("ERROR\n", "")


def test_getpid(server: ServerProcess) -> None:
    assert gearadmin(server, "--getpid") == (f"{server.pid}\n", "")


def test_several_options_in_one_call(server: ServerProcess) -> None:
    # gearadmin runs them in its own fixed order: getpid before status.
    assert gearadmin(server, "--status", "--getpid") == (f"{server.pid}\n.\n", "")


def test_create_function(server: ServerProcess) -> None:
    assert gearadmin(server, "--create-function", "newf") == ("OK\n", "")
    assert listing(server, "--status") == ["newf\t0\t0\t0"]
    assert gearadmin(server, "--create-function", "two words") == (
        "",
        "Error: INVALID_ARGUMENTS "
        "An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n",
    )


def test_drop_function(server: ServerProcess, busy: dict[str, bytes]) -> None:
    assert gearadmin(server, "--create-function", "newf") == ("OK\n", "")
    assert gearadmin(server, "--drop-function", "newf") == ("OK\n", "")
    assert listing(server, "--status") == ["fa\t1\t0\t1", "fb\t1\t0\t1"]
    assert gearadmin(server, "--drop-function", "nosuch") == (
        "",
        "Error: function not found\r\n",
    )
    assert gearadmin(server, "--drop-function", "fa") == (
        "",
        "Error: there are still connected workers or executing clients\r\n",
    )


def test_cancel_job(server: ServerProcess) -> None:
    with RawClient(server.host_port) as client:
        handle = client.submit("fa", "u1", "x")
        assert gearadmin(server, "--cancel-job", handle.decode()) == ("OK\n", "")
        assert client.recv() == (RES, T.WORK_FAIL, handle)
        unknown = handle.rsplit(b":", 1)[0].decode() + ":987654321"
        assert gearadmin(server, "--cancel-job", unknown) == ("", "Error: UNKNOWN_JOB\r\n")


def test_status_counts_running_jobs(server: ServerProcess) -> None:
    with RawClient(server.host_port) as worker, RawClient(server.host_port) as client:
        worker.can_do("job")
        client.submit("job", "a", "1", T.SUBMIT_JOB_BG)
        client.submit("job", "b", "2", T.SUBMIT_JOB_LOW_BG)
        assert worker.grab().ptype == T.JOB_ASSIGN_UNIQ
        wait_for_status(server.host_port, "job", total=2, running=1, workers=1)
        assert listing(server, "--status") == ["job\t2\t1\t1"]
        # prioritystatus counts queued jobs only.
        assert listing(server, "--priority-status") == ["job\t0\t0\t1\t1"]
