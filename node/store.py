"""Durable background jobs.

The seam the job manager writes through is :class:`Store`: ``add`` a job and
be called back once it is durable, ``remove`` it when it is done, ``load``
everything back on start. Two implementations:

* :class:`MemoryStore` — nothing is kept (gearmand's default);
* :class:`SqliteStore` — one SQLite database in WAL mode. A writer thread
  group-commits: everything that arrived while the previous transaction was
  being written goes into the next one, so an idle node commits at once and a
  busy one commits thousands of jobs per transaction. The event loop never
  waits on the disk; callbacks come back to it through ``post``.

Records are msgpack: ``[function, unique, priority, payload, when, reducer]``
keyed by the job id (which is also the number in its handle). ``add`` takes
any object with those attributes (the job manager hands over its jobs as they
are) and passes it back to ``done``: nothing is built per job on the event loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import msgpack

log = logging.getLogger("gearmesh.store")

Done = Callable[[BaseException | None], None]
Post = Callable[[Callable[[], None]], object]


class Record(Protocol):
    """What the store keeps of a job."""

    @property
    def id(self) -> int: ...
    @property
    def function(self) -> bytes: ...
    @property
    def unique(self) -> bytes: ...
    @property
    def priority(self) -> int: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def when(self) -> int: ...
    @property
    def reducer(self) -> bytes: ...


R = TypeVar("R", bound=Record)
# Told once the record is durable (None) or could not be made so (the error).
Added = Callable[[R, BaseException | None], None]


class StoredJob(NamedTuple):
    id: int
    function: bytes
    unique: bytes
    priority: int
    payload: bytes
    when: int
    reducer: bytes


class StoreError(Exception):
    """The store cannot be opened or read; the node must not start."""


class Store(Protocol):
    durable: bool

    def backlog(self) -> int:
        """Jobs added and not committed yet: the store's saturation."""
        ...

    def add(self, rec: R, done: Added[R]) -> None: ...

    def remove(self, job_id: int, done: Done | None = None) -> None:
        """Forget a finished job; ``done`` (if given) once that is durable."""
        ...

    def load(self) -> Iterator[StoredJob]: ...

    def next_id(self) -> int: ...

    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing: background jobs are lost when the process exits."""

    durable = False

    def backlog(self) -> int:
        return 0

    def add(self, rec: R, done: Added[R]) -> None:
        done(rec, None)

    def remove(self, job_id: int, done: Done | None = None) -> None:
        if done is not None:
            done(None)

    def load(self) -> Iterator[StoredJob]:
        return iter(())

    def next_id(self) -> int:
        return 1

    def close(self) -> None:
        pass


SYNC_MODES = {"always": "FULL", "batch": "NORMAL", "never": "OFF"}
_MAX_BATCH = 20000  # bounds one transaction's latency under a flood
# sqlite3 releases the GIL around every sqlite3_step and must take it back
# afterwards; while the event loop runs Python code that wait lasts up to the
# switch interval. executemany steps once per row, so a 256-row commit took
# 20-30 ms instead of 0.3 ms: the writer issues few, multi-row statements.
_BLOCK = 512  # rows per statement (bounded by SQLITE_LIMIT_VARIABLE_NUMBER too)
_STEP = 16  # larger statements are padded to a multiple of this: few distinct SQL texts


def _padded(n: int) -> int:
    return n if n <= _STEP else -(-n // _STEP) * _STEP


def _chunks(n: int, block: int) -> Iterator[tuple[int, int, int]]:
    """(start, rows, statement rows) covering ``n`` rows: full blocks, then one
    padded statement for the rest, so that only a few dozen SQL texts are ever
    prepared and all of them stay in the connection's statement cache."""
    for start in range(0, n, block):
        rows = min(block, n - start)
        yield start, rows, _padded(rows)


@functools.cache
def _insert_sql(rows: int) -> str:
    return "INSERT OR REPLACE INTO jobs (id, rec) VALUES " + ",".join(["(?,?)"] * rows)


@functools.cache
def _delete_sql(rows: int) -> str:
    return "DELETE FROM jobs WHERE id IN (" + ",".join(["?"] * rows) + ")"


def _statements(sql_for: Callable[[int], str], values: list[int | bytes], width: int,
                block: int) -> Iterator[tuple[str, list[int | bytes]]]:
    """``values`` (``width`` per row) as statements of at most ``block`` rows,
    the last padded by repeating its last row: inserting or deleting a row
    twice in one statement is the same as once."""
    for start, rows, size in _chunks(len(values) // width, block):
        args = values[width * start:width * (start + rows)]
        args += args[-width:] * (size - rows)
        yield sql_for(size), args


class CommitStats(NamedTuple):
    jobs: int
    seconds: float


class SqliteStore:
    durable = True

    def __init__(self, path: Path, post: Post, fsync: str = "batch", recover: bool = False,
                 max_bytes: int = 0, on_commit: Callable[[CommitStats], None] | None = None,
                 defer: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.path = path
        self._post = post
        # With `defer` (the event loop's call_soon), adds made in one loop
        # iteration reach the writer together: one lock round trip, not one each.
        self._defer = defer
        self._local: list[tuple[Any, Added[Any]]] = []
        self._local_removes: list[int] = []
        self._local_waiters: list[Done] = []
        self._on_commit = on_commit
        self._sync = SYNC_MODES[fsync]
        self._max_bytes = max_bytes
        self._lock = threading.Condition()
        self._adds: list[tuple[Any, Added[Any]]] = []
        self._removes: list[int] = []
        self._remove_waiters: list[Done] = []
        self._closing = False
        self._failing = False
        self._next_id = 1
        try:
            self._check(path)
        except StoreError:
            if not recover:
                raise
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("moving unreadable store %s aside to %s", path, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            self._check(path)
        self._thread = threading.Thread(target=self._run, name="gearmesh-store", daemon=True)
        self._thread.start()

    # -- opening

    def _connect(self) -> sqlite3.Connection:
        # Room for every padded statement size the writer uses (see _STEP).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               cached_statements=256)
        # Larger pages: a group commit of short rows touches fewer of them
        # (only takes effect when the file is created).
        conn.execute("PRAGMA page_size=16384")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        # Checkpoint less often (WAL up to ~64 MiB): each checkpoint stalls
        # the commit that triggers it.
        conn.execute("PRAGMA wal_autocheckpoint=4000")
        if self._max_bytes:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(16, self._max_bytes // page)}")
        return conn

    def _check(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, rec BLOB)")
                conn.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER)")
                ok = conn.execute("PRAGMA quick_check").fetchone()[0]
                if ok != "ok":
                    raise StoreError(f"{path}: integrity check failed: {ok}")
                row = conn.execute("SELECT max(id) FROM jobs").fetchone()
                meta = conn.execute("SELECT v FROM meta WHERE k='next_id'").fetchone()
                self._next_id = max((row[0] or 0) + 1, meta[0] if meta else 1)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: cannot read the job store: {e}") from e
        except OSError as e:
            raise StoreError(f"{path}: cannot open the job store: {e}") from e

    def next_id(self) -> int:
        return self._next_id

    def load(self) -> Iterator[StoredJob]:
        """Stream the stored jobs in submission order; rows that do not decode
        are an error, never silently skipped."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            cur = conn.execute("SELECT id, rec FROM jobs ORDER BY id")
            while True:
                rows = cur.fetchmany(5000)
                if not rows:
                    break
                for jid, rec in rows:
                    try:
                        f, u, prio, payload, when, reducer = msgpack.unpackb(rec)
                        yield StoredJob(jid, f, u, prio, payload, when, reducer)
                    except Exception as e:
                        raise StoreError(f"{self.path}: job {jid} is unreadable: {e}") from e
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot read the job store: {e}") from e
        finally:
            conn.close()

    # -- writing

    def backlog(self) -> int:
        # Unlocked reads of two list lengths: a gauge, exact enough.
        return len(self._local) + len(self._adds)

    def add(self, rec: R, done: Added[R]) -> None:
        if self._defer is not None:
            if not self._local and not self._local_removes:
                self._defer(self._hand_over)
            self._local.append((rec, done))
            return
        with self._lock:
            self._adds.append((rec, done))
            if len(self._adds) == 1 and not self._removes:
                self._lock.notify()

    def _hand_over(self) -> None:
        adds, removes, waiters = self._local, self._local_removes, self._local_waiters
        if not adds and not removes:
            return
        self._local = []
        self._local_removes = []
        self._local_waiters = []
        with self._lock:
            self._adds.extend(adds)
            self._removes.extend(removes)
            self._remove_waiters.extend(waiters)
            self._lock.notify()

    def remove(self, job_id: int, done: Done | None = None) -> None:
        if self._defer is not None:
            if not self._local and not self._local_removes:
                self._defer(self._hand_over)
            self._local_removes.append(job_id)
            if done is not None:
                self._local_waiters.append(done)
            return
        with self._lock:
            self._removes.append(job_id)
            if done is not None:
                self._remove_waiters.append(done)
            if len(self._removes) == 1 and not self._adds:
                self._lock.notify()

    def close(self) -> None:
        self._hand_over()
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = self._connect()
        pack = msgpack.Packer(use_bin_type=True).pack
        block = min(_BLOCK, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 2)
        high = self._next_id  # above every id ever added
        # What the meta row promises durably. Until a job is deleted its row is
        # its own record of the id, so only transactions that delete write meta.
        meta = 0
        while True:
            with self._lock:
                while not self._adds and not self._removes and not self._closing:
                    self._lock.wait()
                if not self._adds and not self._removes:
                    break
                adds = self._adds[:_MAX_BATCH]
                del self._adds[:_MAX_BATCH]
                removes = self._removes
                self._removes = []
                waiters = self._remove_waiters
                self._remove_waiters = []
            t0 = time.perf_counter()
            err: BaseException | None = None
            try:
                statements: list[tuple[str, list[int | bytes]]] = []
                if adds:
                    params: list[int | bytes] = []
                    for r, _ in adds:
                        params += (r.id, pack([r.function, r.unique, r.priority, r.payload, r.when,
                                               r.reducer]))
                    statements += _statements(_insert_sql, params, 2, block)
                    # Not the last add: a foreground job made background carries an older id.
                    high = max(high, max(r.id for r, _ in adds) + 1)
                if removes:
                    statements += _statements(_delete_sql, list(removes), 1, block)
                    if high > meta:
                        statements.append(
                            ("INSERT OR REPLACE INTO meta (k, v) VALUES ('next_id', ?)", [high]))
                if len(statements) == 1:
                    # A lone statement is a transaction of its own: no BEGIN and
                    # COMMIT steps, each another wait for the GIL.
                    conn.execute(*statements[0])
                else:
                    conn.execute("BEGIN")
                    for sql, args in statements:
                        conn.execute(sql, args)
                    conn.execute("COMMIT")
                if removes:
                    meta = high
                if self._failing:
                    self._failing = False
                    log.warning("job store %s is writable again", self.path)
            except Exception as e:
                err = e
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if not self._failing:
                    log.error("job store %s: commit failed: %s", self.path, e)
                self._failing = True
                # Deletes must not be lost (a completed job would run again after a
                # restart): keep them for the next transaction.
                with self._lock:
                    self._removes[:0] = removes
                if not adds:
                    self._lock_wait_backoff()
            stats = CommitStats(len(adds), time.perf_counter() - t0)
            if adds or waiters or self._on_commit:
                # A failed delete is retried with the next transaction, but
                # whoever waits on it is not held up for ever: it hears the error.
                self._post(self._callback(adds, waiters, err, stats))
        conn.close()

    def _lock_wait_backoff(self) -> None:
        # Only deletes are failing (disk full): don't spin on them.
        with self._lock:
            self._lock.wait(timeout=0.5)

    def _callback(self, adds: list[tuple[Any, Added[Any]]], waiters: list[Done],
                  err: BaseException | None, stats: CommitStats) -> Callable[[], None]:
        on_commit = self._on_commit

        def deliver() -> None:
            for rec, added in adds:
                added(rec, err)
            for done in waiters:
                done(err)
            if on_commit is not None:
                on_commit(stats)
        return deliver


def open_store(kind: str, data_dir: Path, post: Post, fsync: str = "batch",
               recover: bool = False, max_bytes: int = 0,
               on_commit: Callable[[CommitStats], None] | None = None,
               defer: Callable[[Callable[[], None]], object] | None = None) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        os.makedirs(data_dir, exist_ok=True)
        return SqliteStore(data_dir / "jobs.sqlite3", post, fsync=fsync, recover=recover,
                           max_bytes=max_bytes, on_commit=on_commit, defer=defer)
    raise ValueError(f"unknown queue type {kind!r} (expected sqlite or memory)")
