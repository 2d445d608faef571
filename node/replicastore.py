"""Copies of other nodes' background jobs, kept on this node's disk.

In a cluster with replicas, every durable background job lives on its
owner's store (node/store.py) and, as a *copy*, on one other node. This
module keeps those copies: one SQLite database in WAL mode beside the job
store (``replicas.sqlite3``), rows keyed by (origin node, origin job id).

It is a store of bytes, not of jobs: nothing here runs a copy. The cluster
layer writes copies as they arrive, deletes them when their owner finished
the job, and reads them back (``load``) when their origin's lease expired
and this node promotes them to jobs of its own.

Group commit, as in the job store: a writer thread takes everything queued
since its last transaction and writes it in one, in few multi-row
statements (one SQLite step per row gives the GIL up once per row, which is
what made the job store slow beside a busy loop). ``sync(done)`` is called
back, on the event loop through ``post``, once everything queued before it
is durable: the replica acknowledges a whole peer batch with one callback.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from node.store import SYNC_MODES, StoreError

log = logging.getLogger("gearmesh.store")

Post = Callable[[Callable[[], None]], object]
Synced = Callable[[BaseException | None], None]

_MAX_BATCH = 20000  # operations per transaction, bounding one commit's latency
_PUT_ROWS = 256  # rows per INSERT (3 variables each, under SQLite's 999 floor)
_DEL_ROWS = 256  # rows per DELETE (2 variables each)


class Copy(NamedTuple):
    origin: str
    id: int
    rec: bytes  # the owner's msgpack record, as node/store.py writes it


def _insert_sql(rows: int) -> str:
    return "INSERT OR REPLACE INTO copies (origin, id, rec) VALUES " + ",".join(
        ["(?,?,?)"] * rows)


def _delete_sql(rows: int) -> str:
    return "DELETE FROM copies WHERE (origin, id) IN (VALUES " + ",".join(
        ["(?,?)"] * rows) + ")"


class ReplicaStore:
    """Copies by (origin, id); ``put``/``delete`` queue, ``sync`` confirms."""

    def __init__(self, path: Path, post: Post, fsync: str = "batch") -> None:
        self.path = path
        self._post = post
        self._sync = SYNC_MODES[fsync]
        self._lock = threading.Condition()
        self._puts: list[tuple[str, int, bytes]] = []
        self._dels: list[tuple[str, int]] = []
        self._syncs: list[Synced] = []
        self._drops: list[str] = []
        self._promoted: list[tuple[str, int]] = []
        self._forget: list[str] = []
        self._closing = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS copies (origin TEXT NOT NULL, "
                             "id INTEGER NOT NULL, rec BLOB, PRIMARY KEY (origin, id)) "
                             "WITHOUT ROWID")
                # Tombstones: copies promoted to jobs of this node, remembered
                # until their origin comes back and asks which they were.
                conn.execute("CREATE TABLE IF NOT EXISTS promoted (origin TEXT NOT NULL, "
                             "id INTEGER NOT NULL, PRIMARY KEY (origin, id)) WITHOUT ROWID")
            finally:
                conn.close()
        except (sqlite3.DatabaseError, OSError) as e:
            raise StoreError(f"{path}: cannot open the replica store: {e}") from e
        self._thread = threading.Thread(target=self._run, name="gearmesh-replicas",
                                        daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        return conn

    # -- writing (event loop) ------------------------------------------

    def put(self, origin: str, jid: int, rec: bytes) -> None:
        with self._lock:
            self._puts.append((origin, jid, rec))

    def put_many(self, origin: str, rows: list[tuple[int, bytes]]) -> None:
        with self._lock:
            self._puts.extend((origin, jid, rec) for jid, rec in rows)

    def delete_many(self, origin: str, ids: list[int]) -> None:
        with self._lock:
            self._dels.extend((origin, jid) for jid in ids)

    def promoted_many(self, origin: str, ids: list[int]) -> None:
        """These copies are jobs of this node now: delete them and remember
        their ids (in the same transaction) for when their origin returns."""
        with self._lock:
            self._promoted.extend((origin, jid) for jid in ids)

    def forget_promoted(self, origin: str) -> None:
        with self._lock:
            self._forget.append(origin)

    def promoted_ids(self, origin: str) -> list[int]:
        conn = self._connect()
        try:
            rows = conn.execute("SELECT id FROM promoted WHERE origin=? ORDER BY id",
                                (origin,)).fetchall()
            return [int(r[0]) for r in rows]
        finally:
            conn.close()

    def drop_origin(self, origin: str) -> None:
        """Forget every copy of ``origin``'s jobs (before any later put)."""
        with self._lock:
            self._drops.append(origin)

    def sync(self, done: Synced) -> None:
        """``done(err)`` once every put and delete queued so far is durable."""
        with self._lock:
            self._syncs.append(done)
            self._lock.notify()

    def backlog(self) -> int:
        return len(self._puts) + len(self._dels)

    # -- reading --------------------------------------------------------

    def origins(self) -> dict[str, int]:
        """Origin node → how many copies of its jobs are here."""
        conn = self._connect()
        try:
            rows = conn.execute("SELECT origin, count(*) FROM copies GROUP BY origin").fetchall()
            return {str(o): int(n) for o, n in rows}
        finally:
            conn.close()

    def load(self, origin: str) -> Iterator[Copy]:
        """The copies of ``origin``'s jobs in its submission order (job id)."""
        conn = self._connect()
        try:
            cur = conn.execute("SELECT id, rec FROM copies WHERE origin=? ORDER BY id",
                               (origin,))
            while rows := cur.fetchmany(5000):
                for jid, rec in rows:
                    yield Copy(origin, int(jid), bytes(rec))
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot read the replica store: {e}") from e
        finally:
            conn.close()

    # -- the writer thread ---------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = self._connect()
        failing = False
        while True:
            with self._lock:
                while not self._syncs and not self._closing:
                    self._lock.wait()
                if not (self._syncs or self._puts or self._dels or self._drops
                        or self._promoted or self._forget):
                    break
                puts, self._puts = self._puts[:_MAX_BATCH], self._puts[_MAX_BATCH:]
                dels, self._dels = self._dels, []
                drops, self._drops = self._drops, []
                promoted, self._promoted = self._promoted, []
                forget, self._forget = self._forget, []
                # A sync covers what was queued before it: with puts left over
                # for the next transaction, their syncs wait for it too.
                if self._puts:
                    syncs: list[Synced] = []
                else:
                    syncs, self._syncs = self._syncs, []
            err: BaseException | None = None
            t0 = time.perf_counter()
            try:
                conn.execute("BEGIN")
                for origin in drops:
                    conn.execute("DELETE FROM copies WHERE origin=?", (origin,))
                for origin in forget:
                    conn.execute("DELETE FROM promoted WHERE origin=?", (origin,))
                for i in range(0, len(puts), _PUT_ROWS):
                    chunk = puts[i:i + _PUT_ROWS]
                    conn.execute(_insert_sql(len(chunk)), [v for row in chunk for v in row])
                for i in range(0, len(dels), _DEL_ROWS):
                    chunk2 = dels[i:i + _DEL_ROWS]
                    conn.execute(_delete_sql(len(chunk2)), [v for row in chunk2 for v in row])
                for i in range(0, len(promoted), _DEL_ROWS):
                    chunk3 = promoted[i:i + _DEL_ROWS]
                    args = [v for row in chunk3 for v in row]
                    conn.execute(_delete_sql(len(chunk3)), args)
                    conn.execute("INSERT OR IGNORE INTO promoted (origin, id) VALUES "
                                 + ",".join(["(?,?)"] * len(chunk3)), args)
                conn.execute("COMMIT")
                if failing:
                    failing = False
                    log.warning("replica store %s is writable again", self.path)
            except Exception as e:
                err = e
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if not failing:
                    log.error("replica store %s: commit failed: %s", self.path, e)
                failing = True
                # Deletes must not be lost (a finished job would be promoted
                # after a failover): retry them with the next transaction.
                with self._lock:
                    self._dels[:0] = dels
                    self._drops[:0] = drops
                    self._promoted[:0] = promoted
                    self._forget[:0] = forget
            log.debug("replica commit: %d puts, %d deletes in %.1f ms", len(puts), len(dels),
                      (time.perf_counter() - t0) * 1000)
            if syncs:
                self._post(self._deliver(syncs, err))
        conn.close()

    @staticmethod
    def _deliver(syncs: list[Synced], err: BaseException | None) -> Callable[[], None]:
        def deliver() -> None:
            for done in syncs:
                done(err)
        return deliver
