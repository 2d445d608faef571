"""The `gearman` command-line client and worker (libgearman)."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.admin import wait_for_status
from tests.support.procs import Spawned
from tests.support.rawclient import RawClient, T, join
from tests.support.servers import ServerProcess
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("gearman") is None, reason="gearman CLI not installed"),
]

Cli = Callable[..., Spawned]


@pytest.fixture
def gearman(spawn: Callable[..., Spawned], server: ServerProcess) -> Cli:
    """Run `gearman -h 127.0.0.1 -p PORT ARGS...`, optionally feeding stdin."""

    def run(*args: str, stdin: bytes | None = None, name: str | None = None) -> Spawned:
        argv = ["gearman", "-h", "127.0.0.1", "-p", str(server.port), *args]
        return spawn(argv, stdin_data=stdin, name=name or "gearman " + " ".join(args))

    return run


def worker(gearman: Cli, server: ServerProcess, func: str, shell: str, *opts: str) -> Spawned:
    """A `gearman -w` worker running a shell command per job, once registered."""
    proc = gearman("-w", "-f", func, *opts, "--", "sh", "-c", shell, name=f"worker {func}")
    wait_for_status(server.host_port, func, workers=1)
    return proc


def test_client_and_worker_roundtrip(gearman: Cli, server: ServerProcess) -> None:
    worker(gearman, server, "upper", "tr a-z A-Z")
    assert gearman("-f", "upper", stdin=b"hello\n").finish() == "HELLO"
    # Workload from the command line instead of stdin.
    assert gearman("-f", "upper", "arg data").finish() == "ARG DATA"
    # High and low priority foreground jobs work the same way.
    assert gearman("-I", "-f", "upper", "hi").finish() == "HI"
    assert gearman("-L", "-f", "upper", "lo").finish() == "LO"


def test_one_job_per_line(gearman: Cli, server: ServerProcess) -> None:
    worker(gearman, server, "upper", "tr a-z A-Z")
    assert gearman("-f", "upper", "-n", stdin=b"a\nb\n").finish() == "A\nB"
    # -N strips the newline, -P prefixes each result with the function name.
    assert gearman("-f", "upper", "-N", "-P", stdin=b"a\nb\n").finish() == "upper: Aupper: B"


def test_background_job_runs_after_client_left(
    gearman: Cli, server: ServerProcess, tmp_path: Path
) -> None:
    client = gearman("-b", "-f", "later", stdin=b"queued-data")
    assert client.finish() == ""  # returns at once, prints nothing
    wait_for_status(server.host_port, "later", total=1, running=0, workers=0)
    out = tmp_path / "out"
    runner = gearman(
        "-w", "-f", "later", "-c", "1", "--", "sh", "-c", f"cat > {shlex.quote(str(out))}"
    )
    runner.finish()  # -c 1: exits after its one job
    assert out.read_bytes() == b"queued-data"
    wait_for_status(server.host_port, "later", total=0, running=0, workers=0)


def test_same_unique_coalesces_clients(gearman: Cli, server: ServerProcess, tmp_path: Path) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    script = (
        f"echo run >> {shlex.quote(str(runs))}; "
        f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.01; done; cat"
    )
    worker(gearman, server, "gated", script)
    first = gearman("-u", "same", "-f", "gated", "payload-1", name="client 1")
    wait_until(lambda: runs.exists(), what="the job to start")
    second = gearman("-u", "same", "-f", "gated", "payload-2", name="client 2")
    with RawClient(server.host_port) as q:
        want = join("same", "1", "1", "0", "0", "2")
        wait_until(
            lambda: q.request(T.GET_STATUS_UNIQUE, "same").payload == want,
            what="both clients attached",
        )
    gate.touch()
    # One run, the first payload, the same answer for both clients.
    assert first.finish() == "payload-1"
    assert second.finish() == "payload-1"
    assert runs.read_text() == "run\n"


def test_priorities_of_background_jobs(gearman: Cli, server: ServerProcess, tmp_path: Path) -> None:
    for opts, data in [
        (["-L"], "low1"),
        ([], "normal1"),
        (["-I"], "high1"),
        (["-L"], "low2"),
        (["-I"], "high2"),
        ([], "normal2"),
    ]:
        gearman("-b", *opts, "-f", "prio", data).finish()
    wait_for_status(server.host_port, "prio", total=6)
    order = tmp_path / "order"
    record = f"cat >> {shlex.quote(str(order))}; echo >> {shlex.quote(str(order))}"
    gearman("-w", "-f", "prio", "-c", "6", "--", "sh", "-c", record).finish()
    assert order.read_text().split() == ["high1", "high2", "normal1", "normal2", "low1", "low2"]


def test_failing_worker_command_fails_the_job(gearman: Cli, server: ServerProcess) -> None:
    worker(gearman, server, "failing", "cat > /dev/null; exit 3")
    client = gearman("-f", "failing", "x")
    assert client.wait() == 1
    assert "Job failed" in client.output()


def test_client_timeout(gearman: Cli, server: ServerProcess) -> None:
    client = gearman("-f", "nobody", "-t", "300", "x")
    client.wait()  # libgearman's CLI exits 0 here, so only the message is checked
    assert "GEARMAN_TIMEOUT" in client.output()


@pytest.mark.gearmesh_only
def test_exception_for_client_without_exceptions_fails_cleanly(
    gearman: Cli, server: ServerProcess
) -> None:
    # The CLI does not ask for exceptions, so the server downgrades
    # WORK_EXCEPTION to WORK_FAIL. gearmand 1.1.20 adds a stray NUL to the
    # handle and the CLI never matches it: it hangs forever.
    with RawClient(server.host_port) as w:
        w.can_do("exc")
        w.send(T.PRE_SLEEP)
        client = gearman("-f", "exc", "data")
        w.expect(T.NOOP)
        handle = w.grab().args()[0]
        w.send(T.WORK_EXCEPTION, handle, "boom")
        assert client.wait(10) == 1
        assert "Job failed" in client.output()
