"""The job manager: the job table, per-function run queues, coalescing,
submits and commits, assignment, retries, timeouts and the job's end.

Pure logic, driven by method calls: it never touches a socket. It talks to
peers only through :class:`node.session.Session` (``send``/``reserve``/``fill``)
and to time through a :class:`Clock`, so the tests drive it with fake ones.
Beside it, each in its own module: the job model (node/job.py), every change
of a job's state and its counts (node/jobstate.py), the worker registry and
wake-ups (node/workers.py), epoch jobs waiting for their time
(node/delayed.py) and work results (node/results.py). Requests reach it
parsed, and only when they are local work: node/dispatch.py.

Where gearmand 1.1.20 loses data or hangs a client we do the safe thing
instead; each such place says so and docs/compatibility.md lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node import protocol as P
from node import replies as R
from node import runqueue
from node.clock import Clock
from node.delayed import DelayedJobs
from node.handles import Handles
from node.job import Function, Job
from node.jobstate import DELAYED, GONE, PENDING, QUEUED, RUNNING, move
from node.jobviews import JobViews
from node.results import WorkResults, fail_listeners
from node.seam import ClusterHooks, JobInfo
from node.session import Session
from node.stats import Counters
from node.store import MemoryStore, Store, StoredJob
from node.workers import WorkerRegistry

log = logging.getLogger("gearmesh.jobs")


@dataclass(slots=True)
class ManagerConfig:
    handle_prefix: bytes = b"H:gearmesh"
    job_retries: int = 0  # 0 = unlimited, as in gearmand 1.1.20
    max_unique: int = 64
    max_jobs: int = 0  # 0 = unlimited
    all_exceptions: bool = False  # gearmand --exceptions


class JobManager:
    def __init__(self, clock: Clock, config: ManagerConfig | None = None,
                 store: Store | None = None, counters: Counters | None = None) -> None:
        self.clock = clock
        self.config = config or ManagerConfig()
        self.store: Store = store or MemoryStore()
        self.counters = counters or Counters()
        self.handles = Handles(self.config.handle_prefix)
        self.functions: dict[bytes, Function] = {}
        self.jobs: dict[int, Job] = {}
        self.sessions: dict[int, Session] = {}
        self.next_id = 1
        self.delayed = DelayedJobs(clock, self._due)
        self.on_idle: Callable[[], None] | None = None  # called when the last job leaves
        self._cancelled: set[int] = set()  # running jobs cancelled, until their worker is done
        self.workers = WorkerRegistry(clock, self.counters, self.functions)
        results = WorkResults(self.job_by_handle, self._finish, self.counters)
        # node/dispatch.py's table calls these directly: no extra call per result.
        self.work_status = results.work_status
        self.work_data = results.work_data
        self.work_warning = results.work_warning
        self.work_complete = results.work_complete
        self.work_fail = results.work_fail
        self.work_exception = results.work_exception
        # Read-only copies for admin, the HTTP API and the dashboard (node/jobviews.py).
        views = JobViews(self.functions, self.jobs, self.sessions, self.delayed,
                         self.handle_of, self.job_by_handle)
        self.function_stats = views.function_stats
        self.queued_jobs = views.queued_jobs
        self.worker_snapshots = views.worker_snapshots
        self.status_packet = views.status_packet
        self.status_unique_packet = views.status_unique_packet
        self.job_by_unique = views.job_by_unique
        # What the cluster may read (node/seam.py).
        self.session = views.session
        self.abilities = views.abilities
        self.unclaimed = views.unclaimed
        self.unclaimed_all = views.unclaimed_all
        self.sleepers = views.sleepers
        self.sleeper_counts = views.sleeper_counts
        self.awake_workers = views.awake_workers
        self.held = views.held
        self.background_left = views.background_left

    @property
    def cluster(self) -> ClusterHooks | None:
        """Set by the cluster layer; None on a standalone node."""
        return self.workers.cluster

    @cluster.setter
    def cluster(self, hooks: ClusterHooks | None) -> None:
        self.workers.cluster = hooks

    # ------------------------------------------------------------------ sessions

    def attach(self, session: Session) -> None:
        if self.config.all_exceptions:
            session.exceptions = True
        self.sessions[session.id] = session

    def detach(self, s: Session) -> None:
        """The peer is gone: requeue what it ran, detach what it waited on."""
        s.closed = True
        self.sessions.pop(s.id, None)
        woken = self.workers.forget(s)
        for job in list(s.held):
            self._requeue(job)
        s.held.clear()
        for job in s.listening:
            self._drop_listener(job, s)
        s.listening.clear()
        self.workers.pass_wakes_on(woken)

    # ------------------------------------------------------------------ helpers

    def handle_of(self, job: JobInfo) -> bytes:
        return self.handles.of(job.id)

    def job_by_handle(self, handle: bytes) -> Job | None:
        jid = self.handles.number(handle)
        return self.jobs.get(jid) if jid is not None else None

    def function(self, name: bytes) -> Function:
        fn = self.functions.get(name)
        if fn is None:
            fn = self.functions[name] = Function(name)
        return fn

    def is_local_handle(self, handle: bytes) -> bool:
        """Whether ``handle`` has this node's prefix (it may name no job)."""
        return self.handles.is_local(handle)

    # ------------------------------------------------------------------ submits

    def submit(self, s: Session, name: bytes, unique: bytes, payload: bytes, priority: int,
               bg: bool, when: int = 0, reducer: bytes = b"") -> Job | None:
        if len(unique) > self.config.max_unique:
            self.counters.rejected += 1
            s.send(R.UNIQUE_TOO_LARGE)
            return None
        fn = self.functions.get(name) or self.function(name)
        index: dict[bytes, Job] | None = None
        key = unique
        if unique:
            if unique == b"-":
                if payload:
                    index = fn.dash
                    key = payload
            else:
                index = fn.uniques
            if index is not None:
                job = index.get(key)
                if job is not None:
                    self._coalesce(s, job, bg)
                    return job
        limit = fn.limits[priority]
        if (limit and fn.total >= limit) or (
                self.config.max_jobs and len(self.jobs) >= self.config.max_jobs):
            self.counters.rejected += 1
            s.send(R.QUEUE_FULL)
            return None
        jid = self.next_id
        self.next_id = jid + 1
        job = Job(jid, fn, unique, payload, priority, bg, when, reducer)
        self.jobs[jid] = job
        if index is not None:
            index[key] = job
        self.counters.submitted += 1
        if not bg:
            job.listeners = [s]
            s.listening.add(job)
            s.send(P.packet(P.JOB_CREATED, self.handles.of(jid)))
            self._make_runnable(job)
        elif self.store.durable:
            move(job, PENDING)
            job.waiters = [(s, s.reserve())]
            self._store(job)
        else:
            s.send(P.packet(P.JOB_CREATED, self.handles.of(jid)))
            self._make_runnable(job)
        return job

    def _coalesce(self, s: Session, job: Job, bg: bool) -> None:
        self.counters.coalesced += 1
        if bg:
            # gearmand loses a background job that a foreground client coalesced
            # onto when that client leaves; here the job stays background.
            job.bg = True
            if job.state == PENDING:
                assert job.waiters is not None
                job.waiters.append((s, s.reserve()))
                return
            if self.store.durable and not job.stored:
                # A foreground job became background: make it durable before
                # promising it is.
                job.waiters = [(s, s.reserve())]
                self._store(job)
                return
        else:
            if job.listeners is None:
                job.listeners = [s]
            else:
                job.listeners.append(s)
            s.listening.add(job)
        s.send(P.packet(P.JOB_CREATED, self.handle_of(job)))

    def _store(self, job: Job) -> None:
        job.stored = True
        self.store.add(job, self._committed)

    def _committed(self, job: Job, err: BaseException | None) -> None:
        # Once per durable background job, on the event loop: kept lean.
        waiters = job.waiters or []
        job.waiters = None
        if err is None:
            if waiters:
                created = P.packet(P.JOB_CREATED, self.handles.of(job.id))
                for s, slot in waiters:
                    s.fill(slot, created)
            state = job.state
            if state == PENDING:
                self._make_runnable(job)
            elif state == GONE:
                # Finished (it was foreground first) while the commit was in flight.
                self.store.remove(job.id)
            return
        log.error("store commit failed for job %d: %s", job.id, err)
        job.stored = False
        error = P.error_packet(b"QUEUE_ERROR", b"QUEUE_ERROR: " + str(err).encode()[:200])
        for s, slot in waiters:
            s.fill(slot, error)
        self.counters.rejected += len(waiters)
        if job.state == PENDING:
            move(job, GONE)
            self._forget(job)
            fail_listeners(job, self.handle_of(job))

    # ------------------------------------------------------------------ queues

    def _make_runnable(self, job: Job) -> None:
        if job.when and job.when > self.clock.time():
            move(job, DELAYED)
            self.delayed.add(job.when, job.id)
            return
        self._enqueue(job)

    def _enqueue(self, job: Job, front: bool = False) -> None:
        move(job, QUEUED)
        fn = job.fn
        q = fn.queues[job.priority]
        if front:
            q.appendleft(job)
        else:
            q.append(job)
        # WorkerRegistry.job_queued's own test, here too: it saves a call on
        # every submit whose job needs no wake-up.
        if fn.queued > fn.waking and (fn.sleepers or self.workers.cluster is not None):
            self.workers.ensure_awake(fn)

    def _due(self, jid: int) -> None:
        """An epoch job's time came (node/delayed.py)."""
        job = self.jobs.get(jid)
        if job is not None and job.state == DELAYED:
            self._enqueue(job)

    # ------------------------------------------------------------------ workers

    def register(self, s: Session, name: bytes, timeout_ms: int) -> None:
        self.workers.register(s, self.function(name), timeout_ms)

    def unregister(self, s: Session, match: Callable[[Function], bool]) -> None:
        woken = self.workers.unregister(s, match)
        for job in [j for j in s.held if match(j.fn)]:
            s.held.discard(job)
            self._requeue(job)
        self.workers.pass_wakes_on(woken)

    def pre_sleep(self, s: Session,
                  remote_work: Callable[[Session], bool] | None = None) -> None:
        """PRE_SLEEP; ``remote_work`` says whether a job another node pushed
        here waits for one of s's functions (node/dispatch.py asks the cluster)."""
        self.workers.pre_sleep(s, remote_work)

    def wake_sleepers(self, name: bytes, n: int) -> list[Session]:
        """Another node has n jobs of this function for our workers: wake up
        to n of ours that sleep, and say which."""
        return self.workers.wake_sleepers(name, n)

    def grab(self, s: Session, kind: int,
             pushed: Callable[[Session, int], bool] | None = None) -> Job | None:
        """GRAB_JOB*; ``pushed`` assigns s a job another node pushed here, if
        one waits (node/dispatch.py passes the cluster's)."""
        woken = self.workers.grabbing(s) if s.asleep or s.noop_sent else None
        # A job another node pushed here was sent because a worker slept here,
        # and its owner counts it as running: it goes before local work.
        if pushed is not None and pushed(s, kind):
            job = None
        else:
            job = self._take(s)
            s.send(self.assignment(job, kind) if job is not None else P.NO_JOB_PACKET)
        if woken:
            self.workers.pass_wakes_on(woken)
        return job

    def assignment(self, job: Job, kind: int) -> bytes:
        return R.assignment_packet(kind, self.handles.of(job.id), job.fn.name,
                                 job.unique, job.reducer, job.payload)

    def _take(self, s: Session) -> Job | None:
        picked = runqueue.pick(s.regs, s.rr)
        if picked is None:
            return None
        job, i = picked
        s.rr = i + 1
        self._run(job, s, s.regs[i][1])
        return job

    def _run(self, job: Job, s: Session, timeout_ms: int) -> None:
        move(job, RUNNING)
        job.worker = s
        s.held.add(job)
        self._arm_timeout(job, s, timeout_ms)

    def _arm_timeout(self, job: Job, s: Session, timeout_ms: int) -> None:
        if timeout_ms:
            job.timer = self.clock.call_later(timeout_ms / 1000.0,
                                              lambda: self._timed_out(job, s))

    def _release_worker(self, job: Job) -> None:
        """The running job's worker (or holder) lets go of it."""
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if job.worker is not None:
            job.worker.held.discard(job)
        job.worker = None

    # -- for the cluster: jobs handed to another node's worker (push dispatch)
    # and to another node (handoff). The cluster names jobs by the read-only
    # JobInfo these return; a stale one (the job ended or moved meanwhile) is
    # ignored.

    def _own(self, info: JobInfo) -> Job | None:
        job = self.jobs.get(info.id)
        return job if job is info else None

    def take_queued(self, name: bytes, holder: Session) -> JobInfo | None:
        """Dequeue the function's next runnable job (highest priority first)
        and count it as running, held by ``holder`` until a worker takes it
        (``reassign``) or it comes back unstarted (``unassign``)."""
        fn = self.functions.get(name)
        job = runqueue.pop_next(fn) if fn is not None else None
        if job is not None:
            self._run(job, holder, 0)
        return job

    def reassign(self, info: JobInfo, s: Session, timeout_ms: int) -> None:
        """A running job's worker is now ``s`` (a pushed job was taken)."""
        job = self._own(info)
        if job is None or job.state != RUNNING:
            return
        self._release_worker(job)
        job.worker = s
        s.held.add(job)
        self._arm_timeout(job, s, timeout_ms)

    def take_matching(self, holder: Session,
                      want: Callable[[JobInfo], bool]) -> Sequence[JobInfo]:
        """Every queued or delayed job for which ``want`` holds, in the order
        workers would get them (per function: priority, then arrival; epoch
        jobs last), counted as running and held by ``holder`` — to be moved
        to another node (``handed_off``) or put back (``unassign``)."""
        taken = runqueue.take_out(self.functions.values(), want)
        taken.extend(j for j in self.jobs.values() if j.state == DELAYED and want(j))
        for job in taken:
            self._run(job, holder, 0)
        return taken

    def handed_off(self, info: JobInfo) -> None:
        """Another node now holds this job (durably, if it was stored here):
        it leaves this node without a word to anyone."""
        job = self._own(info)
        if job is not None and job.state == RUNNING:
            self._finish(job)

    def unassign(self, info: JobInfo) -> None:
        """A pushed or handed-over job came back unstarted: to the head of its
        queue, and not counted as a retry, since no worker ever saw it."""
        job = self._own(info)
        if job is None or job.state != RUNNING:
            return
        self._release_worker(job)
        if job.when and job.when > self.clock.time():
            self._make_runnable(job)  # back to waiting for its time
        else:
            self._enqueue(job, front=True)

    def _timed_out(self, job: Job, s: Session) -> None:
        job.timer = None
        if job.worker is s and job.state == RUNNING:
            log.info("job %d timed out on worker %s; requeued", job.id, s.peer)
            s.held.discard(job)
            self._requeue(job)

    def _requeue(self, job: Job) -> None:
        """The worker is gone (or gave up): back to the tail of its queue, or
        WORK_FAIL once the retry limit is reached."""
        if job.state != RUNNING:
            return
        job.retries += 1
        limit = self.config.job_retries
        if limit and job.retries >= limit:
            log.info("job %d failed after %d attempts", job.id, job.retries)
            self._finish(job)
            self.counters.failed += 1
            fail_listeners(job, self.handle_of(job))
            return
        if job.listeners is None and not job.bg:
            # Every client gave up on it while it ran: nobody wants it any more.
            self._finish(job)
            return
        self._release_worker(job)
        job.num = job.den = 0
        self.counters.requeued += 1
        self._enqueue(job)

    # ------------------------------------------------------------------ the end of a job

    def _finish(self, job: Job) -> None:
        """The job leaves the server (its listeners are still on job.listeners)."""
        worker = job.worker
        move(job, GONE)
        if worker is not None or job.timer is not None:
            self._release_worker(job)
        self._forget(job)
        if job.stored and job.waiters is None:
            if worker is not None and worker.holds_replies and self.store.durable:
                # The worker's next reply waits for the deletion to be durable,
                # so a job whose worker has heard back never runs again after
                # a crash: only jobs still running at the crash can.
                slot = worker.reserve()
                self.store.remove(job.id, lambda err: worker.fill(slot, b""))
            else:
                self.store.remove(job.id)

    def _forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        self._cancelled.discard(job.id)
        self._unindex(job)
        if not self.jobs and self.on_idle is not None:
            self.on_idle()

    def _unindex(self, job: Job) -> None:
        if job.unique:
            fn = job.fn
            if job.unique == b"-":
                if fn.dash.get(job.payload) is job:
                    del fn.dash[job.payload]
            elif fn.uniques.get(job.unique) is job:
                del fn.uniques[job.unique]

    def _drop_listener(self, job: Job, s: Session) -> None:
        listeners = job.listeners
        if not listeners:
            return
        remaining = [c for c in listeners if c is not s]
        job.listeners = remaining or None
        if remaining or job.bg:
            return
        # The last client left a foreground job. gearmand leaves it queued,
        # ignored, and still findable (a later client coalescing onto it never
        # hears back); we drop it at once so the unique is free again.
        if job.state in (QUEUED, DELAYED):
            move(job, GONE)
            self._forget(job)
        # A running job carries on; its result goes to whoever is attached by then.

    # ------------------------------------------------------------------ admin-ish

    def cancel(self, handle: bytes) -> bool:
        """Admin `cancel job`: listeners get WORK_FAIL and the job is gone for
        good (gearmand only marks it, so a resubmit coalesces into a void)."""
        job = self.job_by_handle(handle)
        if job is None:
            return False
        state = job.state
        if state == PENDING:
            return False  # not acknowledged yet; nothing a client could have cancelled
        if state == RUNNING:
            if job.id in self._cancelled:
                return False
            # The worker keeps it: its late result is accepted and dropped, and
            # a worker loss or timeout finds nobody wanting it (not background,
            # no listeners) and ends it. The unique is free for a new job now.
            self._cancelled.add(job.id)
            self._unindex(job)
            job.bg = False
            if job.stored:
                self.store.remove(job.id)
                job.stored = False
        else:
            self._finish(job)
        self.counters.failed += 1
        fail_listeners(job, self.handle_of(job))
        return True

    def drop_function(self, name: bytes) -> str:
        fn = None
        for f in self.functions.values():
            if f.name.lower() == name.lower():
                fn = f
                break
        if fn is None:
            return "not found"
        if fn.workers or fn.total:
            # gearmand drops a function with queued jobs and orphans them.
            return "busy"
        del self.functions[fn.name]
        return "ok"

    def set_maxqueue(self, name: bytes, limits: list[int]) -> None:
        fn = self.functions.get(name)
        if fn is not None:
            fn.limits = [max(0, v) for v in limits]

    def job_count(self) -> int:
        return len(self.jobs)

    # ------------------------------------------------------------------ replay

    def restore(self, rec: StoredJob) -> None:
        """Queue a job read back from the store (no client is told anything)."""
        fn = self.function(rec.function)
        job = Job(rec.id, fn, rec.unique, rec.payload, rec.priority, True, rec.when, rec.reducer)
        job.stored = True
        self.jobs[rec.id] = job
        if rec.id >= self.next_id:
            self.next_id = rec.id + 1
        if rec.unique:
            if rec.unique == b"-":
                if rec.payload:
                    fn.dash.setdefault(rec.payload, job)
            else:
                fn.uniques.setdefault(rec.unique, job)
        self._make_runnable(job)
