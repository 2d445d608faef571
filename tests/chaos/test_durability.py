"""Background jobs survive kill -9: the durable queue, tested on real processes.

Every test runs ``gearmesh serve --queue sqlite`` as a subprocess, talks to it
over real sockets, kills it with SIGKILL and starts it again on the same data
directory. Jobs carry unique payloads, and workers write every payload they
get into a :class:`~tests.support.ledger.Ledger`, which is what proves
"exactly once" and "at least once".

Synchronisation is on events only: replies, ECHO round trips, admin
``status`` polls and reads of the store file, each with a deadline.
"""

from __future__ import annotations

import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from node.protocol import HEADER, HEADER_SIZE  # noqa: E402
from tests.support.admin import status, wait_for_status  # noqa: E402
from tests.support.ledger import Ledger, LedgerWorker  # noqa: E402
from tests.support.rawclient import RES, RawClient, T, join, pack  # noqa: E402
from tests.support.servers import GEARMESH, ServerProcess  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

STORE_FILE = "jobs.sqlite3"


# -- fixtures ----------------------------------------------------------------

NodeFactory = Callable[..., ServerProcess]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start a durable gearmesh node whose data dir outlives kill -9.

    Restart with ``srv.kill9(); srv.start()``: same work dir, same data dir,
    a fresh port.
    """
    started: list[ServerProcess] = []

    def factory(*extra: str) -> ServerProcess:
        workdir = tmp_path / f"node{len(started)}"
        workdir.mkdir()
        srv = ServerProcess(["--queue", "sqlite", *extra], kind=GEARMESH, workdir=workdir)
        started.append(srv)
        return srv.start()

    yield factory
    for srv in started:
        srv.stop()
        # Captured, so shown only when the test failed.
        print(f"--- {srv!r} log ---\n{srv.log_text()}")


def data_dir(srv: ServerProcess) -> Path:
    return srv.workdir / "data"


def restart_after_kill9(srv: ServerProcess) -> None:
    srv.kill9()
    assert not srv.running
    # start() returns once the node answers ECHO, and the node opens its port
    # only after replaying the store: no half-restored queue is visible.
    srv.start()


def stored_ids(srv: ServerProcess) -> set[int]:
    """Job ids in the node's store file right now (read by a second SQLite
    connection, as any reader of a WAL database may)."""
    conn = sqlite3.connect(data_dir(srv) / STORE_FILE, timeout=5)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}
    finally:
        conn.close()


def handle_id(handle: bytes) -> int:
    return int(handle.rsplit(b":", 1)[1])


def get_status(conn: RawClient, handle: bytes) -> tuple[bool, bool]:
    """(known, running) for a handle, via GET_STATUS."""
    reply = conn.request(T.GET_STATUS, handle)
    assert (reply.magic, reply.ptype) == (RES, T.STATUS_RES), reply
    args = reply.args()
    assert args[0] == handle
    return args[1] == b"1", args[2] == b"1"


def total(srv: ServerProcess, func: str) -> int:
    return status(srv.host_port).get(func, (0, 0, 0))[0]


def start_workers(srv: ServerProcess, func: bytes, ledger: Ledger, n: int) -> list[LedgerWorker]:
    workers = [LedgerWorker(srv.host_port, [func], ledger) for _ in range(n)]
    for w in workers:
        w.start()
    return workers


def stop_workers(workers: Sequence[LedgerWorker]) -> None:
    for w in workers:
        w.stop()
    for w in workers:
        w.join(10)
        assert not w.is_alive(), "worker thread did not stop"
        assert w.error is None, f"worker failed: {w.error!r}"


def drain(srv: ServerProcess, func: str, ledger: Ledger, expect: int,
          workers: int = 2, timeout: float = 20.0) -> None:
    """Run ledger workers until ``expect`` jobs ran and the function is empty."""
    ws = start_workers(srv, func.encode(), ledger, workers)
    try:
        assert ledger.wait_assigned(expect, timeout), (
            f"only {len(ledger)} of {expect} jobs ran; status {status(srv.host_port)}")
        wait_for_status(srv.host_port, func, total=0, running=0, timeout=timeout)
    finally:
        stop_workers(ws)


# -- a pipelined background submitter -------------------------------------


class Progress:
    """A counter other threads can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.value = 0

    def add(self, n: int) -> None:
        with self._cond:
            self.value += n
            self._cond.notify_all()

    def wait_for(self, target: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.value >= target, timeout)


class Submitter(threading.Thread):
    """One connection that keeps ``window`` SUBMIT_JOB_BG packets in flight.

    Replies come back in request order, so the i-th reply answers the i-th
    submit. It stops quietly when the server dies.
    """

    def __init__(self, address: tuple[str, int], func: bytes, payloads: Sequence[bytes],
                 progress: Progress, window: int = 64, ptype: int = T.SUBMIT_JOB_BG,
                 unique_is_payload: bool = False) -> None:
        super().__init__(name="submitter", daemon=True)
        self.address = address
        self.payloads = list(payloads)
        self.packets = [pack(ptype, join(func, p if unique_is_payload else b"", p))
                        for p in self.payloads]
        self.progress = progress
        self.window = window
        self.sent = 0
        self.acked: dict[bytes, bytes] = {}  # payload -> handle
        self.errors: list[tuple[bytes, bytes]] = []  # (payload, ERROR payload)
        self.unexpected: list[tuple[int, bytes]] = []

    def run(self) -> None:
        n = len(self.packets)
        received = 0
        buf = bytearray()
        try:
            with socket.create_connection(self.address, timeout=15) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while received < n:
                    if self.sent < n and self.sent - received < self.window:
                        top = min(n, received + self.window)
                        # Counted before the write: a packet may be in flight
                        # (and committed) even if sendall fails half way.
                        chunk = b"".join(self.packets[self.sent:top])
                        self.sent = top
                        sock.sendall(chunk)
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                    while len(buf) >= HEADER_SIZE:
                        _, ptype, size = HEADER.unpack_from(buf)
                        end = HEADER_SIZE + size
                        if len(buf) < end:
                            break
                        payload = bytes(buf[HEADER_SIZE:end])
                        del buf[:end]
                        mine = self.payloads[received]
                        received += 1
                        if ptype == T.JOB_CREATED:
                            self.acked[mine] = payload
                            self.progress.add(1)
                        elif ptype == T.ERROR:
                            self.errors.append((mine, payload))
                        else:
                            self.unexpected.append((ptype, payload))
        except OSError:
            return  # killed server: reset, broken pipe or EOF


def burst(address: tuple[str, int], func: bytes, payloads: Sequence[bytes], connections: int,
          progress: Progress, window: int = 64) -> list[Submitter]:
    """Split ``payloads`` over ``connections`` pipelined submitters and start them."""
    share = [payloads[i::connections] for i in range(connections)]
    subs = [Submitter(address, func, part, progress, window) for part in share]
    for s in subs:
        s.start()
    return subs


def join_all(threads: Sequence[threading.Thread], timeout: float = 20.0) -> None:
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), f"{t.name} still running"


# -- kill -9 during a submit burst ----------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fsync", ["batch", "always", "never"])
def test_kill9_during_submit_burst_acknowledged_jobs_run_exactly_once(
        node: NodeFactory, fsync: str) -> None:
    # kill -9 leaves the OS page cache intact, so every --fsync mode must keep
    # every acknowledged job (fsync only matters for power loss).
    srv = node("--fsync", fsync)
    func = b"burst"
    connections, per_conn = 4, 2000
    payloads = [f"job-{i:06d}".encode() for i in range(connections * per_conn)]
    progress = Progress()
    subs = burst(srv.host_port, func, payloads, connections, progress, window=128)
    # Kill once a third has been acknowledged: the rest is in flight or unsent.
    assert progress.wait_for(len(payloads) // 3, 20), f"only {progress.value} acknowledged"
    srv.kill9()
    join_all(subs)

    acked: dict[bytes, bytes] = {}
    sent: set[bytes] = set()
    for s in subs:
        assert not s.errors and not s.unexpected, (s.errors[:3], s.unexpected[:3])
        acked.update(s.acked)
        sent.update(s.payloads[:s.sent])
    assert len(acked) < len(sent), "the kill did not catch any submit in flight"

    srv.start()
    replayed = total(srv, "burst")
    # Every acknowledged job came back; unacknowledged ones may have.
    assert len(acked) <= replayed <= len(sent)

    ledger = Ledger()
    drain(srv, "burst", ledger, replayed)
    runs = ledger.runs()
    assert ledger.duplicates() == {}, "a job ran twice"
    missing = set(acked) - set(runs)
    assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {sorted(missing)[:5]}"
    assert set(runs) <= sent, "a job nobody submitted ran"
    assert len(runs) == replayed
    # Replayed jobs keep the handle their JOB_CREATED promised.
    wrong = {p: (h, ledger.handles[p]) for p, h in acked.items() if ledger.handles[p] != h}
    assert not wrong, f"handles changed over the restart, e.g. {list(wrong.items())[:3]}"


# -- kill -9 while workers drain --------------------------------------------------


class DrainKill:
    """What a kill -9 in the middle of draining left behind."""

    def __init__(self, acked: set[bytes], before: Ledger, after: Ledger,
                 stored_at_kill: set[int]) -> None:
        self.acked = acked
        self.before = before
        self.after = after
        self.stored_at_kill = stored_at_kill
        self.again = before.ran() & after.ran()


def copy_store_ids(srv: ServerProcess, scratch: Path) -> set[int]:
    """Job ids committed in a dead node's store, read from a copy so that the
    node's own files (its WAL above all) stay exactly as the kill left them."""
    scratch.mkdir()
    for suffix in ("", "-wal"):
        src = data_dir(srv) / (STORE_FILE + suffix)
        if src.exists():
            shutil.copyfile(src, scratch / (STORE_FILE + suffix))
    conn = sqlite3.connect(scratch / STORE_FILE)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}
    finally:
        conn.close()


def kill_while_draining(node: NodeFactory, scratch: Path) -> DrainKill:
    srv = node()
    func = b"drain"
    payloads = [f"d-{i:05d}".encode() for i in range(3000)]
    progress = Progress()
    subs = burst(srv.host_port, func, payloads, 2, progress)
    join_all(subs)
    acked = set().union(*(s.acked for s in subs))
    assert len(acked) == len(payloads)

    before = Ledger()
    workers = start_workers(srv, func, before, 3)
    assert before.wait_confirmed(len(payloads) // 3, 20), "workers made no progress"
    srv.kill9()
    join_all(workers)
    assert all(w.error is None for w in workers), [w.error for w in workers]
    assert before.duplicates() == {}, "a job ran twice before the kill"
    stored_at_kill = copy_store_ids(srv, scratch)

    srv.start()
    after = Ledger()
    drain(srv, "drain", after, total(srv, "drain"))
    assert after.duplicates() == {}, "a job ran twice after the restart"
    lost = acked - (before.ran() | after.ran())
    assert not lost, f"{len(lost)} acknowledged jobs never ran, e.g. {sorted(lost)[:5]}"
    return DrainKill(acked, before, after, stored_at_kill)


@pytest.mark.timeout(60)
def test_kill9_while_draining_every_acknowledged_job_runs_at_least_once(
        node: NodeFactory, tmp_path: Path) -> None:
    r = kill_while_draining(node, tmp_path / "copy")
    # A job may run again only if its completion was not durable at the kill:
    # it was running (no reply yet proved the server took its WORK_COMPLETE),
    # or its delete was still uncommitted in the store.
    not_durable = r.before.in_doubt() | {
        p for p in r.before.ran() if handle_id(r.before.handles[p]) in r.stored_at_kill}
    assert r.again <= not_durable, sorted(r.again - not_durable)[:5]
    # Nothing that had finished durably came back.
    durably_done = r.before.ran() - not_durable
    assert not (durably_done & r.after.ran())


@pytest.mark.timeout(60)
def test_kill9_while_draining_only_running_jobs_run_again(
        node: NodeFactory, tmp_path: Path) -> None:
    r = kill_while_draining(node, tmp_path / "copy")
    in_doubt = r.before.in_doubt()
    rerun_after_completion = r.again - in_doubt
    assert not rerun_after_completion, (
        f"{len(rerun_after_completion)} jobs whose WORK_COMPLETE the server had processed "
        f"ran again after the restart (running at the kill: {len(in_doubt)}), e.g. "
        f"{sorted(rerun_after_completion)[:5]}")


# -- replay: order, priority, epoch, handles, completed jobs -----------------------


PRIO_SUBMIT = {0: T.SUBMIT_JOB_HIGH_BG, 1: T.SUBMIT_JOB_BG, 2: T.SUBMIT_JOB_LOW_BG}


@pytest.mark.timeout(40)
def test_replay_keeps_order_priority_epoch_and_handles(node: NodeFactory) -> None:
    srv = node()
    rng = random.Random(7)
    c = RawClient(srv.host_port)

    # Mixed priorities, submitted in a shuffled order.
    ordered: list[tuple[int, int, bytes, bytes]] = []  # (prio, seq, payload, handle)
    for seq in range(60):
        prio = rng.randrange(3)
        payload = f"p{prio}-{seq:03d}".encode()
        ordered.append((prio, seq, payload, c.submit("ordered", "", payload, PRIO_SUBMIT[prio])))

    # A job that completes before the kill must not come back.
    done_handle = c.submit("done", "done-1", "done-payload", T.SUBMIT_JOB_BG)
    # JOB_CREATED for a background job is sent after its commit.
    assert handle_id(done_handle) in stored_ids(srv)
    w = RawClient(srv.host_port)
    w.can_do("done")
    assignment = w.grab()
    assert assignment.ptype == T.JOB_ASSIGN_UNIQ and assignment.args()[0] == done_handle
    w.send(T.WORK_COMPLETE, done_handle, "ok")
    assert w.sync() == []
    wait_until(lambda: handle_id(done_handle) not in stored_ids(srv), 10,
               what="the completed job's delete to be committed")

    # An epoch job a few seconds out.
    epoch = int(time.time()) + 4
    c.send(T.SUBMIT_JOB_EPOCH, "later", "", str(epoch), "at-epoch")
    epoch_handle = c.expect(T.JOB_CREATED).payload
    c.close()
    w.close()

    restart_after_kill9(srv)
    c = RawClient(srv.host_port)
    for _, _, _, handle in ordered:
        assert get_status(c, handle) == (True, False), handle
    assert get_status(c, epoch_handle) == (True, False)
    assert get_status(c, done_handle) == (False, False), "a completed job came back"
    assert total(srv, "done") == 0

    # HIGH before NORMAL before LOW, FIFO within each, handles unchanged.
    w = RawClient(srv.host_port)
    w.can_do("ordered")
    got = []
    for _ in ordered:
        a = w.grab()
        assert a.ptype == T.JOB_ASSIGN_UNIQ, a
        handle, _, _, payload = a.args()
        got.append((payload, handle))
        w.send(T.WORK_COMPLETE, handle, "")
    assert w.grab().ptype == T.NO_JOB
    want = [(p, h) for _, _, p, h in sorted(ordered, key=lambda j: (j[0], j[1]))]
    assert got == want

    # The epoch job is still delayed, then fires on time.
    e = RawClient(srv.host_port)
    e.can_do("later")
    early = time.time() < epoch - 0.5  # margin for the grab's round trip
    a = e.grab()
    if a.ptype == T.NO_JOB:
        e.send(T.PRE_SLEEP)
        e.expect(T.NOOP, timeout=max(0.0, epoch - time.time()) + 5)
        a = e.grab()
    else:
        assert not early, "epoch job ran early"
    # Any assignment was decided before this reply arrived (same clock).
    fired = time.time()
    assert a.ptype == T.JOB_ASSIGN_UNIQ and a.args()[0] == epoch_handle
    assert a.args()[3] == b"at-epoch"
    assert epoch <= fired < epoch + 2, f"fired {fired - epoch:+.3f}s from its epoch"
    e.send(T.WORK_COMPLETE, epoch_handle, "")
    assert e.sync() == []
    for conn in (c, w, e):
        conn.close()


# -- disk full ---------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_disk_full_rejects_background_submits_and_keeps_serving(node: NodeFactory) -> None:
    # Disk full is simulated with a size cap on the store (SQLite's
    # max_page_count, which fails writes with "database or disk is full").
    # A read-only data dir would be the other classic failure, but the tests
    # run as root, which ignores file permissions, so chmod cannot make one.
    srv = node("--store-max-bytes", "64K")
    c = RawClient(srv.host_port)
    acked: dict[bytes, bytes] = {}
    error: bytes | None = None
    for i in range(2000):
        payload = f"full-{i:05d}-".encode() + b"x" * 1000
        c.send(T.SUBMIT_JOB_BG, "fill", "", payload)
        reply = c.recv()
        if reply.ptype == T.JOB_CREATED:
            acked[payload] = reply.payload
            continue
        assert reply.ptype == T.ERROR, reply
        error = reply.payload
        break
    assert error is not None, "the store never filled up"
    assert acked, "the store was full from the start"
    code, text = error.split(b"\0", 1)
    assert code == b"QUEUE_ERROR", error
    assert b"full" in text, error
    # Still full: the next background submits fail too, and the node answers.
    for kind in (T.SUBMIT_JOB_BG, T.SUBMIT_JOB_HIGH_BG, T.SUBMIT_JOB_LOW_BG):
        c.send(kind, "fill", "", b"more" * 300)
        reply = c.recv()
        assert reply.ptype == T.ERROR and reply.args()[0] == b"QUEUE_ERROR", reply
    assert total(srv, "fill") == len(acked)

    # Foreground jobs live in memory and keep working.
    w = RawClient(srv.host_port)
    w.can_do("fg")
    handle = c.submit("fg", "", "hello", T.SUBMIT_JOB)
    a = w.grab()
    assert a.ptype == T.JOB_ASSIGN_UNIQ and a.args()[0] == handle
    w.send(T.WORK_COMPLETE, handle, "world")
    assert c.expect(T.WORK_COMPLETE).args() == [handle, b"world"]
    c.close()
    w.close()

    restart_after_kill9(srv)
    assert total(srv, "fill") == len(acked)
    ledger = Ledger()
    drain(srv, "fill", ledger, len(acked))
    assert ledger.runs() == {p: 1 for p in acked}
    assert all(ledger.handles[p] == h for p, h in acked.items())

    # The drained jobs freed their pages: background submits work again.
    c = RawClient(srv.host_port)
    wait_until(lambda: not stored_ids(srv), 10, what="the deletes to be committed")
    assert c.submit("fill", "", "after", T.SUBMIT_JOB_BG)
    c.close()


# -- corrupt store --------------------------------------------------------------


def junk_file(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite database\n" * 300)


def damage_pages(path: Path) -> None:
    """Keep the first page (header and schema), overwrite the next two with junk."""
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big") or 65536  # the header says the page size
    assert len(data) >= 3 * page, (len(data), page)
    with open(path, "r+b") as f:
        f.seek(page)
        f.write(b"\xde\xad\xbe\xef" * (2 * page // 4))


def serve_argv(srv: ServerProcess, *extra: str) -> list[str]:
    d = data_dir(srv)
    return [sys.executable, "-m", "gearmesh", "serve", "-L", "127.0.0.1", "-p", "0",
            "--http-port", "0", "--queue", "sqlite", "--data-dir", str(d), *extra]


@pytest.mark.timeout(40)
@pytest.mark.parametrize("corrupt", [junk_file, damage_pages], ids=["junk", "damaged-pages"])
def test_corrupt_store_refuses_to_start_unless_recover(
        node: NodeFactory, corrupt: Callable[[Path], None]) -> None:
    srv = node()
    c = RawClient(srv.host_port)
    for i in range(300):
        c.send(T.SUBMIT_JOB_BG, "old", "", f"old-{i:04d}-".encode() + b"y" * 200)
    for _ in range(300):
        c.expect(T.JOB_CREATED)
    c.close()
    rc = srv.stop()
    assert rc == 0, (rc, srv.log_text())  # a clean stop checkpoints the WAL into the file
    store = data_dir(srv) / STORE_FILE
    corrupt(store)
    damaged = store.read_bytes()

    run = subprocess.run(serve_argv(srv), capture_output=True, timeout=30, cwd=srv.workdir)
    assert run.returncode == 2, run
    assert str(store).encode() in run.stderr, run.stderr
    assert store.read_bytes() == damaged, "a refused start must not touch the store"

    srv.extra_args.append("--store-recover")
    srv.start()
    aside = [p for p in data_dir(srv).iterdir() if p.name.startswith(STORE_FILE + ".corrupt")]
    assert [p.read_bytes() for p in aside] == [damaged], aside
    assert total(srv, "old") == 0
    c = RawClient(srv.host_port)
    handle = c.submit("new", "", "fresh", T.SUBMIT_JOB_BG)
    c.close()
    # The fresh store is durable like any other.
    restart_after_kill9(srv)
    c = RawClient(srv.host_port)
    assert get_status(c, handle) == (True, False)
    c.close()


# -- coalescing against replayed jobs ---------------------------------------------


@pytest.mark.timeout(30)
def test_unique_coalesces_onto_replayed_job(node: NodeFactory) -> None:
    srv = node()
    c = RawClient(srv.host_port)
    first = c.submit("co", "order-42", "first", T.SUBMIT_JOB_BG)
    c.close()

    restart_after_kill9(srv)
    c = RawClient(srv.host_port)
    again = c.submit("co", "order-42", "second", T.SUBMIT_JOB_BG)
    assert again == first
    assert total(srv, "co") == 1
    c.close()

    ledger = Ledger()
    drain(srv, "co", ledger, 1)
    assert ledger.runs() == {b"first": 1}
    assert ledger.handles[b"first"] == first


@pytest.mark.timeout(60)
def test_kill9_during_coalescing_burst_each_unique_runs_once(node: NodeFactory) -> None:
    # Three connections submit the same uniques at once, so many submits
    # coalesce onto a job whose commit is still in flight when the node dies.
    srv = node()
    func = b"cburst"
    payloads = [f"u-{i:05d}".encode() for i in range(2000)]
    progress = Progress()
    subs = []
    for k in range(3):
        mine = payloads[k * 400:] + payloads[:k * 400]  # different starting points
        subs.append(Submitter(srv.host_port, func, mine, progress, window=128,
                              unique_is_payload=True))
    for sub in subs:
        sub.start()
    assert progress.wait_for(len(payloads), 20), f"only {progress.value} acknowledged"
    srv.kill9()
    join_all(subs)

    handles: dict[bytes, set[bytes]] = {}
    for sub in subs:
        assert not sub.errors and not sub.unexpected, (sub.errors[:3], sub.unexpected[:3])
        for p, h in sub.acked.items():
            handles.setdefault(p, set()).add(h)
    assert sum(len(sub.acked) for sub in subs) < sum(sub.sent for sub in subs), (
        "the kill did not catch any submit in flight")
    split = {p: h for p, h in handles.items() if len(h) > 1}
    assert not split, f"one unique got several handles, e.g. {list(split.items())[:3]}"

    srv.start()
    ledger = Ledger()
    drain(srv, "cburst", ledger, total(srv, "cburst"))
    assert ledger.duplicates() == {}, "a unique ran twice"
    missing = set(handles) - ledger.ran()
    assert not missing, f"{len(missing)} acknowledged uniques lost, e.g. {sorted(missing)[:5]}"
    assert all(ledger.handles[p] == next(iter(h)) for p, h in handles.items())


@pytest.mark.timeout(30)
def test_handle_of_acknowledged_job_is_not_reissued_after_restart(node: NodeFactory) -> None:
    srv = node()
    fg = RawClient(srv.host_port)
    fg_handle = fg.submit("reuse", "U", "foreground", T.SUBMIT_JOB)
    bg = RawClient(srv.host_port)
    # One write, so both reach the store in one group commit: a new background
    # job, then a background submit that makes the older foreground job durable.
    bg.send_raw(pack(T.SUBMIT_JOB_BG, join("reuse", "V", "background"))
                + pack(T.SUBMIT_JOB_BG, join("reuse", "U", "joins-foreground")))
    bg_handle = bg.expect(T.JOB_CREATED).payload
    assert bg.expect(T.JOB_CREATED).payload == fg_handle
    ledger = Ledger()
    drain(srv, "reuse", ledger, 2, workers=1)
    assert fg.expect(T.WORK_COMPLETE).args()[0] == fg_handle
    wait_until(lambda: not stored_ids(srv), 10, what="the deletes to be committed")
    fg.close()
    bg.close()

    restart_after_kill9(srv)
    c = RawClient(srv.host_port)
    new_handles = [c.submit("other", "", f"new-{i}", T.SUBMIT_JOB_BG) for i in range(3)]
    assert bg_handle not in new_handles, "an acknowledged handle was issued again"
    assert get_status(c, bg_handle) == (False, False), "a finished job's handle is known again"
    c.close()
