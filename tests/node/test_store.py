"""SqliteStore (node/store.py): commit callbacks, group commit, load, failures.

``post`` puts callbacks on a queue.Queue that the test drains on its own
thread, the way the node hands them to its event loop. Waiting is always on an
event (a queue item, a threading.Event) with a timeout, never a sleep. To hold
the writer "in a commit" deterministically, a post can block: the writer
thread calls post right after a transaction, so while post blocks the writer
cannot start the next transaction, and everything added meanwhile has to go
into the next one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.store import CommitStats, MemoryStore, SqliteStore, StoredJob, StoreError, open_store

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # seconds: an upper bound on any single wait, never a sleep


def rec(jid: int, payload: bytes = b"x", **kw) -> StoredJob:
    fields = {"function": b"f", "unique": b"u%d" % jid, "priority": 1, "payload": payload,
              "when": 0, "reducer": b""}
    fields.update(kw)
    return StoredJob(jid, **fields)


class Loop:
    """Stands in for the event loop: callbacks posted by the writer thread."""

    def __init__(self) -> None:
        self.q: queue.Queue[Callable[[], None]] = queue.Queue()
        self.commits: list[CommitStats] = []
        self.gate: threading.Event | None = None  # when set up, the next post blocks
        self.in_post = threading.Event()

    def post(self, cb: Callable[[], None]) -> None:
        gate = self.gate
        if gate is not None:
            self.gate = None
            self.in_post.set()
            assert gate.wait(WAIT), "test never released the writer"
        self.q.put(cb)

    def on_commit(self, stats: CommitStats) -> None:
        self.commits.append(stats)

    def run_one(self) -> None:
        self.q.get(timeout=WAIT)()

    def run_until(self, cond: Callable[[], bool]) -> None:
        while not cond():
            self.run_one()

    def hold_next_post(self) -> threading.Event:
        gate = threading.Event()
        self.in_post.clear()
        self.gate = gate
        return gate


class Done:
    def __init__(self) -> None:
        self.results: list[BaseException | None] = []

    def __call__(self, rec: object, err: BaseException | None) -> None:
        self.results.append(err)


@pytest.fixture
def loop() -> Loop:
    return Loop()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobs.sqlite3"


@pytest.fixture
def opened(loop: Loop, path: Path) -> Iterator[Callable[..., SqliteStore]]:
    stores: list[SqliteStore] = []

    def make(**kw) -> SqliteStore:
        s = SqliteStore(path, loop.post, on_commit=loop.on_commit, **kw)
        stores.append(s)
        return s
    yield make
    for s in stores:
        s.close()


def reopen_load(path: Path) -> list[StoredJob]:
    s = SqliteStore(path, lambda cb: None)
    try:
        return list(s.load())
    finally:
        s.close()


# =========================================================================== basics


def test_add_is_acknowledged_after_commit(opened, loop, path) -> None:
    store = opened()
    seen: list[list[StoredJob]] = []

    def done(got: StoredJob, err: BaseException | None) -> None:
        assert err is None and got is r  # the very record that was added comes back
        seen.append(list(store.load()))  # already committed when we are told

    r = rec(1, b"pay\0load")
    store.add(r, done)
    loop.run_until(lambda: bool(seen))
    assert seen == [[r]]
    assert reopen_load(path) == [r]


def test_done_runs_only_through_post(opened, loop) -> None:
    store = opened()
    threads: list[str] = []
    store.add(rec(1), lambda _, err: threads.append(threading.current_thread().name))
    loop.run_until(lambda: bool(threads))
    assert threads == [threading.current_thread().name]


def test_load_returns_records_in_id_order_with_all_fields(opened, loop, path) -> None:
    store = opened()
    records = [
        StoredJob(5, b"resize", b"img1", 2, b"\x00\xff" * 10, 0, b""),
        StoredJob(2, b"f", b"", 0, b"", 1_900_000_000, b"reducer"),
        StoredJob(9, b"f\0g", b"-", 1, bytes(range(256)), 42, b""),
    ]
    done = Done()
    for r in records:
        store.add(r, done)
    loop.run_until(lambda: len(done.results) == 3)
    assert done.results == [None, None, None]
    expected = sorted(records)
    assert list(store.load()) == expected
    store.close()
    assert reopen_load(path) == expected
    assert all(type(f) is bytes for r in reopen_load(path)
               for f in (r.function, r.unique, r.payload, r.reducer))


def test_remove(opened, loop, path) -> None:
    store = opened()
    done = Done()
    for i in (1, 2, 3):
        store.add(rec(i), done)
    loop.run_until(lambda: len(done.results) == 3)
    store.remove(2)
    store.remove(77)  # unknown id: harmless
    store.close()  # flushes what is queued
    assert [r.id for r in reopen_load(path)] == [1, 3]


def test_close_flushes_pending_adds(opened, loop, path) -> None:
    store = opened()
    done = Done()
    for i in range(1, 51):
        store.add(rec(i), done)
    store.close()
    loop.run_until(lambda: len(done.results) == 50)
    assert done.results == [None] * 50
    assert [r.id for r in reopen_load(path)] == list(range(1, 51))


def test_next_id_of_a_new_store_is_one(opened) -> None:
    assert opened().next_id() == 1


def test_next_id_survives_an_empty_table(opened, loop, path) -> None:
    store = opened()
    done = Done()
    for i in range(1, 6):
        store.add(rec(i), done)
    loop.run_until(lambda: len(done.results) == 5)
    for i in range(1, 6):
        store.remove(i)
    store.close()
    again = SqliteStore(path, loop.post)
    try:
        assert list(again.load()) == []
        assert again.next_id() == 6
    finally:
        again.close()


def test_next_id_is_above_every_id_ever_stored(opened, loop, path) -> None:
    # One transaction whose adds are not in id order (a foreground job made
    # background later carries an older id than jobs added before it).
    store = opened()
    done = Done()
    gate = loop.hold_next_post()
    store.add(rec(1), done)
    assert loop.in_post.wait(WAIT)
    store.add(rec(7), done)
    store.add(rec(3), done)
    gate.set()
    loop.run_until(lambda: len(done.results) == 3)
    for i in (1, 3, 7):
        store.remove(i)
    store.close()
    again = SqliteStore(path, loop.post)
    try:
        assert again.next_id() == 8
    finally:
        again.close()


def test_next_id_follows_the_highest_stored_job(opened, loop, path) -> None:
    store = opened()
    done = Done()
    store.add(rec(41), done)
    loop.run_until(lambda: len(done.results) == 1)
    store.close()
    again = SqliteStore(path, loop.post)
    try:
        assert again.next_id() == 42
    finally:
        again.close()


# =========================================================================== group commit


def test_adds_during_a_commit_share_the_next_transaction(opened, loop) -> None:
    store = opened()
    done = Done()
    gate = loop.hold_next_post()
    store.add(rec(1), done)
    assert loop.in_post.wait(WAIT)  # transaction 1 is written; the writer is busy
    for i in range(2, 502):
        store.add(rec(i), done)
    gate.set()
    loop.run_until(lambda: len(done.results) == 501)
    assert done.results == [None] * 501
    assert [c.jobs for c in loop.commits] == [1, 500]
    assert all(c.seconds >= 0 for c in loop.commits)
    assert [r.id for r in store.load()] == list(range(1, 502))


def test_large_transactions_span_several_statements(opened, loop, path) -> None:
    # Rows go in multi-row statements of up to 512 rows, the last one padded
    # with copies of its last row (and, for deletes, of its last id): every
    # row must arrive exactly once, a later add of an id still winning.
    store = opened()
    done = Done()
    gate = loop.hold_next_post()
    store.add(rec(1), done)
    assert loop.in_post.wait(WAIT)
    for i in range(2, 1203):
        store.add(rec(i), done)
    store.add(rec(1202, b"last"), done)
    gate.set()
    loop.run_until(lambda: len(done.results) == 1203)
    assert done.results == [None] * 1203
    stored = list(store.load())
    assert [r.id for r in stored] == list(range(1, 1203))
    assert stored[-1].payload == b"last"
    for i in range(2, 1190):
        store.remove(i)
    store.close()
    assert [r.id for r in reopen_load(path)] == [1, *range(1190, 1203)]


def test_commit_stats_reported_for_remove_only_transactions(opened, loop) -> None:
    store = opened()
    done = Done()
    store.add(rec(1), done)
    loop.run_until(lambda: len(loop.commits) == 1)
    store.remove(1)
    loop.run_until(lambda: len(loop.commits) == 2)
    assert [c.jobs for c in loop.commits] == [1, 0]
    assert list(store.load()) == []


def test_defer_hands_one_iterations_adds_and_removes_over_together(loop, path) -> None:
    deferred: list[Callable[[], None]] = []
    store = SqliteStore(path, loop.post, on_commit=loop.on_commit, defer=deferred.append)
    try:
        done = Done()
        store.add(rec(1), done)
        assert len(deferred) == 1
        deferred.pop()()
        loop.run_until(lambda: len(done.results) == 1)
        for i in (2, 3, 4):
            store.add(rec(i), done)
        store.remove(1)
        assert len(deferred) == 1  # one hand-over per loop iteration, not one per call
        assert [r.id for r in store.load()] == [1]  # nothing reached the writer yet
        deferred.pop()()
        loop.run_until(lambda: len(done.results) == 4)
        assert done.results == [None] * 4
        assert [c.jobs for c in loop.commits] == [1, 3]
        assert [r.id for r in store.load()] == [2, 3, 4]
        store.remove(2)  # a remove alone schedules a hand-over too
        assert len(deferred) == 1
        deferred.pop()()
        loop.run_until(lambda: len(loop.commits) == 3)
        assert [r.id for r in store.load()] == [3, 4]
    finally:
        store.close()


def test_close_hands_over_what_was_deferred(loop, path) -> None:
    deferred: list[Callable[[], None]] = []
    store = SqliteStore(path, loop.post, defer=deferred.append)
    done = Done()
    store.add(rec(1), done)
    store.add(rec(2), done)
    store.close()  # the deferred hand-over never ran: close must not lose the adds
    loop.run_until(lambda: len(done.results) == 2)
    assert done.results == [None, None]
    assert [r.id for r in reopen_load(path)] == [1, 2]


# =========================================================================== unreadable files


def test_corrupt_file_raises_store_error_naming_the_file(path, loop) -> None:
    path.parent.mkdir(parents=True)
    junk = b"this is not a database\n" * 300
    path.write_bytes(junk)
    with pytest.raises(StoreError) as info:
        SqliteStore(path, loop.post)
    assert str(path) in str(info.value)
    assert path.read_bytes() == junk  # left alone without recover


def test_corrupt_file_is_moved_aside_with_recover(path, loop) -> None:
    path.parent.mkdir(parents=True)
    junk = b"\x01\x02garbage" * 1000
    path.write_bytes(junk)
    store = SqliteStore(path, loop.post, recover=True)
    try:
        aside = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".corrupt-")]
        assert len(aside) == 1 and aside[0].read_bytes() == junk
        assert list(store.load()) == []
        done = Done()
        store.add(rec(1), done)
        loop.run_until(lambda: bool(done.results))
        assert done.results == [None]
    finally:
        store.close()
    assert [r.id for r in reopen_load(path)] == [1]


def test_unopenable_path_raises_store_error(tmp_path: Path, loop) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StoreError) as info:
        SqliteStore(blocker / "jobs.sqlite3", loop.post)
    assert str(blocker / "jobs.sqlite3") in str(info.value)


def test_undecodable_record_is_an_error_on_load(opened, loop, path) -> None:
    import sqlite3
    store = opened()
    done = Done()
    store.add(rec(1), done)
    loop.run_until(lambda: bool(done.results))
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO jobs (id, rec) VALUES (2, x'c1c1c1')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as info:
        list(store.load())
    assert str(path) in str(info.value) and "job 2" in str(info.value)


# =========================================================================== full disk


def test_full_store_fails_the_commit_and_keeps_removes(opened, loop, path) -> None:
    store = opened(max_bytes=64 * 1024)
    done = Done()
    store.add(rec(1), done)
    loop.run_until(lambda: len(done.results) == 1)
    assert done.results == [None]

    # Hold the writer so the remove and the oversized add share one transaction.
    gate = loop.hold_next_post()
    store.add(rec(2), done)
    assert loop.in_post.wait(WAIT)
    store.remove(1)
    store.remove(2)
    big = Done()
    store.add(rec(3, b"B" * 300_000), big)
    gate.set()
    loop.run_until(lambda: bool(big.results))
    assert isinstance(big.results[0], Exception)  # the error reaches the submitter
    # The removes of the failed transaction are retried, not lost.
    loop.run_until(lambda: len(loop.commits) >= 4 and loop.commits[-1].jobs == 0)
    store.close()
    assert reopen_load(path) == []


def test_store_recovers_after_a_failed_commit(opened, loop, path) -> None:
    store = opened(max_bytes=64 * 1024)
    big, small = Done(), Done()
    store.add(rec(1, b"B" * 300_000), big)
    loop.run_until(lambda: bool(big.results))
    assert isinstance(big.results[0], Exception)
    store.add(rec(2), small)
    loop.run_until(lambda: bool(small.results))
    assert small.results == [None]
    assert [r.id for r in store.load()] == [2]


# =========================================================================== others


def test_memory_store_keeps_nothing() -> None:
    store = MemoryStore()
    done = Done()
    store.add(rec(1), done)
    assert done.results == [None]
    store.remove(1)
    assert list(store.load()) == [] and store.next_id() == 1 and store.durable is False


def test_open_store_kinds(tmp_path: Path, loop) -> None:
    assert isinstance(open_store("memory", tmp_path, loop.post), MemoryStore)
    s = open_store("sqlite", tmp_path / "d", loop.post)
    try:
        assert isinstance(s, SqliteStore) and s.durable
        assert (tmp_path / "d" / "jobs.sqlite3").exists()
    finally:
        s.close()
    with pytest.raises(ValueError):
        open_store("mysql", tmp_path, loop.post)


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_fsync_modes_commit(path, loop, fsync: str) -> None:
    store = SqliteStore(path, loop.post, fsync=fsync)
    try:
        done = Done()
        store.add(rec(1), done)
        loop.run_until(lambda: bool(done.results))
        assert done.results == [None]
    finally:
        store.close()
