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
keyed by the job id (which is also the number in its handle).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import msgpack

log = logging.getLogger("gearmesh.store")

Done = Callable[[BaseException | None], None]
Post = Callable[[Callable[[], None]], object]


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

    def add(self, rec: StoredJob, done: Done) -> None: ...

    def remove(self, job_id: int, done: Done | None = None) -> None:
        """Forget a finished job; ``done`` (if given) once that is durable."""
        ...

    def load(self) -> Iterator[StoredJob]: ...

    def next_id(self) -> int: ...

    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing: background jobs are lost when the process exits."""

    durable = False

    def add(self, rec: StoredJob, done: Done) -> None:
        done(None)

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
        self._local: list[tuple[StoredJob, Done]] = []
        self._local_removes: list[int] = []
        self._local_waiters: list[Done] = []
        self._on_commit = on_commit
        self._sync = SYNC_MODES[fsync]
        self._max_bytes = max_bytes
        self._lock = threading.Condition()
        self._adds: list[tuple[StoredJob, Done]] = []
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
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
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

    def add(self, rec: StoredJob, done: Done) -> None:
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
        high = self._next_id
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
                conn.execute("BEGIN")
                if adds:
                    rows = [(r.id, pack([r.function, r.unique, r.priority, r.payload, r.when,
                                         r.reducer])) for r, _ in adds]
                    conn.executemany("INSERT OR REPLACE INTO jobs (id, rec) VALUES (?, ?)", rows)
                    # Not the last add: a foreground job made background carries an older id.
                    top = max(r.id for r, _ in adds) + 1
                    if top > high:
                        high = top
                        conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('next_id', ?)",
                                     (high,))
                if removes:
                    conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in removes])
                conn.execute("COMMIT")
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

    def _callback(self, adds: list[tuple[StoredJob, Done]], waiters: list[Done],
                  err: BaseException | None, stats: CommitStats) -> Callable[[], None]:
        on_commit = self._on_commit

        def deliver() -> None:
            for _, done in adds:
                done(err)
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
