"""Read-only views of the job manager's tables: counts for `status`, copies
of queued jobs and workers for the HTTP API and the dashboard, and the
replies to GET_STATUS and GET_STATUS_UNIQUE.

Nothing here changes a job, and nothing outside node/ gets a Function
through it: counts, snapshots (node/stats.py), reply bytes, and for the
cluster jobs typed as the read-only node.seam.JobInfo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from node import protocol as P
from node import replies as R
from node.delayed import DelayedJobs
from node.job import Function, Job
from node.jobstate import DELAYED, GONE, QUEUED, RUNNING
from node.seam import JobInfo
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

    # -- for the cluster (node/seam.py): counts and copies, never the tables

    def session(self, sid: int) -> Session | None:
        """The local connection with this id, if it is still here."""
        return self.sessions.get(sid)

    @staticmethod
    def abilities(s: Session) -> list[tuple[bytes, int]]:
        """s's registrations, newest first: (function, CAN_DO_TIMEOUT ms or 0)."""
        return [(fn.name, timeout) for fn, timeout in s.regs]

    def unclaimed(self, name: bytes) -> int:
        """Runnable jobs of ``name`` that no local worker is coming for."""
        fn = self.functions.get(name)
        return fn.queued - fn.waking if fn is not None and fn.queued > fn.waking else 0

    def unclaimed_all(self) -> dict[bytes, int]:
        """unclaimed() of every function that has some."""
        return {fn.name: fn.queued - fn.waking for fn in self.functions.values()
                if fn.queued > fn.waking}

    def sleepers(self, name: bytes) -> int:
        """Workers of ``name`` asleep here and not NOOPed yet."""
        fn = self.functions.get(name)
        return len(fn.sleepers) if fn is not None else 0

    def sleeper_counts(self) -> dict[bytes, int]:
        """sleepers() of every function that has some."""
        return {fn.name: len(fn.sleepers) for fn in self.functions.values() if fn.sleepers}

    def awake_workers(self, name: bytes) -> int:
        """Registrations of ``name`` by workers that are not asleep."""
        fn = self.functions.get(name)
        return fn.workers - len(fn.sleepers) if fn is not None else 0

    def held(self, handle: bytes, holder: Session) -> JobInfo | None:
        """The job ``holder`` holds under ``handle``, if it does."""
        job = self._lookup(handle)
        return job if job is not None and job.worker is holder else None

    def background_left(self, holder: Session) -> int:
        """Background jobs that are queued or delayed here, or held by ``holder``."""
        return sum(1 for j in self.jobs.values()
                   if j.bg and (j.state in (QUEUED, DELAYED) or j.worker is holder))

    # -- for admin, the HTTP API and the dashboard

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
        return P.packet(P.STATUS_RES_UNIQUE, b"%s\x001\x00%s\x00%d\x00%d\x00%d" % (
            unique, running, job.num, job.den, job.clients))

    def job_by_unique(self, unique: bytes) -> Job | None:
        if not unique or unique == b"-":
            return None
        for fn in self.functions.values():
            job = fn.uniques.get(unique)
            if job is not None:
                return job
        return None
