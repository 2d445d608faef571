"""`gearmesh bench` against real gearmand processes, with tiny counts.

Each scenario must report the counts it was asked for and pass its own
checks against gearmand, and must fail (non-zero exit) when what it measures
is wrong: two independent servers do not coalesce, a server that acknowledges
but stores nothing, a server that corrupts results, a server that is down.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gearmesh.bench.engine import queued_view
from gearmesh.bench.scenarios.common import merge_bitmaps
from gearmesh.bench.stats import latency_summary, percentile
from gearmesh.bench.wire import FunctionStatus, Server, parse_servers, payload_for

GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"server on port {port} did not start") from None
            time.sleep(0.01)


def _start(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _gearmand(tmp: Path) -> tuple[str, subprocess.Popen[bytes]]:
    if not os.access(GEARMAND, os.X_OK):
        pytest.skip("gearmand (gearman-job-server) is not installed")
    port = _free_port()
    proc = _start([GEARMAND, "-L", "127.0.0.1", "-p", str(port), "-l", "none",
                   "-P", str(tmp / f"gearmand-{port}.pid")], port)
    return f"127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def gearmand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    addr, proc = _gearmand(tmp_path_factory.mktemp("gearmand"))
    yield addr
    _stop(proc)


@pytest.fixture(scope="module")
def gearmand2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    addr, proc = _gearmand(tmp_path_factory.mktemp("gearmand2"))
    yield addr
    _stop(proc)


def bench(*args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "gearmesh.bench", *args, "--json", "--procs", "2",
         "--no-progress", "--grace", "5"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    lines = out.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{out.stderr}"
    assert len(lines) == 1, f"--json must print exactly one line, got:\n{out.stdout}"
    return out.returncode, json.loads(lines[-1])


def failed_checks(doc: dict[str, Any]) -> list[str]:
    return [c["name"] for c in doc.get("checks", []) if not c["ok"]]


@pytest.mark.timeout(60)
def test_bg_counts_and_cleanup(gearmand: str) -> None:
    rc, doc = bench("bg", "--servers", gearmand, "--jobs", "3000", "--conns", "4",
                    "--inflight", "8", "--workers", "4")
    assert rc == 0, doc
    assert doc["ok"] and doc["scenario"] == "bg"
    m = doc["metrics"]
    assert m["sent"] == m["acked"] == m["server_queued"] == m["drained"] == 3000
    assert m["errors"] == 0 and m["submits_per_s"] > 0
    assert doc["tool"]["procs"] == 2


@pytest.mark.timeout(60)
def test_bg_empty_unique(gearmand: str) -> None:
    rc, doc = bench("bg", "--servers", gearmand, "--jobs", "1000", "--conns", "2",
                    "--workers", "2", "--unique", "none")
    assert rc == 0, doc
    assert doc["metrics"]["acked"] == doc["metrics"]["drained"] == 1000


@pytest.mark.timeout(60)
def test_drain(gearmand: str) -> None:
    rc, doc = bench("drain", "--servers", gearmand, "--jobs", "3000", "--workers", "4",
                    "--conns", "2")
    assert rc == 0, doc
    m = doc["metrics"]
    assert m["prefilled"] == m["server_queued_before"] == m["done"] == 3000
    assert m["duplicates"] == 0 and m["bad_payload"] == 0 and m["jobs_per_s"] > 0


@pytest.mark.timeout(60)
def test_rt_latency_and_echo(gearmand: str) -> None:
    rc, doc = bench("rt", "--servers", gearmand, "--jobs", "1000", "--clients", "4",
                    "--workers", "4", "--payload-size", "300")
    assert rc == 0, doc
    m = doc["metrics"]
    assert m["done"] == 1000 and m["mismatch"] == 0
    lat = m["latency"]
    assert lat["count"] == 1000
    assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]


@pytest.mark.timeout(60)
def test_coalesce_single_server_runs_k(gearmand: str) -> None:
    rc, doc = bench("coalesce", "--servers", gearmand, "--uniques", "200", "--repeat", "4",
                    "--workers", "4")
    assert rc == 0, doc
    m = doc["metrics"]
    assert m["runs"] == 200 and m["extra_runs"] == 0
    assert m["results"] == m["submissions"] == 800


@pytest.mark.timeout(60)
def test_coalesce_two_independent_servers_fails(gearmand: str, gearmand2: str) -> None:
    # Each unique reaches both servers (4 clients alternate between them), and
    # independent servers cannot know about each other's jobs.
    rc, doc = bench("coalesce", "--servers", f"{gearmand},{gearmand2}", "--uniques", "100",
                    "--repeat", "4", "--workers", "4")
    assert rc == 1, doc
    assert not doc["ok"]
    assert doc["metrics"]["runs"] == 200 > 100
    assert failed_checks(doc) == ["workers ran each unique exactly once (runs == K)"]


@pytest.mark.timeout(60)
def test_burst(gearmand: str) -> None:
    rc, doc = bench("burst", "--servers", gearmand, "--clients", "20", "--workers", "4",
                    "--duration", "1.5", "--ramp", "0.5", "--uniques", "5",
                    "--think-ms", "5", "--work-ms", "1")
    assert rc == 0, doc
    m = doc["metrics"]
    assert m["errors"] == 0 and m["duplicates_run"] == 0 and m["mismatch"] == 0
    assert m["completions_fg"] > 0 and m["acks_bg"] > 0
    assert m["submitted"] == m["completions_fg"] + m["acks_bg"]
    # Hot uniques coalesce, so there are fewer runs than submissions.
    assert 0 < m["runs"] < m["submitted"]
    assert len(m["timeline"]) >= 2 and m["drained"]


@pytest.fixture()
def nullserver() -> Iterator[str]:
    port = _free_port()
    proc = _start([sys.executable, "-m", "gearmesh.bench.nullserver", "--port", str(port)], port)
    yield f"127.0.0.1:{port}"
    _stop(proc)


@pytest.mark.timeout(60)
def test_bg_fails_when_server_does_not_hold_the_jobs(nullserver: str) -> None:
    # It acknowledges every submit but its status lists nothing.
    rc, doc = bench("bg", "--servers", nullserver, "--jobs", "500", "--conns", "2",
                    "--no-cleanup")
    assert rc == 1
    assert doc["metrics"]["acked"] == 500
    assert failed_checks(doc) == ["server holds every acknowledged job"]


@pytest.mark.timeout(60)
def test_rt_fails_on_wrong_echo() -> None:
    port = _free_port()
    proc = _start([sys.executable, "-m", "gearmesh.bench.nullserver", "--port", str(port),
                   "--corrupt"], port)
    try:
        rc, doc = bench("rt", "--servers", f"127.0.0.1:{port}", "--jobs", "50",
                        "--clients", "2", "--workers", "2")
    finally:
        _stop(proc)
    assert rc == 1
    assert doc["metrics"]["mismatch"] == 50
    assert "every result echoed the job's data under its handle" in failed_checks(doc)


@pytest.mark.timeout(30)
def test_unreachable_server_exits_2() -> None:
    rc, doc = bench("bg", "--servers", f"127.0.0.1:{_free_port()}", "--jobs", "10")
    assert rc == 2
    assert not doc["ok"] and "unreachable" in doc["error"]


# --- pure helpers -----------------------------------------------------------


@pytest.mark.timeout(10)
def test_payload_is_derived_from_the_key() -> None:
    assert payload_for(b"ab1.", 10) == b"ab1.ab1.ab"
    assert payload_for(b"ab1.", 0) == b""
    assert payload_for(b"abcdef", 3) == b"abc"


@pytest.mark.timeout(10)
def test_parse_servers() -> None:
    assert parse_servers("h1:1, h2:2,h3") == [Server("h1", 1), Server("h2", 2),
                                               Server("h3", 4730)]
    with pytest.raises(ValueError):
        parse_servers(" , ")


@pytest.mark.timeout(10)
def test_merge_bitmaps_finds_jobs_seen_by_two_processes() -> None:
    a = bytes([0b0000_0011])
    b = bytes([0b0000_0110])
    assert merge_bitmaps([a, b, b""]) == (3, 1)


@pytest.mark.timeout(10)
def test_queued_view_sums_servers_or_takes_a_cluster_wide_figure() -> None:
    st = FunctionStatus
    assert queued_view([st(5, 0, 1), st(7, 1, 1), None])[:2] == (12, 1)
    assert queued_view([st(9, 0, 1), st(9, 0, 1), st(9, 0, 1)])[:2] == (9, 0)
    assert queued_view([None, None])[:2] == (0, 0)


@pytest.mark.timeout(10)
def test_percentiles_are_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(values, 50) == 0.05
    assert percentile(values, 99) == 0.099
    summary = latency_summary(list(reversed(values)))
    assert summary["count"] == 100 and summary["max_ms"] == 100.0
    assert latency_summary([])["p99_ms"] is None
