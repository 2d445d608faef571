"""Read-only views of the job manager's tables: counts for `status`, copies
of queued jobs and workers for the HTTP API and the dashboard, and the
replies to GET_STATUS and GET_STATUS_UNIQUE.

Nothing here changes a job, and nothing outside node/ gets a Job, Function or
Session object through it: only snapshots (node/stats.py) and reply bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from node import protocol as P
from node import replies as R
from node.delayed import DelayedJobs
from node.job import Function, Job
from node.jobstate import DELAYED, GONE, QUEUED, RUNNING
from node.session import Session
from node.stats import FunctionStat, JobSnapshot, WorkerSnapshot


class JobViews:
    def __init__(self, functions: dict[bytes, Function], jobs: dict[int, Job],
                 sessions: dict[int, Session], delayed: DelayedJobs,
                 handle_of: Callable[[Job], bytes],
                 lookup: Callable[[bytes], Job | None]) -> None:
        # The manager's own tables, shared: these views are never stale.
        self.functions = functions
        self.jobs = jobs
        self.sessions = sessions
        self.delayed = delayed
        self.handle_of = handle_of
        self._lookup = lookup  # handle → job

    def function_stats(self) -> Iterator[FunctionStat]:
        for fn in self.functions.values():
            yield FunctionStat(fn.name, fn.queued + fn.delayed + fn.pending, fn.running,
                               fn.workers)

    def queued_jobs(self, name: bytes, limit: int) -> tuple[int, list[JobSnapshot]]:
        """A function's queued jobs in dispatch order (priority, then FIFO),
        then its delayed ones by time: (how many in all, the first ``limit``)."""
        fn = self.functions.get(name)
        if fn is None:
            return 0, []
        out: list[JobSnapshot] = []
        for q in fn.queues:
            for job in q:
                if len(out) >= limit:
                    break
                if job.state == QUEUED:
                    out.append(self.snapshot(job, "queued"))
        if len(out) < limit and fn.delayed:
            for jid in self.delayed.in_order():
                later = self.jobs.get(jid)
                if later is not None and later.fn is fn and later.state == DELAYED:
                    out.append(self.snapshot(later, "delayed"))
                    if len(out) >= limit:
                        break
        return fn.queued + fn.delayed, out

    def snapshot(self, job: Job, state: str) -> JobSnapshot:
        return JobSnapshot(self.handle_of(job), job.unique, job.priority, state, job.created,
                           len(job.payload), job.bg, job.when)

    def worker_snapshots(self) -> list[WorkerSnapshot]:
        """Local connections that registered functions, newest first (as `workers`)."""
        return [WorkerSnapshot(s.fd, s.peer, s.client_id,
                               tuple(dict.fromkeys(fn.name for fn, _ in s.regs)),
                               len(s.held), s.asleep)
                for s in reversed(list(self.sessions.values())) if s.regs]

    def status_packet(self, handle: bytes) -> bytes:
        job = self._lookup(handle)
        if job is None or job.state == GONE:
            return R.unknown_status(handle)
        running = b"1" if job.state == RUNNING else b"0"
        return P.packet(P.STATUS_RES, b"%s\x001\x00%s\x00%d\x00%d" % (handle, running, job.num,
                                                                       job.den))

    def status_unique_packet(self, unique: bytes) -> bytes:
        job = self.job_by_unique(unique)
        if job is None:
            return R.unknown_status_unique(unique)
        running = b"1" if job.state == RUNNING else b"0"
        clients = len(job.listeners) if job.listeners else 0
        return P.packet(P.STATUS_RES_UNIQUE, b"%s\x001\x00%s\x00%d\x00%d\x00%d" % (
            unique, running, job.num, job.den, clients))

    def job_by_unique(self, unique: bytes) -> Job | None:
        if not unique or unique == b"-":
            return None
        for fn in self.functions.values():
            job = fn.uniques.get(unique)
            if job is not None:
                return job
        return None
