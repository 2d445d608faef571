"""Connection roles shared by the scenarios: a pipelined background submitter
and a worker.

Both are callback-driven state machines on top of PacketProtocol rather than
coroutines: a coroutine plus a future per reply roughly doubles the
generator's CPU cost per job, and that cost is what limits how fast a server
can be measured from a 2-core machine.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gearmesh.bench import wire
from gearmesh.bench.wire import PacketProtocol, Server
from node import protocol as P

# A worker's job handler: (unique, data) -> result data for WORK_COMPLETE.
Handler = Callable[[bytes, bytes], bytes]


class JobSource:
    """Hands out job numbers from a block to the connections of one process.

    The connections pull from one shared pool instead of each owning a fixed
    share, so a slow connection does not leave the run waiting on its quota.
    """

    def __init__(self, start: int, stop: int) -> None:
        self.next = start
        self.stop = stop

    def take(self, n: int) -> range:
        lo = self.next
        hi = min(self.stop, lo + n)
        self.next = hi
        return range(lo, hi)

    def exhausted(self) -> bool:
        return self.next >= self.stop


@dataclass
class SubmitStats:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    unexpected: int = 0
    lost: int = 0
    first_error: str = ""


class Submitter(PacketProtocol):
    """Keeps `inflight` SUBMIT_JOB_BG requests outstanding on one connection
    and refills after every socket read with one write."""

    def __init__(
        self,
        source: JobSource,
        func: bytes,
        prefix: bytes,
        payload_size: int,
        inflight: int,
        stats: SubmitStats,
        stopping: Callable[[], bool],
        send_unique: bool = True,
        keys: Sequence[bytes] | None = None,
        first: int = 0,
    ) -> None:
        super().__init__()
        self.send_unique = send_unique
        # Precomputed unique ids (--owner), keys[i - first] for job number i;
        # None: the key is built from the number, the cheaper path.
        self.keys = keys
        self.first = first
        self.source = source
        self.func = func
        self.prefix = prefix
        self.payload_size = payload_size
        self.inflight = inflight
        self.stats = stats
        self.stopping = stopping
        self.pending = 0
        self._replies = 0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self._fill(self.inflight)
        self._check_done()

    def _fill(self, n: int) -> None:
        if self.stopping() or self.transport is None or self.transport.is_closing():
            return
        jobs = self.source.take(n)
        if not jobs:
            return
        prefix, func, size = self.prefix, self.func, self.payload_size
        mk, payload = wire.submit_packet, wire.payload_for
        parts = []
        if self.keys is not None:
            keys, first = self.keys, self.first
            for i in jobs:
                key = keys[i - first]
                parts.append(mk(P.SUBMIT_JOB_BG, func, key, payload(key, size)))
        elif self.send_unique:
            for i in jobs:
                key = prefix + b"%d." % i
                parts.append(mk(P.SUBMIT_JOB_BG, func, key, payload(key, size)))
        else:
            for i in jobs:
                key = prefix + b"%d." % i
                parts.append(mk(P.SUBMIT_JOB_BG, func, b"", payload(key, size)))
        self.pending += len(jobs)
        self.stats.sent += len(jobs)
        self.write(b"".join(parts))

    def on_packet(self, ptype: int, payload: bytes) -> None:
        if ptype == P.JOB_CREATED:
            self.stats.acked += 1
        elif ptype == P.ERROR:
            self.stats.errors += 1
            if not self.stats.first_error:
                self.stats.first_error = wire.error_text(payload)
        else:
            # Not a reply to a submit; it does not free an in-flight slot.
            self.stats.unexpected += 1
            return
        self.pending -= 1
        self._replies += 1

    def after_batch(self) -> None:
        n = self._replies
        if n:
            self._replies = 0
            self._fill(n)
        self._check_done()

    def _check_done(self) -> None:
        # Nothing in flight after a refill means the pool is empty (or the
        # run is stopping): this connection is done.
        if self.pending == 0 and not self.finished.done():
            self.finished.set_result(None)

    def on_lost(self) -> None:
        self.stats.lost += self.pending
        self.pending = 0
        if not self.finished.done():
            self.finished.set_result(None)


@dataclass
class WorkerStats:
    done: int = 0
    errors: int = 0
    unexpected: int = 0
    poll_wakeups: int = 0
    lost_conns: int = 0
    first_error: str = ""
    # (unique, assigned at, completed at), when the scenario asks for it.
    runs: list[tuple[bytes, float, float]] = field(default_factory=list)


class WorkerConn(PacketProtocol):
    def __init__(self, worker: Worker, index: int) -> None:
        super().__init__()
        self.worker = worker
        self.index = index

    def on_packet(self, ptype: int, payload: bytes) -> None:
        w = self.worker
        if ptype == P.JOB_ASSIGN_UNIQ:
            handle, _func, unique, data = payload.split(b"\0", 3)
            w.on_assign(self.index, handle, unique, data)
        elif ptype == P.NO_JOB:
            w.on_no_job(self.index)
        elif ptype == P.NOOP:
            w.on_noop(self.index)
        elif ptype == P.JOB_ASSIGN:
            handle, _func, data = payload.split(b"\0", 2)
            w.on_assign(self.index, handle, b"", data)
        elif ptype == P.ERROR:
            w.on_error(payload)
        else:
            w.stats.unexpected += 1

    def on_lost(self) -> None:
        self.worker.on_conn_lost(self.index)


class Worker:
    """One worker doing one job at a time, taking jobs from each of its
    servers in turn and sleeping (PRE_SLEEP, wait for NOOP) once all of them
    answered NO_JOB, the way libgearman's worker loop behaves."""

    # A server that never sends the NOOP would otherwise stall the run; the
    # count of wake-ups by this poll is reported, so such a server shows up.
    POLL_S = 1.0

    def __init__(
        self,
        func: bytes,
        handler: Handler,
        work_s: float,
        stats: WorkerStats,
        record_runs: bool = False,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.func = func
        self.handler = handler
        self.work_s = work_s
        self.stats = stats
        self.record_runs = record_runs
        self.conns: list[WorkerConn] = []
        self.alive: list[bool] = []
        self.awaiting: int | None = None  # connection with an unanswered GRAB
        self.cur = 0
        self.nojob = 0
        self.asleep = False
        self.sleep_gen = 0
        self.stopping = False
        self.started = False
        self.finished: asyncio.Future[None] = self.loop.create_future()

    async def connect(self, servers: list[Server]) -> None:
        for i, server in enumerate(servers):
            conn = await wire.open_connection(server, functools.partial(WorkerConn, self, i))
            self.conns.append(conn)
            self.alive.append(True)
        can_do = wire.packet(P.CAN_DO, self.func)
        for conn in self.conns:
            conn.write(can_do)

    def begin(self) -> None:
        self.started = True
        self._grab(0)

    def request_stop(self) -> None:
        self.stopping = True
        if not self.started or (self.asleep and self.awaiting is None):
            self._finish()

    def _finish(self) -> None:
        self.asleep = False
        if not self.finished.done():
            self.finished.set_result(None)

    def _next(self, i: int) -> int | None:
        n = len(self.conns)
        for step in range(1, n + 1):
            j = (i + step) % n
            if self.alive[j]:
                return j
        return None

    def _grab(self, i: int) -> None:
        if self.stopping:
            self._finish()
            return
        self.cur = i
        self.awaiting = i
        self.conns[i].write(wire.GRAB_UNIQ_PACKET)

    def on_assign(self, i: int, handle: bytes, unique: bytes, data: bytes) -> None:
        self.awaiting = None
        t0 = time.monotonic() if self.record_runs else 0.0
        result = self.handler(unique, data)
        if self.work_s > 0:
            self.loop.call_later(self.work_s, self._complete, i, handle, unique, result, t0)
        else:
            self._complete(i, handle, unique, result, t0)

    def _complete(self, i: int, handle: bytes, unique: bytes, result: bytes, t0: float) -> None:
        self.stats.done += 1
        if self.record_runs:
            self.stats.runs.append((unique, t0, time.monotonic()))
        self.nojob = 0
        if not self.alive[i]:
            # The server dropped us while we held the job; it requeues it.
            j = self._next(i)
            if j is None:
                self._finish()
            else:
                self._grab(j)
            return
        done = wire.work_complete_packet(handle, result)
        if self.stopping:
            self.conns[i].write(done)
            self._finish()
            return
        j = self._next(i)
        if j == i:
            self.cur = i
            self.awaiting = i
            self.conns[i].write(done + wire.GRAB_UNIQ_PACKET)
        else:
            self.conns[i].write(done)
            assert j is not None
            self._grab(j)

    def on_no_job(self, i: int) -> None:
        self.awaiting = None
        self.nojob += 1
        if self.stopping:
            self._finish()
            return
        alive = sum(self.alive)
        if self.nojob < alive:
            j = self._next(i)
            assert j is not None
            self._grab(j)
            return
        self.asleep = True
        self.sleep_gen += 1
        for conn, ok in zip(self.conns, self.alive, strict=True):
            if ok:
                conn.write(wire.PRE_SLEEP_PACKET)
        self.loop.call_later(self.POLL_S, self._poll, self.sleep_gen)

    def on_noop(self, i: int) -> None:
        if not self.asleep or not self.alive[i]:
            return
        self.asleep = False
        self.nojob = 0
        self._grab(i)

    def _poll(self, gen: int) -> None:
        if self.asleep and gen == self.sleep_gen and not self.stopping:
            self.stats.poll_wakeups += 1
            self.asleep = False
            self.nojob = 0
            j = self.cur if self.alive[self.cur] else self._next(self.cur)
            if j is None:
                self._finish()
            else:
                self._grab(j)

    def on_error(self, payload: bytes) -> None:
        self.stats.errors += 1
        if not self.stats.first_error:
            self.stats.first_error = wire.error_text(payload)

    def on_conn_lost(self, i: int) -> None:
        if not self.alive[i]:
            return
        self.alive[i] = False
        if self.finished.done():
            return
        self.stats.lost_conns += 1
        if not any(self.alive):
            self._finish()
            return
        if self.awaiting == i:
            self.awaiting = None
            self.nojob = 0
            j = self._next(i)
            assert j is not None
            self._grab(j)


def worker_servers(servers: tuple[Server, ...], w: int, placement: str) -> list[Server]:
    """Servers (out of the worker servers) worker number w connects to. With
    placement "all" every worker sees every one, starting at a different one
    so that the first grabs spread out."""
    n = len(servers)
    if placement == "spread":
        return [servers[w % n]]
    return [servers[(w + k) % n] for k in range(n)]
