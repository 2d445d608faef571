"""The PHP extension (GearmanClient / GearmanWorker over libgearman) end to end.

The scripts live in tests/interop/php; each prints one fact per line. Jobs
that must stay "running" wait for a gate file that the test creates, so no
test depends on how long something takes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.admin import wait_for_status
from tests.support.procs import Spawned
from tests.support.rawclient import RawClient, T, join
from tests.support.servers import ServerProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

Php = Callable[..., Spawned]


def lines_of(proc: Spawned, timeout: float = 30.0) -> list[str]:
    """Wait for a clean exit; return the output lines."""
    return proc.finish(timeout).splitlines()


def value(lines: list[str], key: str) -> str:
    found = [
        line.split(" ", 1)[1] if " " in line else "" for line in lines if line.split(" ")[0] == key
    ]
    assert len(found) == 1, f"expected one {key} line in {lines}"
    return found[0]


def start_workers(
    php: Php, server: ServerProcess, func: str, ids: list[str], funcs: str | None = None
) -> list[Spawned]:
    """Start PHP workers and wait until the server counts them all."""
    procs = [php("worker.php", wid, funcs or func, name=f"worker {wid}") for wid in ids]
    wait_for_status(server.host_port, func, workers=len(ids))
    return procs


# -- the tutorial scenarios ------------------------------------------------------


def test_do_normal_returns_the_worker_result(php: Php, server: ServerProcess) -> None:
    start_workers(php, server, "record", ["w1"], "record,reverse")
    out = lines_of(php("do.php", "normal", "record", '{"name":"fate"} 我叫'))
    assert value(out, "RESULT") == '{"name":"fate"} 我叫'
    assert value(out, "RC") == "SUCCESS"
    out = lines_of(php("do.php", "normal", "reverse", "hello"))
    assert value(out, "RESULT") == "olleh"


@pytest.mark.parametrize("mode", ["high", "low"])
def test_do_high_and_do_low(php: Php, server: ServerProcess, mode: str) -> None:
    start_workers(php, server, "reverse", ["w1"])
    out = lines_of(php("do.php", mode, "reverse", "abc"))
    assert (value(out, "RESULT"), value(out, "RC")) == ("cba", "SUCCESS")


@pytest.mark.parametrize("mode", ["background", "highbg", "lowbg"])
def test_do_background_returns_before_the_job_runs(
    php: Php, server: ServerProcess, tmp_path: Path, mode: str
) -> None:
    (worker,) = start_workers(php, server, "gated", ["w1"])
    gate = tmp_path / "gate"
    out = lines_of(php("do.php", mode, "gated", f"{gate}|mail"))
    handle = value(out, "HANDLE")
    assert value(out, "RC") == "SUCCESS"
    # The client is gone while the job is still held by the worker.
    started = worker.wait_for_line(r"^START w1 (\S+) \S+ (.*)$")
    assert (started[1], started[2]) == (handle, f"{gate}|mail")
    assert not worker.matching(r"^DONE ")
    gate.touch()
    worker.wait_for_line(rf"^DONE w1 {handle}$")


def _sum_tasks(gate: Path) -> list[str]:
    ranges = [(1, 100), (100, 200), (200, 300), (300, 400), (400, 500)]
    return [f"normal|sum|{json.dumps([a, b, str(gate)])}|" for a, b in ranges]


SUMS = ["5050", "15150", "25250", "35350", "45450"]


def _completes(out: list[str]) -> list[str]:
    return sorted((line.split()[2] for line in out if line.startswith("COMPLETE ")), key=int)


def test_parallel_tasks_run_concurrently_on_five_workers(
    php: Php, server: ServerProcess, tmp_path: Path
) -> None:
    workers = start_workers(php, server, "sum", [f"w{i}" for i in range(5)])
    gate = tmp_path / "gate"
    client = php("tasks.php", *_sum_tasks(gate))
    # All five tasks are held at once, one per worker: they run in parallel.
    wait_for_status(server.host_port, "sum", total=5, running=5, workers=5)
    for w in workers:
        w.wait_for_line(r"^START ")
    gate.touch()
    out = lines_of(client)
    assert _completes(out) == SUMS
    assert value(out, "RUN") == "true"


def test_parallel_tasks_are_serialised_by_one_worker(
    php: Php, server: ServerProcess, tmp_path: Path
) -> None:
    (worker,) = start_workers(php, server, "sum", ["w1"])
    gate = tmp_path / "gate"
    client = php("tasks.php", *_sum_tasks(gate))
    # One worker holds one task; the other four wait in the queue.
    wait_for_status(server.host_port, "sum", total=5, running=1, workers=1)
    worker.wait_for_line(r"^START w1 ")
    gate.touch()
    out = lines_of(client)
    assert _completes(out) == SUMS
    assert len(worker.matching(r"^START w1 ")) == 5


def test_add_task_callbacks_receive_created_handles(php: Php, server: ServerProcess) -> None:
    start_workers(php, server, "reverse", ["w1"])
    out = lines_of(php("tasks.php", "normal|reverse|abc|", "normal|reverse|xyz|k2"))
    created = {line.split()[1]: line.split()[2] for line in out if line.startswith("CREATED ")}
    assert sorted(created) == ["t0", "t1"]
    assert len(set(created.values())) == 2
    assert sorted(line for line in out if line.startswith("COMPLETE ")) == [
        "COMPLETE t0 cba",
        "COMPLETE t1 zyx",
    ]


# -- coalescing ------------------------------------------------------------------------


def test_same_unique_from_several_clients_runs_once(
    php: Php, server: ServerProcess, tmp_path: Path
) -> None:
    (worker,) = start_workers(php, server, "gated", ["w1"])
    gate = tmp_path / "gate"
    first = php("do.php", "normal", "gated", f"{gate}|c0", "same-key", name="client c0")
    worker.wait_for_line(r"^START w1 ")  # the job is running now
    others = [
        php("do.php", "normal", "gated", f"{gate}|c{i}", "same-key", name=f"client c{i}")
        for i in (1, 2, 3)
    ]

    # All four clients are attached to the one job before it may finish.
    with RawClient(server.host_port) as q:

        def attached() -> bool:
            reply = q.request(T.GET_STATUS_UNIQUE, "same-key")
            return reply.payload == join("same-key", "1", "1", "0", "0", "4")

        wait_until(attached, what="four clients attached to same-key")
    gate.touch()
    for client in (first, *others):
        out = lines_of(client)
        # The first submission's payload wins for everybody.
        assert value(out, "RESULT") == "w1:c0"
    assert len(worker.matching(r"^START ")) == 1
    assert len(worker.matching(r"^DONE ")) == 1


# -- priorities ---------------------------------------------------------------------------


def test_priorities_order_jobs_queued_before_the_worker_starts(
    php: Php, server: ServerProcess
) -> None:
    for mode, tag in [
        ("lowbg", "L1"),
        ("background", "N1"),
        ("highbg", "H1"),
        ("lowbg", "L2"),
        ("background", "N2"),
        ("highbg", "H2"),
    ]:
        assert value(lines_of(php("do.php", mode, "record", tag)), "RC") == "SUCCESS"
    # Foreground tasks, one per priority (runTasks submits them together).
    fg = php("tasks.php", "low|record|Lf|", "normal|record|Nf|", "high|record|Hf|")
    fg.wait_for_lines(r"^CREATED ", 3)
    wait_for_status(server.host_port, "record", total=9, running=0, workers=0)

    worker = php("worker.php", "w1", "record", "9")
    out = lines_of(worker)
    order = [line.split(" ", 4)[4] for line in out if line.startswith("START ")]
    assert order == ["H1", "H2", "Hf", "N1", "N2", "Nf", "L1", "L2", "Lf"]
    fg_out = lines_of(fg)
    assert sorted(line for line in fg_out if line.startswith("COMPLETE ")) == [
        "COMPLETE t0 Lf",
        "COMPLETE t1 Nf",
        "COMPLETE t2 Hf",
    ]


# -- progress, data, warnings, failures -------------------------------------------------------


def test_status_callback_sees_every_update(php: Php, server: ServerProcess) -> None:
    start_workers(php, server, "progress", ["w1"])
    out = lines_of(php("tasks.php", "normal|progress|3|"))
    events = [line for line in out if line.split()[0] in ("STATUS", "COMPLETE")]
    assert events == [
        "STATUS t0 1/3",
        "STATUS t0 2/3",
        "STATUS t0 3/3",
        "COMPLETE t0 progress-done",
    ]


def test_job_status_of_a_running_background_job(
    php: Php, server: ServerProcess, tmp_path: Path
) -> None:
    (worker,) = start_workers(php, server, "progress_gated", ["w1"])
    gate = tmp_path / "gate"
    handle = value(lines_of(php("do.php", "background", "progress_gated", f"{gate}|p")), "HANDLE")
    worker.wait_for_line(rf"^STATUS_SENT w1 {handle}$")
    unique = worker.wait_for_line(r"^START w1 \S+ (\S+) ")[1]
    out = lines_of(php("jobstatus.php", "handle", handle, "1 1 2 5"))
    assert value(out, "STATUS") == "1 1 2 5"
    out = lines_of(php("jobstatus.php", "unique", unique, "1 1 2 5"))
    assert value(out, "STATUS") == "1 1 2 5"
    gate.touch()
    worker.wait_for_line(rf"^DONE w1 {handle}$")
    out = lines_of(php("jobstatus.php", "handle", handle, "0 0 0 0"))
    assert value(out, "STATUS") == "0 0 0 0"


def test_job_status_of_a_queued_job(php: Php, server: ServerProcess) -> None:
    handle = value(lines_of(php("do.php", "background", "nobody", "x")), "HANDLE")
    assert value(lines_of(php("jobstatus.php", "handle", handle)), "STATUS") == "1 0 0 0"


def test_data_and_warning_callbacks(php: Php, server: ServerProcess) -> None:
    start_workers(php, server, "chatty", ["w1"])
    out = lines_of(php("tasks.php", "normal|chatty|x|"))
    assert [line for line in out if not line.startswith(("CREATED", "ELAPSED"))] == [
        "DATA t0 part1",
        "WARNING t0 warn1",
        "DATA t0 part2",
        "COMPLETE t0 done",
        "RUN true",
        "RC SUCCESS",
    ]
    # doNormal returns the WORK_DATA payloads followed by the result.
    assert value(lines_of(php("do.php", "normal", "chatty", "x")), "RESULT") == "part1part2done"


def test_send_fail(php: Php, server: ServerProcess) -> None:
    start_workers(php, server, "fail", ["w1"])
    out = lines_of(php("do.php", "normal", "fail", "x"))
    assert value(out, "RC") == "WORK_FAIL"
    out = lines_of(php("tasks.php", "normal|fail|x|"))
    assert [line for line in out if line.split()[0] in ("FAIL", "COMPLETE", "EXCEPTION")] == [
        "FAIL t0"
    ]


def test_send_exception_with_exception_callback(php: Php, server: ServerProcess) -> None:
    start_workers(php, server, "exception", ["w1"])
    out = lines_of(php("tasks.php", "normal|exception|x|"))
    assert [line for line in out if line.split()[0] in ("FAIL", "COMPLETE", "EXCEPTION")] == [
        "EXCEPTION t0 boom"
    ]
    assert value(lines_of(php("do.php", "normal", "exception", "x")), "RC") == "WORK_EXCEPTION"


def test_send_exception_without_exception_callback(php: Php, server: ServerProcess) -> None:
    # PHP still asks for exceptions on connect; with no callback set the task
    # simply ends: neither a fail nor a complete callback fires.
    start_workers(php, server, "exception", ["w1"])
    out = lines_of(php("tasks.php", "--no-exception-cb", "normal|exception|x|"))
    assert [line for line in out if not line.startswith(("CREATED", "ELAPSED"))] == [
        "RUN true",
        "RC SUCCESS",
    ]


# -- client-side features ---------------------------------------------------------------------


def test_client_timeout(php: Php, server: ServerProcess) -> None:
    out = lines_of(php("do.php", "normal", "nobody-does-this", "x", "", "300"))
    assert value(out, "RC") == "TIMEOUT"
    assert 250 <= float(value(out, "ELAPSED")) < 5000


def test_ping(php: Php, server: ServerProcess) -> None:
    out = lines_of(php("ping.php", "hello"))
    assert (value(out, "PING"), value(out, "RC")) == ("true", "SUCCESS")


def test_queue_full_is_reported_as_queue_error(php: Php, server: ServerProcess) -> None:
    assert value(lines_of(php("do.php", "background", "limited", "1")), "RC") == "SUCCESS"
    with RawClient(server.host_port) as admin:
        assert admin.admin_line("maxqueue limited 1") == b"OK\r\n"
    out = lines_of(php("do.php", "background", "limited", "2"))
    assert value(out, "RC") == "QUEUE_ERROR"
    assert "QUEUE_ERROR" in value(out, "ERROR")


# -- worker failure ------------------------------------------------------------------------------


def test_crashed_worker_job_goes_to_another_worker(
    php: Php, server: ServerProcess, tmp_path: Path
) -> None:
    (first,) = start_workers(php, server, "gated", ["wa"])
    gate = tmp_path / "gate"
    client = php("do.php", "normal", "gated", f"{gate}|job")
    handle = first.wait_for_line(r"^START wa (\S+) ")[1]
    second = php("worker.php", "wb", "gated", name="worker wb")
    wait_for_status(server.host_port, "gated", total=1, running=1, workers=2)
    first.kill()  # SIGKILL: the connection just drops
    assert second.wait_for_line(r"^START wb (\S+) ")[1] == handle
    gate.touch()
    out = lines_of(client)
    assert value(out, "RESULT") == "wb:job"
    assert value(out, "RC") == "SUCCESS"
