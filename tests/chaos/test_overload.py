"""A burst past capacity slows clients down and never breaks the cluster.

Real processes and a real etcd: three nodes with durable queues, and
``gearmesh bench burst --overload`` as the load — 8 connections through
n1 and n2, each writing 50 pipelined background submits (distinct uniques)
every 2 ms without waiting for JOB_CREATED, far more than the nodes absorb;
then workers on the nodes drain the queue. The bench keeps a ledger per
unique (acknowledged, refused, run), which is what the assertions read.

How long the pipelining lasts: GEARMESH_SOAK_SECONDS (default 8, so the
suite stays short on a 2-core CI machine; the issue's figure is 30). The
test proves the nodes were past capacity: connections were paused.

Bounds asserted (each node): 0 lease losses; event-loop lag p99 at most
LAG_P99_MAX; peak RSS at most RSS_BASE + RSS_PER_JOB per acknowledged job
(the queue itself is what must be held: the bound says nothing else grows
with the offered load — outboxes and buffers are capped by back-pressure).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.cluster import Cluster, ClusterNode  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

SOAK_SECONDS = float(os.environ.get("GEARMESH_SOAK_SECONDS", "8"))
TTL = 5  # the production default lease TTL: what the nodes lost
LAG_P99_MAX = 1.0  # seconds
RSS_BASE = 200 * 1024 * 1024
RSS_PER_JOB = 1024  # bytes per acknowledged job held (about 500 B each measured)
# Without replicas: with --replicas 1 a worker's next job waits for the
# finished one's deletion on the replica (one round trip and group commit,
# ~8 ms under this load), so 16 workers drain ~2,000 jobs/s and the drain of
# a burst this size outlasts the test's bound. Overload with replicas is
# measured by `gearmesh bench burst --overload` instead (docs/cluster.md).
NODE_ARGS = ("--grace", "60", "--replicas", "0")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, queue="sqlite", lease_ttl=TTL)
    try:
        c.start(["n1", "n2", "n3"], *NODE_ARGS)
        yield c
    finally:
        c.close()


def bench(clients: Sequence[ClusterNode], workers: Sequence[ClusterNode]) -> subprocess.Popen[str]:
    servers = ",".join(dict.fromkeys(n.address for n in [*clients, *workers]))
    return subprocess.Popen(
        [sys.executable, "-m", "gearmesh", "bench", "burst", "--overload",
         "--duration", str(SOAK_SECONDS), "--clients", "8", "--pipeline", "50",
         "--every-ms", "2", "--workers", "16", "--procs", "2", "--grace", "120",
         "--servers", servers,
         "--client-servers", ",".join(n.address for n in clients),
         "--worker-servers", ",".join(n.address for n in workers), "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"bench did not finish in {timeout}s:\n{err[-3000:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"bench printed no result (rc {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}"
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc


def counter(node: ClusterNode, name: str, text: str | None = None) -> float:
    m = re.search(rf"^{name} (\S+)$", node.metrics() if text is None else text, re.M)
    return float(m.group(1)) if m else 0.0


def lag_p99(text: str) -> float:
    buckets = [(float(le), float(n)) for le, n in re.findall(
        r'^gearmesh_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)]
    assert buckets, "no event-loop lag histogram"
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= 0.99 * total)


def peak_rss(node: ClusterNode) -> int:
    status = Path(f"/proc/{node.pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert m is not None
    return int(m.group(1)) * 1024


def check_ledger(doc: dict[str, Any]) -> dict[str, Any]:
    m = doc["metrics"]
    summary = {k: m[k] for k in ("submitted", "acknowledged", "refused", "unanswered", "lost",
                                 "duplicated", "runs", "blocked_turns")}
    assert m["refused"] == 0, (m["refused_by_reason"], summary)
    assert m["unanswered"] == 0, summary
    assert m["lost"] == 0, summary
    assert m["duplicated"] == 0, summary
    assert m["drained"], summary
    assert m["acknowledged"] > 0 and m["runs"] == m["acknowledged"], summary
    failed = [c for c in doc["checks"] if not c["ok"]]
    assert not failed and doc["ok"], failed
    return summary


def check_nodes(nodes: Sequence[ClusterNode], acknowledged: int) -> dict[str, Any]:
    """The per-node bounds; returns the figures for the report."""
    figures: dict[str, Any] = {}
    for n in nodes:
        text = n.metrics()
        rss = peak_rss(n)
        p99 = lag_p99(text)
        losses = counter(n, "gearmesh_lease_losses_total", text)
        figures[n.node_id] = {"rss_mb": round(rss / 2**20), "lag_p99_s": p99,
                              "lease_losses": losses,
                              "pauses": counter(n, "gearmesh_connection_pauses_total", text)}
        assert losses == 0, (n.node_id, figures)
        assert p99 <= LAG_P99_MAX, (n.node_id, figures)
        assert rss <= RSS_BASE + RSS_PER_JOB * acknowledged, (n.node_id, figures)
        assert "registration was deleted" not in n.log_text(), n.node_id
    # Past capacity for real: the entry nodes stopped reading their clients.
    assert sum(f["pauses"] for f in figures.values()) > 0, figures
    return figures


@pytest.mark.timeout(300 + 4 * SOAK_SECONDS)
def test_overload_soak_loses_refuses_and_repeats_nothing(cluster: Cluster) -> None:
    n1, n2, n3 = (cluster.nodes[i] for i in ("n1", "n2", "n3"))
    doc = finish(bench([n1, n2], [n1, n2, n3]), timeout=250 + 4 * SOAK_SECONDS)
    summary = check_ledger(doc)
    figures = check_nodes([n1, n2, n3], summary["acknowledged"])
    print(f"overload soak {SOAK_SECONDS:g}s: {summary} {figures}")
    assert all(n.running for n in (n1, n2, n3))


@pytest.mark.timeout(360 + 4 * SOAK_SECONDS)
def test_overload_soak_with_a_join_and_two_drains(cluster: Cluster) -> None:
    """During the pipelining a 4th node joins, then it and n3 are drained
    (SIGTERM, as a scale-in does): both hand everything over and exit 0, and
    the ledger still balances. Workers and clients use n1 and n2, which stay."""
    n1, n2, n3 = (cluster.nodes[i] for i in ("n1", "n2", "n3"))
    before = cluster.wait_converged(["n1", "n2", "n3"])
    proc = bench([n1, n2], [n1, n2])
    events: list[str] = []
    errors: list[BaseException] = []

    def scale() -> None:
        try:
            # Each step waits for the load to have moved on, not for a time.
            wait_until(lambda: counter(n1, "gearmesh_forwarded_total") > 20_000, 60,
                       what="the burst to be under way")
            n4 = cluster.add("n4", *NODE_ARGS)
            cluster.wait_converged(["n1", "n2", "n3", "n4"], after=before, timeout=60)
            events.append("n4 joined")
            wait_until(lambda: counter(n4, "gearmesh_submitted_total") > 10_000, 60,
                       what="n4 to own jobs")
            for node in (n4, n3):
                node.send_signal(signal.SIGTERM)

                def exited(node: ClusterNode = node) -> bool:
                    return not node.running

                wait_until(exited, 90, what=f"{node.node_id} to finish its drain")
                rc = node.stop()
                log = node.log_text()
                assert rc == 0, f"{node.node_id} exited {rc}:\n{log[-3000:]}"
                assert "0 queued background job(s) still here" in log, log[-3000:]
                events.append(f"{node.node_id} drained")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=scale)
    t.start()
    doc = finish(proc, timeout=300 + 4 * SOAK_SECONDS)
    t.join(120)
    assert not errors, errors
    assert events == ["n4 joined", "n4 drained", "n3 drained"], events
    summary = check_ledger(doc)
    figures = check_nodes([n1, n2], summary["acknowledged"])
    print(f"overload soak with join and drains {SOAK_SECONDS:g}s: {summary} {figures}")
