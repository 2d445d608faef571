"""A job never waits for a busy worker while another one sleeps (issue: the
seed's parallel-tasks program ran in waves through a 3-node cluster).

Real PHP workers and the seed's own client (unchanged) on a real 3-node
cluster with etcd, and on three standalone nodes. A libgearman worker that
lists every node sleeps on every node; a NOOP on a connection whose process
is busy with another node's job used to make a job wait a whole job-length.
Each round is five tasks through one node, the next round through the next;
five workers run them in one wave, so a round takes one job-length plus the
client's start-up, and a second wave would add a whole job-length.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.admin import wait_for_status  # noqa: E402
from tests.support.cluster import Cluster, ClusterNode  # noqa: E402
from tests.support.procs import Spawned  # noqa: E402
from tests.support.servers import GEARMESH, ServerProcess  # noqa: E402

HERE = Path(__file__).resolve().parent
PHP_WORKER = HERE / "php" / "worker.php"
# The seed examples live beside the checkout (../shared); a worktree sits deeper.
SEED_CLIENT = next(
    (d / "shared" / "seed-examples" / "3-parallel-tasks" / "client.php" for d in REPO.parents
     if (d / "shared" / "seed-examples").is_dir()),
    REPO.parent / "shared" / "seed-examples" / "3-parallel-tasks" / "client.php",
)
SUMS = {"5050", "15150", "25250", "35350", "45450"}
JOB_S = 0.8  # the seed sleeps 1 s; shorter keeps the suite fast and still shows waves
# A second wave takes a round past 2 x JOB_S, whatever the machine's load;
# one wave leaves 0.7 x JOB_S for the PHP client's start-up and the wake-ups.
ROUND_LIMIT = 1.9 * JOB_S
ROUNDS = 20  # the count: waves showed in 1 of 10 to 4 of 8 rounds
NOOPS_PER_JOB_LIMIT = 3.0  # gearmand's default (wake every sleeper) sends 15 here

pytestmark = pytest.mark.skipif(
    shutil.which("php") is None or not SEED_CLIENT.exists(),
    reason="needs php and ../shared/seed-examples",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("wakeup"), queue="memory", lease_ttl=2)
    try:
        c.start(["n1", "n2", "n3"])
        yield c
    finally:
        c.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Spawned]]:
    started: list[Spawned] = []

    def factory(argv: Sequence[str], name: str) -> Spawned:
        proc = Spawned([str(a) for a in argv], name=name, cwd=str(REPO),
                       env={"SUM_SLEEP_MS": str(int(JOB_S * 1000))})
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.kill()
    for proc in started:
        print(f"----- output of {proc.name} -----\n{proc.output()[-2000:]}")


def _workers(spawn: Callable[..., Spawned], servers: Sequence[Sequence[ServerProcess]],
             every: Sequence[ServerProcess]) -> list[Spawned]:
    """One PHP worker per entry, listing that entry's servers; wait until
    every server shows its share of them."""
    procs = [spawn(["php", PHP_WORKER, ",".join(s.address for s in mine), f"w{i}", "Sum=sum"],
                   name=f"worker w{i}") for i, mine in enumerate(servers)]
    for p in procs:
        p.wait_for_line(r"^READY ")
    for server in every:
        n = sum(1 for mine in servers if server in mine)
        wait_for_status(server.host_port, "Sum", workers=n)
    return procs


def _rounds(spawn: Callable[..., Spawned], entries: Sequence[ServerProcess],
            rounds: int) -> list[float]:
    """The seed's client through each entry in turn; wall time per round."""
    times = []
    for r in range(rounds):
        entry = entries[r % len(entries)]
        t0 = time.monotonic()
        out = spawn(["php", SEED_CLIENT, entry.address], name=f"client round {r}").finish(30)
        times.append(time.monotonic() - t0)
        assert set(re.findall(r"计算结果为:(\d+)", out)) == SUMS, out
    return times


def _noops(nodes: Sequence[ClusterNode]) -> float:
    total = 0.0
    for n in nodes:
        m = re.search(r"^gearmesh_noops_sent_total (\S+)$", n.metrics(), re.M)
        assert m is not None, "gearmesh_noops_sent_total missing from /metrics"
        total += float(m.group(1))
    return total


def _check(times: list[float], noops: float | None, rounds: int) -> None:
    shown = ", ".join(f"{t:.2f}" for t in times)
    print(f"round times (s): {shown}; noops per job: "
          f"{noops / (5 * rounds) if noops is not None else 'n/a'}")
    assert max(times) < ROUND_LIMIT, f"a round ran in waves: {shown}"
    if noops is not None:
        assert noops / (5 * rounds) <= NOOPS_PER_JOB_LIMIT, (noops, rounds)


def _stop(procs: list[Spawned], every: Sequence[ServerProcess]) -> None:
    for p in procs:
        p.kill()
    for server in every:
        wait_for_status(server.host_port, "Sum", workers=0)


@pytest.mark.timeout(120)
def test_workers_listing_every_node_run_each_round_in_one_wave(
    cluster: Cluster, spawn: Callable[..., Spawned]
) -> None:
    nodes = [cluster.nodes[n] for n in ("n1", "n2", "n3")]
    procs = _workers(spawn, [nodes] * 5, nodes)
    before = _noops(nodes)
    times = _rounds(spawn, nodes, ROUNDS)
    _check(times, _noops(nodes) - before, ROUNDS)
    _stop(procs, nodes)


@pytest.mark.timeout(120)
def test_workers_each_on_one_node_run_each_round_in_one_wave(
    cluster: Cluster, spawn: Callable[..., Spawned]
) -> None:
    nodes = [cluster.nodes[n] for n in ("n1", "n2", "n3")]
    procs = _workers(spawn, [[nodes[i % 3]] for i in range(5)], nodes)
    before = _noops(nodes)
    times = _rounds(spawn, nodes, ROUNDS)
    _check(times, _noops(nodes) - before, ROUNDS)
    _stop(procs, nodes)


@pytest.mark.timeout(120)
def test_three_standalone_nodes_run_each_round_in_one_wave(
    spawn: Callable[..., Spawned]
) -> None:
    servers = [ServerProcess(kind=GEARMESH) for _ in range(3)]
    try:
        for s in servers:
            s.start()
        _workers(spawn, [servers] * 5, servers)
        _check(_rounds(spawn, servers, ROUNDS), None, ROUNDS)
    finally:
        for s in servers:
            s.stop()
