"""`gearmesh bench` against real gearmand processes, with tiny counts.

Each scenario must report the counts it was asked for and pass its own
checks against gearmand, and must fail (non-zero exit) when what it measures
is wrong: two independent servers do not coalesce, a server that acknowledges
but stores nothing, a server that corrupts results, a server that is down.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.memberinfo import MemberInfo
from cluster.partition import PartitionMap
from gearmesh.bench.config import add_arguments, resolve
from gearmesh.bench.engine import queued_view
from gearmesh.bench.owner import OwnedKeys
from gearmesh.bench.scenarios.common import job_number, merge_bitmaps
from gearmesh.bench.stats import latency_summary, percentile
from gearmesh.bench.wire import FunctionStatus, Server, parse_servers, payload_for
from tests.support.admin import admin_list, status
from tests.support.cluster import Cluster, ClusterNode
from tests.support.etcd import ETCD_BINARY
from tests.support.servers import ServerProcess, free_port
from tests.support.waiting import wait_until

GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"


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
    port = free_port()
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
    port = free_port()
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
    port = free_port()
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
    rc, doc = bench("bg", "--servers", f"127.0.0.1:{free_port()}", "--jobs", "10")
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


# --- placement: --client-servers, --worker-servers, --owner -----------------


def _resolve(*argv: str) -> Any:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return resolve(parser.parse_args(list(argv)))


@pytest.mark.timeout(10)
def test_server_lists_default_to_servers_and_join_them() -> None:
    a, b, c = Server("h", 1), Server("h", 2), Server("h", 3)
    cfg = _resolve("rt", "--servers", "h:1,h:2")
    assert cfg.client_servers == cfg.worker_servers == cfg.servers == (a, b)
    cfg = _resolve("rt", "--servers", "h:1,h:2", "--client-servers", "h:2",
                   "--worker-servers", "h:3")
    # A server named only for clients or workers is still probed and counted.
    assert cfg.servers == (a, b, c)
    assert cfg.client_servers == (b,) and cfg.worker_servers == (c,)
    cfg = _resolve("bg", "--client-servers", "h:1", "--worker-servers", "h:1,h:2")
    assert cfg.servers == (a, b)
    assert _resolve("rt").servers == (Server("127.0.0.1", 4730),)


@pytest.mark.timeout(10)
def test_owner_options_are_checked() -> None:
    with pytest.raises(ValueError, match="--nodes"):
        _resolve("rt", "--owner", "n2")
    with pytest.raises(ValueError, match="not one of"):
        _resolve("rt", "--owner", "n4", "--nodes", "n1,n2,n3")
    with pytest.raises(ValueError, match="twice"):
        _resolve("rt", "--owner", "n1", "--nodes", "n1,n2,n1")
    with pytest.raises(ValueError, match="only used with --owner"):
        _resolve("rt", "--nodes", "n1,n2")
    with pytest.raises(ValueError, match="--unique none"):
        _resolve("bg", "--owner", "n1", "--nodes", "n1,n2", "--unique", "none")
    cfg = _resolve("rt", "--owner", "n2", "--nodes", " n1, n2 ,n3")
    assert cfg.owner == "n2" and cfg.nodes == ("n1", "n2", "n3")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("nodes", [("n1", "n2", "n3"), ("b", "a"), ("x", "y", "z", "w", "v")])
def test_owner_uniques_map_to_the_owner(nodes: tuple[str, ...]) -> None:
    for owner in nodes:
        owned = OwnedKeys(owner, nodes)
        keys = [owned.key(b"run-%d" % i) for i in range(500)]
        assert len(set(keys)) == len(keys)
        # The map as a node builds it: from etcd's member records, whatever
        # their addresses, at some epoch, with replicas; only active members
        # count, so a joining node listed in etcd changes nothing.
        members = {n: MemberInfo(f"10.0.0.{i}:4731", f"10.0.0.{i}:4730", state="active",
                                 version="x", started_at=float(i))
                   for i, n in enumerate(nodes)}
        members["late-joiner"] = MemberInfo("10.0.0.99:4731", state="joining")
        node_map = PartitionMap(epoch=12345, members=members, replicas=1)
        assert {node_map.owner_of_key(k) for k in keys} == {owner}
        assert {Cluster.owner_of(k, nodes) for k in keys[:50]} == {owner}
        # The salt is appended, so every key still starts with its base.
        assert all(k.startswith(b"run-%d~" % i) for i, k in enumerate(keys))


@pytest.mark.timeout(10)
def test_job_number_reads_salted_and_plain_keys() -> None:
    prefix = b"abcd-"
    owned = OwnedKeys("n3", ["n1", "n2", "n3"])
    assert job_number(owned.key(prefix + b"42", end=b"."), len(prefix)) == 42
    assert job_number(prefix + b"42.", len(prefix)) == 42


def _ours(rows: dict[str, FunctionStatus], prefix: str) -> FunctionStatus | None:
    mine = [st for name, st in rows.items() if name.startswith(prefix + ".")]
    assert len(mine) <= 1, rows
    return mine[0] if mine else None


def _status(address: str) -> dict[str, FunctionStatus]:
    return {name: FunctionStatus(*row) for name, row in status(address).items()}


def _connections(address: str, prefix: str) -> tuple[int, int]:
    """(connections registered for our function, connections with no
    function at all, the asking admin connection not counted)."""
    ours = plain = 0
    for line in admin_list(address, "workers"):
        funcs = line.rpartition(" :")[2].split()
        if any(f.startswith(prefix + ".") for f in funcs):
            ours += 1
        elif not funcs:
            plain += 1
    return ours, plain - 1


@pytest.fixture()
def two_servers() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # gearmesh standalone nodes by default; GEARMESH_TEST_SERVER=gearmand
    # runs the same tests against gearmand.
    with ServerProcess() as a, ServerProcess() as b:
        yield a, b


@pytest.mark.timeout(60)
def test_clients_and_workers_connect_only_where_asked(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_servers
    prefix = f"place-{secrets.token_hex(4)}"
    # Independent servers share no jobs: with clients on A and workers on B
    # no job can complete, and each client's one job waits on A.
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearmesh.bench", "rt", "--client-servers", a.address,
         "--worker-servers", b.address, "--jobs", "30", "--clients", "3", "--workers", "2",
         "--procs", "2", "--duration", "50", "--grace", "1", "--function-prefix", prefix,
         "--json", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def placed() -> tuple[Any, ...] | None:
            seen = (_ours(_status(a.address), prefix), _ours(_status(b.address), prefix),
                    _connections(a.address, prefix), _connections(b.address, prefix))
            want = (FunctionStatus(3, 0, 0), FunctionStatus(0, 0, 2), (0, 3), (2, 0))
            return seen if seen == want else None

        wait_until(placed, 30, interval=0.05, what="3 clients' jobs on A, 2 workers on B")
    finally:
        # The coordinator ends its load processes on Ctrl-C and still reports.
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, (out, err)
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["error"] == "interrupted"
    assert doc["config"]["client_servers"] == [a.address]
    assert doc["config"]["worker_servers"] == [b.address]
    assert doc["servers"] == [a.address, b.address]


@pytest.mark.timeout(60)
def test_bg_on_one_of_two_servers_checks_the_queue_across_both(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_servers
    prefix = f"place-{secrets.token_hex(4)}"
    rc, doc = bench("bg", "--servers", f"{a.address},{b.address}", "--client-servers",
                    b.address, "--worker-servers", b.address, "--jobs", "1000", "--conns", "2",
                    "--workers", "2", "--function-prefix", prefix)
    assert rc == 0, doc
    m = doc["metrics"]
    assert m["acked"] == m["server_queued"] == m["drained"] == 1000
    assert _ours(_status(a.address), prefix) is None
    assert _ours(_status(b.address), prefix) == FunctionStatus(0, 0, 0)


@pytest.fixture(scope="module")
def gearmesh_node() -> Iterator[str]:
    with ServerProcess() as server:
        yield server.address


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    ("rt", "--jobs", "300", "--clients", "3", "--workers", "2"),
    ("bg", "--jobs", "1000", "--conns", "2", "--workers", "2"),
    ("drain", "--jobs", "1000", "--conns", "2", "--workers", "2"),
    ("coalesce", "--uniques", "50", "--repeat", "3", "--workers", "2"),
])
def test_owner_uniques_pass_every_check(gearmesh_node: str, args: tuple[str, ...]) -> None:
    # A single server routes nothing, but every check (distinct uniques,
    # echoed data, each job run once) must hold for salted uniques too.
    rc, doc = bench(*args, "--servers", gearmesh_node, "--owner", "n2", "--nodes", "n1,n2,n3")
    assert rc == 0, doc
    assert doc["config"]["owner"] == "n2"


def _counters(node: ClusterNode, *names: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in node.metrics().splitlines():
        key, _, value = line.partition(" ")
        for name in names:
            if key == f"gearmesh_{name}_total":
                values[name] = float(value)
    assert set(values) == set(names), f"{names} not all in /metrics of {node.node_id}"
    return values


@pytest.mark.timeout(90)
def test_rt_three_way_on_a_cluster_forwards_every_submit(tmp_path: Path) -> None:
    if not os.access(ETCD_BINARY, os.X_OK):
        pytest.skip(f"{ETCD_BINARY} is not installed")
    cluster = Cluster(tmp_path)
    try:
        n1, n2, n3 = cluster.start(["n1", "n2", "n3"])
        names = ("submitted", "coalesced", "forwarded", "completed")
        before = {n.node_id: _counters(n, *names) for n in (n1, n2, n3)}
        rc, doc = bench("rt", "--servers", ",".join(n.address for n in (n1, n2, n3)),
                        "--client-servers", n1.address, "--worker-servers", n3.address,
                        "--owner", "n2", "--nodes", "n1,n2,n3", "--jobs", "200",
                        "--clients", "4", "--workers", "4", "--duration", "10")
        after = {n.node_id: _counters(n, *names) for n in (n1, n2, n3)}
    finally:
        cluster.close()
    delta = {node: {k: after[node][k] - before[node][k] for k in names} for node in after}
    took = delta["n2"]["submitted"]
    # The placement, whatever became of the jobs: node 1 took every submit
    # and forwarded it, node 2 owned every job, node 3 (the workers' node)
    # held none.
    assert took > 0, delta
    assert delta["n1"] == {"submitted": 0, "coalesced": 0, "forwarded": took, "completed": 0}
    assert delta["n2"]["forwarded"] == delta["n2"]["coalesced"] == 0, delta
    assert delta["n3"] == {"submitted": 0, "coalesced": 0, "forwarded": 0, "completed": 0}
    assert rc == 0, doc
    assert doc["metrics"]["done"] == took == 200
    assert delta["n2"]["completed"] == 200


@pytest.mark.timeout(90)
def test_rt_and_bg_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    from tests.support.certs import make_pki
    from tests.support.tlsclients import tls_server

    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    who = pki.client("client")
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(who.cert), "--tls-key", str(who.key)]
    with tls_server(pki, "--ssl-verify-client", probe=who, workdir=tmp_path / "node") as node:
        rc, doc = bench("rt", "--servers", node.address, "--jobs", "300", "--clients", "2",
                        "--workers", "2", *tls)
        assert rc == 0, doc
        assert doc["metrics"]["done"] == 300 and doc["metrics"]["mismatch"] == 0
        rc, doc = bench("bg", "--servers", node.address, "--jobs", "300", *tls)
        assert rc == 0, doc
        # Without a certificate the node refuses the handshake: the run fails.
        rc, _ = bench("rt", "--servers", node.address, "--jobs", "10", "--tls-ca", str(pki.ca))
        assert rc != 0
