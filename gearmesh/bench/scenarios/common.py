"""Pieces several scenarios share: connecting a process's share of workers
and submitters, stopping them, and merging per-process results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from gearmesh.bench import wire
from gearmesh.bench.config import Config
from gearmesh.bench.engine import ChildRuntime, Control
from gearmesh.bench.owner import SALT_SEP, OwnedKeys
from gearmesh.bench.roles import Handler, JobSource, SubmitStats, Submitter, Worker, WorkerStats
from gearmesh.bench.roles import worker_servers as _worker_servers
from gearmesh.bench.wire import Server


async def connect_workers(
    rt: ChildRuntime,
    handler: Handler,
    stats: WorkerStats,
    work_s: float = 0.0,
    record_runs: bool = False,
) -> list[Worker]:
    cfg = rt.cfg
    func = cfg.func.encode()
    workers = []
    for w in rt.mine(cfg.workers):
        worker = Worker(func, handler, work_s, stats, record_runs)
        await worker.connect(_worker_servers(cfg.worker_servers, w, cfg.placement))
        workers.append(worker)
    return workers


async def stop_workers(workers: list[Worker], timeout: float) -> int:
    """Ask every worker to stop once idle; returns how many did not in time."""
    for w in workers:
        w.request_stop()
    pending = [w.finished for w in workers if not w.finished.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    late = sum(1 for w in workers if not w.finished.done())
    for w in workers:
        for conn in w.conns:
            if conn.transport is not None:
                conn.transport.close()
    return late


async def connect_submitters(
    rt: ChildRuntime,
    source: JobSource,
    prefix: bytes,
    stats: SubmitStats,
    stopping: Callable[[], bool],
) -> list[Submitter]:
    cfg = rt.cfg
    func = cfg.func.encode()
    # Salting for --owner costs a few hashes per job: done here, before the
    # timed part, for this process's block of job numbers.
    first = source.next
    keys = owned_keys(cfg, (prefix + b"%d" % i for i in range(first, source.stop)), end=b".")
    subs = []
    for c in rt.mine(cfg.conns):
        server = client_server(cfg, c)
        sub = await wire.open_connection(
            server,
            lambda: Submitter(source, func, prefix, cfg.payload_size, cfg.inflight, stats,
                              stopping, send_unique=cfg.unique == "job", keys=keys,
                              first=first),
        )
        subs.append(sub)
    return subs


def client_server(cfg: Config, n: int) -> Server:
    """The server client (or submitter) number n connects to."""
    return cfg.client_servers[n % len(cfg.client_servers)]


def owner_keys(cfg: Config) -> OwnedKeys | None:
    return None if cfg.owner is None else OwnedKeys(cfg.owner, cfg.nodes)


def owned_keys(cfg: Config, bases: Iterable[bytes], end: bytes = b"") -> list[bytes] | None:
    """With --owner, the unique id for each base key (salted so that the
    owner owns it, then `end`); None without --owner."""
    owned = owner_keys(cfg)
    if owned is None:
        return None
    return [owned.key(b, end) for b in bases]


def job_number(key: bytes, plen: int) -> int:
    """The job number in a key "<prefix><n>[~salt]." (see owned_keys)."""
    return int(key[plen:-1].partition(SALT_SEP)[0])


async def submit_all(subs: list[Submitter]) -> float:
    """Run the submitters to completion; returns the time the last reply came."""
    for s in subs:
        s.start()
    await asyncio.gather(*(s.finished for s in subs))
    end = time.monotonic()
    for s in subs:
        if s.transport is not None:
            s.transport.close()
    return end


class DrainHandler:
    """Checks each job's data against what the submitter derived from its key
    ("<run id>-<job number>."), and marks the job number in a bitmap so that
    the coordinator can find jobs run twice (across processes too) or never.

    The key is the unique id (with --owner, "<run id>-<job number>~<salt>.");
    with --unique none the server never sees it, so it is read back from the
    start of the data, which repeats it."""

    def __init__(self, prefix: bytes, payload_size: int, njobs: int) -> None:
        self.prefix = prefix
        self.plen = len(prefix)
        self.size = payload_size
        self.njobs = njobs
        self.bitmap = bytearray((njobs + 7) // 8)
        self.bad_payload = 0
        self.foreign = 0  # keys that are not ours
        self.unverified = 0  # --unique none with data too short to hold the key
        self.dup_local = 0
        self.last = 0.0

    def __call__(self, unique: bytes, data: bytes) -> bytes:
        self.last = time.monotonic()
        key = unique
        if not key:
            head, dot, _ = data.partition(b".")
            if not dot:
                self.unverified += 1
                return b""
            key = head + dot
        if data != wire.payload_for(key, self.size):
            self.bad_payload += 1
        if not key.startswith(self.prefix):
            self.foreign += 1
            return b""
        try:
            i = job_number(key, self.plen)
        except ValueError:
            self.foreign += 1
            return b""
        if not 0 <= i < self.njobs:
            self.foreign += 1
            return b""
        byte, bit = i >> 3, 1 << (i & 7)
        if self.bitmap[byte] & bit:
            self.dup_local += 1
        else:
            self.bitmap[byte] |= bit
        return b""


def merge_bitmaps(maps: Iterable[bytes]) -> tuple[int, int]:
    """(distinct jobs seen, jobs seen by more than one process)."""
    seen = 0
    twice = 0
    for m in maps:
        if not m:
            continue
        v = int.from_bytes(m, "little")
        twice |= seen & v
        seen |= v
    return seen.bit_count(), twice.bit_count()


def total(results: list[dict[str, Any]], key: str) -> int:
    return int(sum(r.get(key, 0) for r in results))


def throttled(fn: Callable[[], bool], every_s: float) -> Callable[[], bool]:
    """fn() at most every every_s; admin queries in a 20 Hz loop would
    themselves load the server being measured."""
    last = [0.0, False]

    def call() -> bool:
        now = time.monotonic()
        if now - float(last[0]) >= every_s:
            last[0] = now
            last[1] = fn()
        return bool(last[1])

    return call


def queue_empty(ctl: Control) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return all((s.total if s else 0) == 0 for s in ctl.status(ctl.cfg.func))
        except OSError:
            return False

    return check


def worker_result(stats: WorkerStats) -> dict[str, Any]:
    return {
        "w_done": stats.done,
        "w_errors": stats.errors,
        "w_unexpected": stats.unexpected,
        "w_poll_wakeups": stats.poll_wakeups,
        "w_lost_conns": stats.lost_conns,
        "w_first_error": stats.first_error,
    }


def worker_checks(results: list[dict[str, Any]]) -> tuple[bool, str]:
    errors = total(results, "w_errors")
    unexpected = total(results, "w_unexpected")
    lost = total(results, "w_lost_conns")
    first = next((r["w_first_error"] for r in results if r.get("w_first_error")), "")
    ok = errors == 0 and unexpected == 0 and lost == 0
    detail = f"errors={errors} unexpected={unexpected} lost_connections={lost}"
    if first:
        detail += f" first_error={first!r}"
    return ok, detail
