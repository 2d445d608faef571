"""Three gearmesh nodes and a real etcd on loopback act as one job server.

The cluster (etcd + nodes n1, n2, n3 with sqlite queues, lease TTL 2 s) is
started once for the module; tests keep out of each other's way by using
their own function names and unique ids. Tests that need a node to die add
an extra node (n4, n5, ...) and kill that one, so the core three stay up;
the last tests restart etcd under the core and run a second, ``-j 1``
cluster under another etcd prefix.

Clients are real: PHP's GearmanClient/GearmanWorker (libgearman), Perl's
Gearman::Client (hashes a task's uniq over its job servers), python ``gear``
(round robin over its servers), and raw sockets where speed or byte-exact
replies matter. Synchronisation is on events only: replies, lines printed by
client processes, admin ``status`` and etcd polls with deadlines.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.admin import status, wait_for_status  # noqa: E402
from tests.support.cluster import Cluster, ClusterNode  # noqa: E402
from tests.support.ledger import Ledger  # noqa: E402
from tests.support.procs import Spawned  # noqa: E402
from tests.support.rawclient import RawClient, T, join, pack  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

HERE = Path(__file__).resolve().parent
PHP_WORKER = HERE / "php" / "worker.php"
INTEROP_PHP = REPO / "tests" / "interop" / "php"  # do.php, tasks.php (shared with interop)
PERL_CLIENT = HERE / "perl" / "client.pl"
SEED_RUN = REPO.parent / "shared" / "seed-examples" / "run.sh"

CORE = ["n1", "n2", "n3"]
TTL = 2

pytestmark = [
    # gear 0.16 still calls notifyAll(); that is its business, not ours.
    pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning"),
]


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed")


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"), queue="sqlite", lease_ttl=TTL)
    try:
        c.start(CORE)
        yield c
    finally:
        c.close()


@pytest.fixture(autouse=True)
def node_logs(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    """On failure, print what every node logged during the test (pytest shows a
    failing test's captured teardown output)."""
    failed_before = request.session.testsfailed
    offsets = {n: len(node.log_text()) for n, node in cluster.nodes.items()}
    yield
    if request.session.testsfailed == failed_before:
        return
    for n, node in cluster.nodes.items():
        text = node.log_text()[offsets.get(n, 0) :]
        tail = "\n".join(text.splitlines()[-80:])
        print(f"----- node {n} log during the test -----\n{tail}")
    print(f"----- etcd log tail -----\n{cluster.etcd.log_tail(20)}")


@pytest.fixture
def spawn() -> Iterator[Callable[..., Spawned]]:
    """Client processes; killed at teardown, output printed (shown on failure)."""
    started: list[Spawned] = []

    def factory(argv: Sequence[str], name: str | None = None) -> Spawned:
        proc = Spawned([str(a) for a in argv], name=name, cwd=str(REPO))
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.kill()
    for proc in started:
        print(f"----- output of {proc.name} -----\n{proc.output()}")


@pytest.fixture
def php(spawn: Callable[..., Spawned]) -> Callable[..., Spawned]:
    """``php(script, node, *args)``: worker.php is ours, do.php/tasks.php are
    the interop suite's."""
    _need("php")

    def run(script: str, node: ClusterNode, *args: str, name: str | None = None) -> Spawned:
        path = PHP_WORKER if script == "worker.php" else INTEROP_PHP / script
        return spawn(["php", path, node.address, *args], name=name or f"{script}@{node.node_id}")

    return run


@pytest.fixture
def workers() -> Iterator[Callable[..., ReverseWorker]]:
    """Raw-socket worker threads; stopped at teardown."""
    started: list[ReverseWorker] = []

    def factory(node: ClusterNode, func: str, ledger: Ledger) -> ReverseWorker:
        w = ReverseWorker(node, func, ledger)
        w.start()
        started.append(w)
        return w

    yield factory
    for w in started:
        w.stop()
    for w in started:
        w.join(5)
        assert w.error is None, f"worker on {w.node.node_id} failed: {w.error!r}"


@pytest.fixture
def extra(cluster: Cluster) -> Iterator[Callable[..., ClusterNode]]:
    """Add nodes to the running cluster; at teardown any still running are
    killed and the core three must agree on a map without them."""
    added: list[ClusterNode] = []

    def factory(node_id: str, *args: str) -> ClusterNode:
        node = cluster.add(node_id, *args)
        added.append(node)
        return node

    yield factory
    for node in added:
        node.kill9()
    if added:
        cluster.wait_converged(CORE, timeout=TTL + 10)


# -- helpers -------------------------------------------------------------------------


def node(cluster: Cluster, node_id: str) -> ClusterNode:
    return cluster.nodes[node_id]


def core(cluster: Cluster) -> list[ClusterNode]:
    return [cluster.nodes[n] for n in CORE]


def value(lines: list[str], key: str) -> str:
    found = [line.split(" ", 1)[1] if " " in line else "" for line in lines
             if line.split(" ")[0] == key]
    assert len(found) == 1, f"expected one {key} line in {lines}"
    return found[0]


def lines_of(proc: Spawned, timeout: float = 30.0) -> list[str]:
    return proc.finish(timeout).splitlines()


def owner_in(handle: bytes | str) -> str:
    """``H:<node>:<n>`` → node."""
    text = handle.decode() if isinstance(handle, bytes) else handle
    assert text.startswith("H:") and text.count(":") >= 2, f"not a cluster handle: {text!r}"
    return text[2:].rsplit(":", 1)[0]


def cluster_totals(nodes: Sequence[ClusterNode], func: str) -> tuple[int, int]:
    """(total jobs, running) of ``func`` over the nodes' admin ``status``."""
    total = running = 0
    for n in nodes:
        row = status(n.host_port).get(func)
        if row is not None:
            total += row[0]
            running += row[1]
    return total, running


def wait_cluster_idle(nodes: Sequence[ClusterNode], func: str, timeout: float = 10.0) -> None:
    wait_until(lambda: cluster_totals(nodes, func) == (0, 0), timeout,
               what=f"no {func!r} job left anywhere")


def status_unique(node: ClusterNode, unique: str) -> list[bytes]:
    with RawClient(node.host_port) as c:
        reply = c.request(T.GET_STATUS_UNIQUE, unique)
    assert reply.ptype == T.STATUS_RES_UNIQUE, reply
    return reply.args()


def wait_waiters(node: ClusterNode, unique: str, waiters: int, running: str = "0") -> None:
    """GET_STATUS_UNIQUE (asked on ``node``) shows the job known with ``waiters``."""
    want = [unique.encode(), b"1", running.encode(), b"0", b"0", str(waiters).encode()]
    wait_until(lambda: status_unique(node, unique) == want,
               what=f"{unique} known with {waiters} waiters (asked on {node.node_id})")


def take_job(w: RawClient, timeout: float = 15.0) -> list[bytes]:
    """Run a worker's GRAB / PRE_SLEEP / NOOP loop until a job is assigned;
    return JOB_ASSIGN_UNIQ's arguments [handle, function, unique, data]."""
    deadline = time.monotonic() + timeout
    w.send(T.GRAB_JOB_UNIQ)
    grabbing = True
    while True:
        p = w.recv(max(0.01, deadline - time.monotonic()))
        if p.ptype == T.JOB_ASSIGN_UNIQ:
            return p.payload.split(b"\0", 3)
        if p.ptype == T.NO_JOB:
            grabbing = False
            w.send(T.PRE_SLEEP)
        elif p.ptype == T.NOOP:
            if not grabbing:
                grabbing = True
                w.send(T.GRAB_JOB_UNIQ)
        else:
            raise AssertionError(f"worker got {p!r} while waiting for a job")


class ReverseWorker(threading.Thread):
    """A raw-socket worker on one node: records each job in a ledger and
    answers WORK_COMPLETE with the payload reversed."""

    def __init__(self, node: ClusterNode, func: str, ledger: Ledger) -> None:
        super().__init__(name=f"worker-{node.node_id}", daemon=True)
        self.node = node
        self.ledger = ledger
        self.ran = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self.conn = RawClient(node.host_port, timeout=1.0)
        self.conn.send(T.CAN_DO, func)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        c = self.conn
        try:
            c.send(T.GRAB_JOB_UNIQ)
            grabbing = True
            while not self._halt.is_set():
                try:
                    p = c.recv(0.5)
                except TimeoutError:
                    continue
                if p.ptype == T.JOB_ASSIGN_UNIQ:
                    handle, _func, _unique, data = p.payload.split(b"\0", 3)
                    self.ledger.record_assign(data, handle)
                    self.ran += 1
                    c.send_raw(pack(T.WORK_COMPLETE, join(handle, data[::-1]))
                               + pack(T.GRAB_JOB_UNIQ))
                elif p.ptype == T.NO_JOB:
                    grabbing = False
                    c.send(T.PRE_SLEEP)
                elif p.ptype == T.NOOP:
                    if not grabbing:
                        grabbing = True
                        c.send(T.GRAB_JOB_UNIQ)
                else:
                    raise AssertionError(f"worker got unexpected {p!r}")
        except BaseException as exc:  # reported by the fixture's teardown
            if not (isinstance(exc, OSError) and self._halt.is_set()):
                self.error = exc
        finally:
            c.close()


def start_reverse_workers(
    workers: Callable[..., ReverseWorker], nodes: Sequence[ClusterNode], func: str,
    ledger: Ledger, per_node: int = 1,
) -> list[ReverseWorker]:
    started = [workers(n, func, ledger) for n in nodes for _ in range(per_node)]
    for n in nodes:
        wait_for_status(n.host_port, func, workers=per_node)
    return started


def run_jobs(
    node: ClusterNode, func: str, items: Sequence[tuple[str, str]], timeout: float = 60.0
) -> dict[str, tuple[bytes, bytes]]:
    """Pipeline foreground SUBMIT_JOBs (unique, payload) on one connection;
    return {unique: (handle, result)} once every job completed."""
    deadline = time.monotonic() + timeout
    with RawClient(node.host_port, timeout=timeout) as c:
        c.send_raw(b"".join(pack(T.SUBMIT_JOB, join(func, u, p)) for u, p in items))
        handles: list[bytes] = []
        results: dict[bytes, bytes] = {}
        while len(handles) < len(items) or len(results) < len(items):
            p = c.recv(max(0.01, deadline - time.monotonic()))
            if p.ptype == T.JOB_CREATED:
                handles.append(p.payload)
            elif p.ptype == T.WORK_COMPLETE:
                handle, data = p.payload.split(b"\0", 1)
                assert handle not in results, f"two WORK_COMPLETEs for {handle!r}"
                results[handle] = data
            else:
                raise AssertionError(f"client on {node.node_id} got {p!r}")
    assert len(set(handles)) == len(items), "a handle was given to two jobs"
    return {u: (handles[i], results[handles[i]]) for i, (u, _) in enumerate(items)}


def submit_bg(node: ClusterNode, func: str, items: Sequence[tuple[str, str]]) -> list[bytes]:
    """Pipeline SUBMIT_JOB_BGs; return the handles in order."""
    with RawClient(node.host_port, timeout=15) as c:
        c.send_raw(b"".join(pack(T.SUBMIT_JOB_BG, join(func, u, p)) for u, p in items))
        return [c.expect(T.JOB_CREATED).payload for _ in items]


def flow_check(
    cluster: Cluster, workers: Callable[..., ReverseWorker], func: str, per_node: int = 10
) -> None:
    """Jobs submitted on every core node, with workers on every core node, all
    complete with the right result, each run exactly once."""
    ledger = Ledger()
    start_reverse_workers(workers, core(cluster), func, ledger)
    expected: dict[str, str] = {}
    for n in core(cluster):
        items = [(f"{func}-{n.node_id}-{i}", f"{func}:{n.node_id}:{i}") for i in range(per_node)]
        got = run_jobs(n, func, items, timeout=30)
        for u, p in items:
            assert got[u][1] == p[::-1].encode(), (u, got[u])
            expected[p] = u
    assert ledger.runs() == Counter({p.encode(): 1 for p in expected})


# -- the seed programs: client on n1, workers on n2 ------------------------------------


@pytest.mark.timeout(100)
def test_seed_examples_with_client_and_workers_on_different_nodes(
    cluster: Cluster, spawn: Callable[..., Spawned]
) -> None:
    if not SEED_RUN.is_file():
        pytest.skip(f"{SEED_RUN} not present")
    _need("php")
    _need("gearadmin")
    n1, n2 = node(cluster, "n1"), node(cluster, "n2")
    proc = spawn(["bash", SEED_RUN, n1.address, n2.address], name="seed run.sh")
    rc = proc.wait(90)
    out = proc.output()
    assert "4 passed, 0 failed" in out.splitlines(), out
    assert rc == 0, out


@pytest.mark.timeout(40)
def test_php_do_normal_client_on_n1_worker_on_n2(
    cluster: Cluster, php: Callable[..., Spawned]
) -> None:
    n1, n2 = node(cluster, "n1"), node(cluster, "n2")
    php("worker.php", n2, "w1", "seed1.record=record,seed1.reverse=reverse")
    wait_for_status(n2.host_port, "seed1.record", workers=1)
    out = lines_of(php("do.php", n1, "normal", "seed1.record", '{"name":"fate"} 我叫'))
    assert (value(out, "RESULT"), value(out, "RC")) == ('{"name":"fate"} 我叫', "SUCCESS")
    out = lines_of(php("do.php", n1, "normal", "seed1.reverse", "hello", "seed1-u1"))
    assert (value(out, "RESULT"), value(out, "RC")) == ("olleh", "SUCCESS")


@pytest.mark.timeout(40)
def test_php_do_background_client_on_n1_worker_on_n2(
    cluster: Cluster, php: Callable[..., Spawned], tmp_path: Path
) -> None:
    n1, n2 = node(cluster, "n1"), node(cluster, "n2")
    worker = php("worker.php", n2, "w1", "seed2.mail=gated")
    wait_for_status(n2.host_port, "seed2.mail", workers=1)
    gate = tmp_path / "gate"
    out = lines_of(php("do.php", n1, "background", "seed2.mail", f"{gate}|fate@163.com"))
    assert value(out, "RC") == "SUCCESS"
    handle = value(out, "HANDLE")
    assert owner_in(handle) in CORE
    # The client has returned while the worker on the other node holds the job.
    started = worker.wait_for_line(r"^START w1 (\S+) \S+ (.*)$")
    assert (started[1], started[2]) == (handle, f"{gate}|fate@163.com")
    assert not worker.matching(r"^DONE ")
    gate.touch()
    worker.wait_for_line(rf"^DONE w1 {handle}$")
    wait_cluster_idle(core(cluster), "seed2.mail")


SUMS = ["5050", "15150", "25250", "35350", "45450"]
TASK_MS = 300


def _sum_tasks(func: str) -> list[str]:
    ranges = [(1, 100), (100, 200), (200, 300), (300, 400), (400, 500)]
    return [f"normal|{func}|[{a},{b},{TASK_MS}]|" for a, b in ranges]


@pytest.mark.timeout(60)
def test_php_parallel_tasks_client_on_n1_workers_on_n2(
    cluster: Cluster, php: Callable[..., Spawned]
) -> None:
    n1, n2 = node(cluster, "n1"), node(cluster, "n2")
    five = [php("worker.php", n2, f"w{i}", "seed3.sum=sum") for i in range(5)]
    wait_for_status(n2.host_port, "seed3.sum", workers=5)
    out = lines_of(php("tasks.php", n1, *_sum_tasks("seed3.sum")))
    completes = sorted((x.split()[2] for x in out if x.startswith("COMPLETE ")), key=int)
    assert completes == SUMS
    assert value(out, "RUN") == "true"
    # Serial would take 5 x TASK_MS; under 4 x only if the tasks overlapped.
    assert float(value(out, "ELAPSED")) < 4 * TASK_MS, out

    for w in five:
        w.kill()
    wait_for_status(n2.host_port, "seed3.sum", workers=0)
    one = php("worker.php", n2, "solo", "seed3.sum=sum")
    wait_for_status(n2.host_port, "seed3.sum", workers=1)
    out = lines_of(php("tasks.php", n1, *_sum_tasks("seed3.sum")))
    completes = sorted((x.split()[2] for x in out if x.startswith("COMPLETE ")), key=int)
    assert completes == SUMS
    assert float(value(out, "ELAPSED")) >= 5 * TASK_MS, out
    assert len(one.matching(r"^START solo ")) == 5


# -- coalescing across nodes ----------------------------------------------------------


@pytest.mark.timeout(40)
def test_foreground_same_unique_on_three_nodes_runs_once(
    cluster: Cluster, php: Callable[..., Spawned]
) -> None:
    func, unique = "coal.fg", "coal-fg-1"
    nodes = core(cluster)
    # No worker yet: all three must attach to one job while it waits.
    clients = [php("tasks.php", n, f"normal|{func}|from-{n.node_id}|{unique}",
                   name=f"client@{n.node_id}") for n in nodes]
    created = [c.wait_for_line(r"^CREATED t0 (\S+)$")[1] for c in clients]
    assert len(set(created)) == 1, created
    assert owner_in(created[0]) == cluster.owner_of(unique, CORE)
    for n in nodes:
        wait_waiters(n, unique, 3)
    assert cluster_totals(nodes, func) == (1, 0)

    worker = php("worker.php", node(cluster, "n2"), "w1", f"{func}=record")
    results = [value(lines_of(c), "COMPLETE").split(" ", 1)[1] for c in clients]
    assert len(set(results)) == 1 and results[0] in {f"from-{n}" for n in CORE}, results
    wait_cluster_idle(nodes, func)
    assert len(worker.matching(r"^START ")) == 1, worker.output()
    assert worker.matching(r"^START w1 (\S+) ")[0][1] == created[0]


@pytest.mark.timeout(40)
def test_background_same_unique_on_three_nodes_runs_once(
    cluster: Cluster, php: Callable[..., Spawned], workers: Callable[..., ReverseWorker]
) -> None:
    func, unique, payload = "coal.bg", "coal-bg-1", "bg-payload"
    nodes = core(cluster)
    handles = []
    for n in nodes:
        out = lines_of(php("do.php", n, "background", func, payload, unique))
        assert value(out, "RC") == "SUCCESS"
        handles.append(value(out, "HANDLE"))
    assert len(set(handles)) == 1, handles
    assert owner_in(handles[0]) == cluster.owner_of(unique, CORE)
    assert cluster_totals(nodes, func) == (1, 0)

    ledger = Ledger()
    start_reverse_workers(workers, [node(cluster, "n3")], func, ledger)
    assert ledger.wait_assigned(1, 10)
    wait_cluster_idle(nodes, func)
    assert ledger.runs() == Counter({payload.encode(): 1})
    assert ledger.handles[payload.encode()] == handles[0].encode()


# -- volume, spread over every node ------------------------------------------------


@pytest.mark.timeout(90)
def test_300_jobs_clients_on_every_node_workers_on_single_nodes(
    cluster: Cluster, workers: Callable[..., ReverseWorker]
) -> None:
    func = "bulk.rev"
    nodes = core(cluster)
    ledger = Ledger()
    pool = start_reverse_workers(workers, nodes, func, ledger, per_node=2)
    per_node = 100
    plans = {n.node_id: [(f"b-{n.node_id}-{i}", f"{n.node_id}:{i}:payload")
                         for i in range(per_node)] for n in nodes}
    results: dict[str, dict[str, tuple[bytes, bytes]]] = {}
    errors: list[BaseException] = []

    def client(n: ClusterNode) -> None:
        try:
            results[n.node_id] = run_jobs(n, func, plans[n.node_id], timeout=60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(70)
    assert not errors, errors
    owners: Counter[str] = Counter()
    for n in nodes:
        for u, p in plans[n.node_id]:
            handle, result = results[n.node_id][u]
            assert result == p[::-1].encode(), (u, handle, result)
            assert owner_in(handle) == cluster.owner_of(u, CORE), (u, handle)
            owners[owner_in(handle)] += 1
    assert sorted(owners) == CORE
    total = per_node * len(nodes)
    assert ledger.runs() == Counter({p.encode(): 1 for plan in plans.values() for _, p in plan})
    assert sum(w.ran for w in pool) == total
    # Every node's workers took part.
    assert {w.node.node_id for w in pool if w.ran} == set(CORE)
    wait_cluster_idle(nodes, func)
    # Two thirds of the submits went to another node, and /metrics shows the
    # forwarding and the peer-link traffic it took (copied once a second).
    for n in nodes:
        assert _counter(n, "gearmesh_forwarded_total") > 0
        wait_until(lambda n=n: _counter(n, "gearmesh_peer_frames_sent_total") > 0,
                   what=f"peer frames counted on {n.node_id}")
        assert (_counter(n, "gearmesh_peer_batches_sent_total")
                <= _counter(n, "gearmesh_peer_frames_sent_total"))


@pytest.mark.timeout(40)
def test_get_status_of_a_job_works_on_every_node(cluster: Cluster) -> None:
    func, unique = "st.fn", "st-1"
    nodes = core(cluster)
    (handle,) = submit_bg(node(cluster, "n1"), func, [(unique, "st-payload")])
    assert owner_in(handle) == cluster.owner_of(unique, CORE)

    def status_on(n: ClusterNode) -> list[bytes]:
        with RawClient(n.host_port) as c:
            reply = c.request(T.GET_STATUS, handle)
        assert reply.ptype == T.STATUS_RES, reply
        return reply.args()

    for n in nodes:
        assert status_on(n) == [handle, b"1", b"0", b"0", b"0"], n.node_id
        assert status_unique(n, unique) == [unique.encode(), b"1", b"0", b"0", b"0", b"0"]

    # A worker on a node that does not own the job runs it.
    worker_node = next(n for n in nodes if n.node_id != owner_in(handle))
    with RawClient(worker_node.host_port) as w:
        w.can_do(func)
        assigned = take_job(w)
        assert assigned == [handle, func.encode(), unique.encode(), b"st-payload"]
        w.send(T.WORK_STATUS, handle, "3", "7")
        for n in nodes:
            wait_until(lambda n=n: status_on(n) == [handle, b"1", b"1", b"3", b"7"],
                       what=f"running 3/7 on {n.node_id}")
            assert status_unique(n, unique) == [unique.encode(), b"1", b"1", b"3", b"7", b"0"]
        w.send(T.WORK_COMPLETE, handle, "ok")
        assert w.sync() == []
        for n in nodes:
            wait_until(lambda n=n: status_on(n) == [handle, b"0", b"0", b"0", b"0"],
                       what=f"unknown after completion on {n.node_id}")
    wait_cluster_idle(nodes, func)


# -- third-party clients against the whole cluster ----------------------------------


def _perl_hash_index(uniq: str, servers: int) -> int:
    """Gearman::Task::hash: (crc32(uniq) >> 16) & 0x7fff, modulo the server count."""
    return ((zlib.crc32(uniq.encode()) >> 16) & 0x7FFF) % servers


@pytest.mark.timeout(60)
def test_perl_clients_with_every_node_as_job_server(
    cluster: Cluster, spawn: Callable[..., Spawned], workers: Callable[..., ReverseWorker]
) -> None:
    _need("perl")
    nodes = core(cluster)
    addresses = [n.address for n in nodes]
    func = "perl.rev"
    ledger = Ledger()
    start_reverse_workers(workers, nodes, func, ledger)
    args = [f"perl-{i}" for i in range(24)]
    proc = spawn(["perl", PERL_CLIENT, ",".join(addresses), "set", func, *args], name="perl set")
    out = lines_of(proc, 40)
    assert out[-1] == "WAITED"
    completes = sorted(x for x in out if x.startswith("COMPLETE "))
    assert completes == sorted(f"COMPLETE {a} {a[::-1]}" for a in args)
    entries = {}
    for x in out:
        if x.startswith("CREATED "):
            _, arg, handle = x.split(" ")
            server, _, job_handle = handle.partition("//")
            entries[arg] = server
            assert owner_in(job_handle) == cluster.owner_of(arg, CORE), x
    # Gearman::Client picked each task's server by hashing its uniq.
    assert entries == {a: addresses[_perl_hash_index(a, 3)] for a in args}
    assert set(entries.values()) == set(addresses)
    assert ledger.runs() == Counter({a.encode(): 1 for a in args})

    # Coalescing: three clients whose server lists are rotated so that the
    # same uniq is sent to a different node by each.
    func2, uniq = "perl.coal", "perl-coal-1"
    idx = _perl_hash_index(uniq, 3)
    clients = []
    for target in range(3):
        order = [addresses[(target - idx + k) % 3] for k in range(3)]
        assert order[idx] == addresses[target]
        clients.append(spawn(["perl", PERL_CLIENT, ",".join(order), "do", func2, "same-arg",
                              uniq], name=f"perl do via {nodes[target].node_id}"))
    submitted = [c.wait_for_line(r"^SUBMITTED (\S+)//(\S+)$") for c in clients]
    assert [m[1] for m in submitted] == addresses
    assert len({m[2] for m in submitted}) == 1, [m[0] for m in submitted]
    wait_waiters(nodes[0], uniq, 3)
    ledger2 = Ledger()
    start_reverse_workers(workers, [nodes[2]], func2, ledger2)
    for c in clients:
        assert value(lines_of(c), "RESULT") == "gra-emas"
    assert ledger2.runs() == Counter({b"same-arg": 1})
    wait_cluster_idle(nodes, func2)


@pytest.mark.timeout(60)
def test_gear_client_round_robin_over_the_cluster(
    cluster: Cluster, workers: Callable[..., ReverseWorker]
) -> None:
    gear = pytest.importorskip("gear")
    nodes = core(cluster)
    func = "gear.rev"
    ledger = Ledger()
    start_reverse_workers(workers, nodes, func, ledger)
    client = gear.Client("cluster-test")
    try:
        for n in nodes:
            client.addServer("127.0.0.1", n.port)
        wait_until(lambda: len(client.active_connections) == 3, what="gear connected to all")
        jobs = [gear.Job(func, f"gear-{i}".encode(), unique=f"gear-{i}") for i in range(30)]
        for job in jobs:
            client.submitJob(job, timeout=10)
        assert {job.connection.port for job in jobs} == {n.port for n in nodes}
        wait_until(lambda: all(job.complete for job in jobs), 30, what="30 gear jobs complete")
        for i, job in enumerate(jobs):
            assert (job.failure, job.data) == (False, [f"gear-{i}".encode()[::-1]]), i
            assert owner_in(job.handle) == cluster.owner_of(f"gear-{i}", CORE)
        assert ledger.runs() == Counter({f"gear-{i}".encode(): 1 for i in range(30)})

        # The same unique three times: round robin sends each to another node.
        func2 = "gear.coal"
        same = [gear.Job(func2, b"gear-same", unique="gear-same-1") for _ in range(3)]
        for job in same:
            client.submitJob(job, timeout=10)
        assert len({job.connection.port for job in same}) == 3
        assert len({job.handle for job in same}) == 1, [job.handle for job in same]
        wait_waiters(nodes[1], "gear-same-1", 3)
        ledger2 = Ledger()
        start_reverse_workers(workers, [nodes[0]], func2, ledger2)
        wait_until(lambda: all(job.complete for job in same), 20, what="coalesced gear jobs")
        for job in same:
            assert (job.failure, job.data) == (False, [b"emas-raeg"])
        assert ledger2.runs() == Counter({b"gear-same": 1})
    finally:
        client.shutdown()
    wait_cluster_idle(nodes, func)


# -- membership: join, SIGTERM, kill -9 --------------------------------------------


def gearmesh_status(cluster: Cluster) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "gearmesh", "status", "--etcd", cluster.etcd.endpoint, "--json"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.timeout(60)
def test_node_joins_owns_keys_then_sigterm_deregisters_at_once(
    cluster: Cluster, extra: Callable[..., ClusterNode], workers: Callable[..., ReverseWorker]
) -> None:
    before = cluster.wait_converged(CORE)
    n4 = extra("n4")
    four = [*CORE, "n4"]
    epoch4 = cluster.wait_converged(four, after=before)
    assert n4.readyz() == 200

    # New uniques owned by n4 under the new map get n4's handles, wherever
    # they are submitted.
    func = "join.fn"
    items = [(f"join-{i}", f"join-payload-{i}") for i in range(40)]
    predicted = {u: cluster.owner_of(u, four) for u, _ in items}
    assert "n4" in predicted.values()
    handles = submit_bg(node(cluster, "n1"), func, items[:20]) + submit_bg(n4, func, items[20:])
    assert {u: owner_in(h) for (u, _), h in zip(items, handles, strict=True)} == predicted
    assert sum(1 for h in handles if h.startswith(b"H:n4:")) == \
        sum(1 for o in predicted.values() if o == "n4")
    ledger = Ledger()
    start_reverse_workers(workers, [node(cluster, "n2")], func, ledger)
    assert ledger.wait_assigned(len(items), 20), len(ledger)
    wait_cluster_idle([*core(cluster), n4], func)
    assert ledger.runs() == Counter({p.encode(): 1 for _, p in items})

    status = gearmesh_status(cluster)
    assert sorted(n["id"] for n in status["nodes"]) == four
    assert {n["epoch"] for n in status["nodes"]} == {epoch4}

    # SIGTERM: the node revokes its lease, the others see it gone at once.
    t0 = time.monotonic()
    n4.send_signal(signal.SIGTERM)
    wait_until(lambda: "n4" not in cluster.member_ids(), 3, interval=0.01,
               what="n4 gone from etcd")
    gone_after = time.monotonic() - t0
    print(f"n4 left etcd {gone_after:.3f}s after SIGTERM")
    assert gone_after < 1.0, f"n4 left etcd {gone_after:.2f}s after SIGTERM"
    cluster.wait_converged(CORE, after=epoch4, timeout=3)
    wait_until(lambda: not n4.running, 10, what="n4 to exit after SIGTERM")
    assert n4.stop() == 0  # already exited: stop() only reports the status
    status = gearmesh_status(cluster)
    assert sorted(n["id"] for n in status["nodes"]) == CORE
    assert all(n["reachable"] for n in status["nodes"])
    assert len({n["epoch"] for n in status["nodes"]}) == 1


@pytest.mark.timeout(60)
def test_node_killed_leaves_the_map_within_its_lease_ttl(
    cluster: Cluster, extra: Callable[..., ClusterNode], workers: Callable[..., ReverseWorker]
) -> None:
    n5 = extra("n5")
    epoch5 = cluster.wait_converged([*CORE, "n5"])
    t0 = time.monotonic()
    n5.kill9()
    wait_until(lambda: "n5" not in cluster.member_ids(), TTL + 3, interval=0.02,
               what="n5 gone from etcd")
    gone_after = time.monotonic() - t0
    print(f"n5 left etcd {gone_after:.3f}s after kill -9")
    # The lease runs out TTL after its last renewal (before the kill); etcd's
    # lessor sweeps expired leases every 0.5 s.
    assert gone_after <= TTL + 1.0, f"n5 left etcd {gone_after:.2f}s after kill -9"
    cluster.wait_converged(CORE, after=epoch5, timeout=3)
    assert all(n.running for n in core(cluster))
    flow_check(cluster, workers, "kill9.flow")


@pytest.mark.timeout(60)
def test_etcd_restart_under_a_running_cluster(
    cluster: Cluster, workers: Callable[..., ReverseWorker]
) -> None:
    nodes = core(cluster)
    cluster.wait_converged(CORE)
    cluster.etcd.kill()
    # etcd is down: the nodes keep serving with the map they have.
    flow_check(cluster, workers, "etcd.down")
    assert all(n.running for n in nodes)
    cluster.etcd.start()
    cluster.wait_converged(CORE, timeout=20)
    for n in nodes:
        n.wait_ready(20)
    assert all(n.running for n in nodes)
    flow_check(cluster, workers, "etcd.back")


# -- failures: owner or worker node dies ---------------------------------------------


@pytest.mark.timeout(60)
def test_clients_get_work_fail_when_the_owner_node_is_killed(
    cluster: Cluster, extra: Callable[..., ClusterNode], php: Callable[..., Spawned]
) -> None:
    n6 = extra("n6")
    members = [*CORE, "n6"]
    cluster.wait_converged(members)
    func = "lost.owner"
    (unique,) = cluster.uniques_owned_by("n6", members, 1, "lost-owner")
    n1, n2, n3 = core(cluster)
    with RawClient(n1.host_port, timeout=15) as c:
        handle = c.submit(func, unique, "payload")
        assert owner_in(handle) == "n6"
        other = php("do.php", n2, "normal", func, "payload", unique, name="php client@n2")
        wait_waiters(n3, unique, 2)
        t0 = time.monotonic()
        n6.kill9()
        reply = c.recv(TTL + 8)
        assert (reply.ptype, reply.payload) == (T.WORK_FAIL, handle)
        failed_after = time.monotonic() - t0
        print(f"WORK_FAIL {failed_after:.3f}s after the owner was killed")
        out = lines_of(other, TTL + 8)
        assert value(out, "RC") == "WORK_FAIL"
        assert c.sync() == []
    assert failed_after < TTL + 2, failed_after


@pytest.mark.timeout(60)
def test_job_requeued_when_its_worker_node_is_killed(
    cluster: Cluster, extra: Callable[..., ClusterNode]
) -> None:
    n7 = extra("n7")
    members = [*CORE, "n7"]
    cluster.wait_converged(members)
    func = "lost.worker"
    (unique,) = cluster.uniques_owned_by("n1", members, 1, "lost-worker")
    n1, n2, n3 = core(cluster)
    requeued_before = _counter(n1, "gearmesh_requeued_total")
    with RawClient(n2.host_port, timeout=15) as c:
        handle = c.submit(func, unique, "work")
        assert owner_in(handle) == "n1"
        w1 = RawClient(n7.host_port, timeout=15)
        w1.can_do(func)
        assert take_job(w1) == [handle, func.encode(), unique.encode(), b"work"]
        w1.send(T.WORK_STATUS, handle, "1", "2")
        assert c.recv() == (b"\0RES", T.WORK_STATUS, join(handle, "1", "2"))
        n7.kill9()
        w1.close()
        # The owner requeues it; a worker on another node finishes it.
        with RawClient(n3.host_port, timeout=15) as w2:
            w2.can_do(func)
            assert take_job(w2) == [handle, func.encode(), unique.encode(), b"work"]
            w2.send(T.WORK_COMPLETE, handle, "second try")
            assert c.recv(10) == (b"\0RES", T.WORK_COMPLETE, join(handle, "second try"))
        assert c.sync() == []
    assert _counter(n1, "gearmesh_requeued_total") == requeued_before + 1
    wait_cluster_idle(core(cluster), func)


def _counter(n: ClusterNode, name: str) -> float:
    for line in n.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics of {n.node_id}")


@pytest.mark.timeout(60)
def test_job_fails_when_its_worker_node_is_killed_with_job_retries_1(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A second cluster under its own etcd prefix, every node started with -j 1.
    jc = Cluster(tmp_path, etcd=cluster.etcd, prefix="/gearmesh-j1", lease_ttl=TTL)
    try:
        j1, j2, j3 = jc.start(["j1", "j2", "j3"], "-j", "1")
        func = "retries.one"
        (unique,) = jc.uniques_owned_by("j1", ["j1", "j2", "j3"], 1, "j1-owned")
        with RawClient(j3.host_port, timeout=15) as c:
            handle = c.submit(func, unique, "work")
            assert owner_in(handle) == "j1"
            w = RawClient(j2.host_port, timeout=15)
            w.can_do(func)
            assert take_job(w) == [handle, func.encode(), unique.encode(), b"work"]
            j2.kill9()
            w.close()
            reply = c.recv(TTL + 8)
            assert (reply.ptype, reply.payload) == (T.WORK_FAIL, handle)
            assert c.sync() == []
        try:
            wait_cluster_idle([j1, j3], func)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; j1 status {status(j1.host_port)}, "
                                 f"j3 status {status(j3.host_port)}\nj1 log:\n{j1.log_tail()}"
                                 f"\nj3 log:\n{j3.log_tail()}") from None
    finally:
        jc.close()


@pytest.mark.timeout(90)
def test_sigterm_hands_queued_background_jobs_to_their_new_owners(
    cluster: Cluster, extra: Callable[..., ClusterNode], workers: Callable[..., ReverseWorker]
) -> None:
    before = cluster.wait_converged(CORE)
    n8 = extra("n8")
    four = [*CORE, "n8"]
    cluster.wait_converged(four, after=before)
    func = "handoff.fn"
    # Owned by n8 (submitted on n1, forwarded), in three priorities, plus
    # jobs with no unique, which stay on the node they were submitted to.
    owned = cluster.uniques_owned_by("n8", four, 30, "handoff")
    payloads = [f"handoff-payload-{i}" for i in range(len(owned))]
    n1 = node(cluster, "n1")
    with RawClient(n1.host_port, timeout=15) as c:
        for i, (u, p) in enumerate(zip(owned, payloads, strict=True)):
            ptype = (T.SUBMIT_JOB_BG, T.SUBMIT_JOB_HIGH_BG, T.SUBMIT_JOB_LOW_BG)[i % 3]
            c.send_raw(pack(ptype, join(func, u, p)))
        handles = [c.expect(T.JOB_CREATED).payload for _ in owned]
    assert {owner_in(h) for h in handles} == {"n8"}
    local = [("", f"handoff-local-{i}") for i in range(6)]
    submit_bg(n8, func, local)
    wait_for_status(n8.host_port, func, total=len(owned) + len(local), running=0)

    n8.send_signal(signal.SIGTERM)
    wait_until(lambda: not n8.running, 20, what="n8 to exit after SIGTERM")
    assert n8.stop() == 0
    assert "handed to their new owners" in n8.log_text()

    # Every job now runs exactly once on the remaining nodes...
    ledger = Ledger()
    start_reverse_workers(workers, [node(cluster, "n2")], func, ledger)
    expected = [p.encode() for p in payloads] + [p.encode() for _, p in local]
    assert ledger.wait_assigned(len(expected), 30), len(ledger)
    wait_cluster_idle(core(cluster), func)
    assert ledger.runs() == Counter({p: 1 for p in expected})
    # ... and n8's store kept none of them: restarted, it replays nothing.
    n8.launch()
    n8.wait_ready()  # /readyz: replay is over
    assert status(n8.host_port).get(func, (0, 0, 0))[0] == 0
    wait_cluster_idle(core(cluster), func)
    assert ledger.runs() == Counter({p: 1 for p in expected})


@pytest.mark.timeout(90)
def test_queued_background_jobs_move_to_a_node_that_joins(
    cluster: Cluster, extra: Callable[..., ClusterNode], workers: Callable[..., ReverseWorker]
) -> None:
    before = cluster.wait_converged(CORE)
    four = [*CORE, "n9"]
    func = "rebalance.fn"
    # Queued before n9 exists, owned by n9 once it does.
    moving = cluster.uniques_owned_by("n9", four, 20, "rebalance")
    items = [(u, f"rebalance-payload-{i}") for i, u in enumerate(moving)]
    handles = submit_bg(node(cluster, "n1"), func, items)
    assert {owner_in(h) for h in handles} <= set(CORE)

    n9 = extra("n9")
    cluster.wait_converged(four, after=before)
    wait_for_status(n9.host_port, func, total=len(items), running=0)
    for n in core(cluster):
        assert status(n.host_port).get(func, (0, 0, 0))[0] == 0, n.node_id
    # Coalescing holds across the move: the same unique lands on the job n9
    # was handed.
    again = submit_bg(node(cluster, "n2"), func, [(moving[0], "ignored")])
    assert owner_in(again[0]) == "n9"
    wait_for_status(n9.host_port, func, total=len(items))

    ledger = Ledger()
    start_reverse_workers(workers, [node(cluster, "n3")], func, ledger)
    assert ledger.wait_assigned(len(items), 30), len(ledger)
    wait_cluster_idle([*core(cluster), n9], func)
    assert ledger.runs() == Counter({p.encode(): 1 for _, p in items})


def burst_around(nodes: Sequence[ClusterNode], func: str, change: Callable[[], None],
                 before: int = 3000, after: int = 3000) -> list[bytes]:
    """Pipeline background submits through ``nodes`` (one thread each, 50 in
    flight) and call ``change`` once ``before`` were acknowledged; stop
    ``after`` acknowledgements later. Returns the acknowledged payloads (the
    unique is the payload)."""
    acked: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submit_from(n: ClusterNode) -> None:
        i = 0
        with RawClient(n.host_port, timeout=20) as c:
            while not stop.is_set():
                batch = [f"{func}-{n.node_id}-{i + k}" for k in range(50)]
                c.send_raw(b"".join(pack(T.SUBMIT_JOB_BG, join(func, p, p)) for p in batch))
                for p in batch:
                    if c.recv().ptype == T.JOB_CREATED:
                        with lock:
                            acked.append(p.encode())
                i += 50

    threads = [threading.Thread(target=submit_from, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) >= before, 30, what=f"{before} acknowledged submits")
        change()
        done = len(acked)
        wait_until(lambda: len(acked) >= done + after, 30, what=f"{after} more")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    return acked


def run_each_once(cluster: Cluster, workers: Callable[..., ReverseWorker], func: str,
                  acked: list[bytes], nodes: Sequence[ClusterNode]) -> None:
    ledger = Ledger()
    start_reverse_workers(workers, [node(cluster, "n1"), node(cluster, "n2")], func, ledger)
    assert ledger.wait_assigned(len(acked), 60), (len(ledger), len(acked))
    wait_cluster_idle(nodes, func, timeout=30)
    runs = ledger.runs()
    assert {p for p in acked if runs[p] != 1} == set(), "acknowledged jobs not run exactly once"
    assert max(runs.values()) == 1, "a job ran twice"


@pytest.mark.timeout(120)
def test_scale_in_during_a_background_burst_loses_and_repeats_nothing(
    cluster: Cluster, extra: Callable[..., ClusterNode], workers: Callable[..., ReverseWorker]
) -> None:
    """Submitters keep pipelining background jobs through the core nodes
    (a quarter of them owned by n10) while n10 is stopped with SIGTERM."""
    before = cluster.wait_converged(CORE)
    n10 = extra("n10")
    cluster.wait_converged([*CORE, "n10"], after=before)

    def scale_in() -> None:
        n10.send_signal(signal.SIGTERM)
        wait_until(lambda: not n10.running, 20, what="n10 to exit after SIGTERM")

    acked = burst_around(core(cluster), "scalein", scale_in)
    assert n10.stop() == 0
    assert "handed to their new owners" in n10.log_text()
    run_each_once(cluster, workers, "scalein", acked, core(cluster))


@pytest.mark.timeout(120)
def test_scale_out_during_a_background_burst_loses_and_repeats_nothing(
    cluster: Cluster, extra: Callable[..., ClusterNode], workers: Callable[..., ReverseWorker]
) -> None:
    """The same while n11 joins and starts owning a quarter of the keys."""
    before = cluster.wait_converged(CORE)
    joined: list[ClusterNode] = []

    def scale_out() -> None:
        joined.append(extra("n11"))
        cluster.wait_converged([*CORE, "n11"], after=before)

    acked = burst_around(core(cluster), "scaleout", scale_out)
    assert _counter(joined[0], "gearmesh_submitted_total") > 0  # it did become an owner
    run_each_once(cluster, workers, "scaleout", acked, [*core(cluster), *joined])


@pytest.mark.timeout(120)
def test_jobs_complete_once_while_workers_come_and_go_on_every_node(
    cluster: Cluster, workers: Callable[..., ReverseWorker]
) -> None:
    """Clients on every node pipeline foreground jobs while workers keep
    leaving and joining on random nodes (one replaced every 25 jobs): every
    client gets every result, and every job ran exactly once."""
    func = "churn.fn"
    ledger = Ledger()
    nodes = core(cluster)
    current = start_reverse_workers(workers, nodes, func, ledger, per_node=2)
    pushed_before = sum(_counter(n, "gearmesh_pushed_total") for n in nodes)
    per_client = 300
    results: dict[str, dict[str, tuple[bytes, bytes]]] = {}
    errors: list[BaseException] = []

    def client(n: ClusterNode) -> None:
        items = [(f"churn-{n.node_id}-{i}", f"churn:{n.node_id}:{i}") for i in range(per_client)]
        try:
            results[n.node_id] = run_jobs(n, func, items, timeout=90)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    rng = random.Random(7)
    replaced = 0
    total = per_client * len(nodes)
    while any(t.is_alive() for t in threads) and len(ledger) < total:
        if not ledger.wait_assigned(min(total, (replaced + 1) * 25), 30):
            break
        leaving = current.pop(rng.randrange(len(current)))
        leaving.stop()
        current.append(workers(rng.choice(nodes), func, ledger))
        replaced += 1
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert replaced >= 10, replaced
    for n in nodes:
        for u, (_, result) in results[n.node_id].items():
            i = u.rsplit("-", 1)[1]
            assert result == f"churn:{n.node_id}:{i}"[::-1].encode()
    expected = {f"churn:{n.node_id}:{i}".encode() for n in nodes for i in range(per_client)}
    assert ledger.runs() == Counter({p: 1 for p in expected})
    # Owners ran out of local workers and pushed jobs to other nodes' workers.
    wait_until(lambda: sum(_counter(n, "gearmesh_pushed_total") for n in nodes) > pushed_before,
               5, what="the pushed counters to show pushes")
