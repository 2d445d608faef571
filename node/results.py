"""Work results: WORK_* from the worker holding a job, to the clients waiting on it.

A result for a job the worker does not hold gets the fixed reply gearmand
sends (node/replies.py). A final result (COMPLETE, FAIL, EXCEPTION) ends the
job through the manager's ``finish``, which is where its state changes; the
clients waiting on it are released here.

A handle of another node's job never gets here: node/dispatch.py forwards it.
"""

from __future__ import annotations

from collections.abc import Callable

from node import protocol as P
from node import replies as R
from node.job import Job
from node.session import Session
from node.stats import Counters


def broadcast(job: Job, data: bytes) -> None:
    listeners = job.listeners
    if listeners:
        for c in listeners:
            c.send(data)


def release_listeners(job: Job) -> None:
    """The job is over for its clients: they stop waiting on it."""
    listeners = job.listeners
    if listeners:
        for c in listeners:
            c.listening.discard(job)
    job.listeners = None


def fail_listeners(job: Job, handle: bytes) -> None:
    if job.listeners:
        broadcast(job, P.packet(P.WORK_FAIL, handle))
        release_listeners(job)


def _u32(n: int) -> int:
    return n & 0xFFFFFFFF


class WorkResults:
    def __init__(self, lookup: Callable[[bytes], Job | None], finish: Callable[[Job], None],
                 counters: Counters) -> None:
        self._lookup = lookup  # handle → this node's job, or None
        self._finish = finish  # the job leaves the server
        self.counters = counters

    def _held(self, s: Session, handle: bytes, not_found: bytes) -> Job | None:
        """The job this worker holds under ``handle``; otherwise the worker is told."""
        job = self._lookup(handle)
        if job is not None and job.worker is s:
            return job
        s.send(not_found)
        return None

    def work_status(self, s: Session, args: tuple[bytes, ...]) -> None:
        job = self._held(s, args[0], R.NOT_FOUND_RESULT)
        if job is None:
            return
        job.num = _u32(P.c_atoi(args[1]))
        job.den = _u32(P.c_atoi(args[2][:10]))
        if job.listeners:
            broadcast(job, P.packet(P.WORK_STATUS, b"\0".join(args)))

    def work_data(self, s: Session, args: tuple[bytes, ...]) -> None:
        self._pass_on(s, args, P.WORK_DATA)

    def work_warning(self, s: Session, args: tuple[bytes, ...]) -> None:
        self._pass_on(s, args, P.WORK_WARNING)

    def _pass_on(self, s: Session, args: tuple[bytes, ...], ptype: int) -> None:
        # Sent on as they came; nothing is stored.
        job = self._held(s, args[0], R.NOT_FOUND_DATA)
        if job is None:
            return
        if job.listeners:
            broadcast(job, P.packet(ptype, args[0] + b"\0" + args[1]))

    def work_complete(self, s: Session, args: tuple[bytes, ...]) -> None:
        job = self._held(s, args[0], R.NOT_FOUND_RESULT)
        if job is None:
            return
        self._finish(job)
        self.counters.completed += 1
        if job.listeners:
            broadcast(job, P.packet(P.WORK_COMPLETE, args[0] + b"\0" + args[1]))
            release_listeners(job)

    def work_fail(self, s: Session, args: tuple[bytes, ...]) -> None:
        raw = args[0]
        handle = raw.split(b"\0", 1)[0]
        if len(handle) >= 64:
            s.send(R.HANDLE_TOO_LARGE)
            return
        job = self._held(s, handle, R.NOT_FOUND_RESULT)
        if job is None:
            return
        self._finish(job)
        self.counters.failed += 1
        if job.listeners:
            broadcast(job, P.packet(P.WORK_FAIL, raw))
            release_listeners(job)

    def work_exception(self, s: Session, args: tuple[bytes, ...]) -> None:
        job = self._held(s, args[0], R.NOT_FOUND_EXC)
        if job is None:
            return
        self._finish(job)
        self.counters.failed += 1
        if job.listeners:
            exc = P.packet(P.WORK_EXCEPTION, args[0] + b"\0" + args[1])
            # gearmand appends a stray NUL to this WORK_FAIL, which hangs
            # libgearman; the handle alone is what clients expect.
            fail = P.packet(P.WORK_FAIL, args[0])
            for c in job.listeners:
                c.send(exc if c.exceptions else fail)
            release_listeners(job)
