"""The job manager: the job table, per-function priority queues, coalescing,
the worker registry and wake-ups, retries, timeouts and epoch scheduling.

Pure logic, driven by method calls: it never touches a socket. It talks to
peers only through :class:`node.session.Session` (``send``/``reserve``/``fill``)
and to time through a :class:`Clock`, so the tests drive it with fake ones.

Where gearmand 1.1.20 loses data or hangs a client we do the safe thing
instead; each such place says so and docs/compatibility.md lists them.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from node import protocol as P
from node import replies as R
from node.clock import Clock, TimerHandle
from node.seam import ClusterHooks
from node.session import Session, Slot
from node.stats import Counters, FunctionStat, JobSnapshot, WorkerSnapshot
from node.store import MemoryStore, Store, StoredJob
from node.wakeup import WakeTracker

log = logging.getLogger("gearmesh.jobs")

HIGH: Final = 0
NORMAL: Final = 1
LOW: Final = 2

# Job states.
PENDING: Final = 0  # background job waiting for its commit: coalescable, not runnable
QUEUED: Final = 1
DELAYED: Final = 2  # epoch job whose time has not come
RUNNING: Final = 3
GONE: Final = 4  # completed, failed, cancelled or abandoned


@dataclass(slots=True)
class ManagerConfig:
    handle_prefix: bytes = b"H:gearmesh"
    job_retries: int = 0  # 0 = unlimited, as in gearmand 1.1.20
    max_unique: int = 64
    max_jobs: int = 0  # 0 = unlimited
    all_exceptions: bool = False  # gearmand --exceptions


class Function:
    __slots__ = ("dash", "delayed", "limits", "name", "pending", "queued", "queues", "running",
                 "sleepers", "uniques", "waking", "workers")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        self.queued = 0  # runnable jobs in the queues (lazily removed ones excluded)
        self.delayed = 0
        self.pending = 0
        self.running = 0
        self.workers = 0  # registrations, duplicates included (as gearmand counts them)
        self.sleepers: dict[Session, None] = {}  # asleep, not yet NOOPed; oldest first
        self.waking = 0  # NOOPed sessions that have not grabbed yet
        self.uniques: dict[bytes, Job] = {}
        self.dash: dict[bytes, Job] = {}  # unique "-": coalesce on the payload
        self.limits = [0, 0, 0]  # maxqueue per priority

    @property
    def total(self) -> int:
        return self.queued + self.delayed + self.pending + self.running


class Job:
    __slots__ = ("bg", "created", "den", "fn", "id", "listeners", "num", "payload", "priority",
                 "reducer", "retries", "state", "stored", "timer", "unique", "waiters", "when",
                 "worker")

    def __init__(self, jid: int, fn: Function, unique: bytes, payload: bytes, priority: int,
                 bg: bool, when: int, reducer: bytes) -> None:
        self.id = jid
        self.fn = fn
        self.unique = unique
        self.payload = payload
        self.priority = priority
        self.bg = bg
        self.when = when
        self.reducer = reducer
        self.retries = 0
        self.state = QUEUED
        self.worker: Session | None = None
        self.num = 0
        self.den = 0
        self.listeners: list[Session] | None = None  # foreground submitters, duplicates kept
        # Background submitters waiting for the commit of this job.
        self.waiters: list[tuple[Session, Slot]] | None = None
        self.timer: TimerHandle | None = None
        self.stored = False
        self.created = time.time()  # for the age the dashboard shows

    @property
    def function(self) -> bytes:
        # Lets the store take the job itself as its record (node.store.Record).
        return self.fn.name

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.fn.name!r} {self.unique!r} state={self.state}>"


def c_atoi(text: bytes) -> int:
    """C atoi/strtol on bytes: optional blanks, sign, digits; junk ends it."""
    s = text.lstrip(b" \t\n\r\v\f")
    sign = 1
    if s[:1] in (b"-", b"+"):
        sign = -1 if s[:1] == b"-" else 1
        s = s[1:]
    n = 0
    for c in s:
        if 48 <= c <= 57:
            n = n * 10 + c - 48
        else:
            break
    return sign * n


def _u32(n: int) -> int:
    return n & 0xFFFFFFFF


class JobManager:
    def __init__(self, clock: Clock, config: ManagerConfig | None = None,
                 store: Store | None = None, counters: Counters | None = None) -> None:
        self.clock = clock
        self.config = config or ManagerConfig()
        self.store: Store = store or MemoryStore()
        self.counters = counters or Counters()
        self.prefix = self.config.handle_prefix + b":"
        self.functions: dict[bytes, Function] = {}
        self.jobs: dict[int, Job] = {}
        self.sessions: dict[int, Session] = {}
        self.next_id = 1
        self._delayed: list[tuple[int, int]] = []  # heap of (when, job id)
        self._delay_timer: TimerHandle | None = None
        self._delay_at = 0.0
        self.on_idle: Callable[[], None] | None = None  # called when the last job leaves
        self.cluster: ClusterHooks | None = None  # set by the cluster layer; None = standalone
        self._cancelled: set[int] = set()  # running jobs cancelled, until their worker is done
        # Wake policy hook (node/wakeup.py): a counted NOOP not answered by a
        # GRAB in time counts as not sent, and the next sleeper is woken.
        self.wakes: WakeTracker[Session, None] = WakeTracker(clock, self._wake_expired)

    # ------------------------------------------------------------------ sessions

    def attach(self, session: Session) -> None:
        if self.config.all_exceptions:
            session.exceptions = True
        self.sessions[session.id] = session

    def detach(self, s: Session) -> None:
        """The peer is gone: requeue what it ran, detach what it waited on."""
        s.closed = True
        self.sessions.pop(s.id, None)
        woken = self._unwake(s)
        self._stop_sleeping(s)
        for fn, _ in s.regs:
            fn.workers -= 1
        s.regs = []
        for job in list(s.held):
            self._requeue(job)
        s.held.clear()
        for job in s.listening:
            self._drop_listener(job, s)
        s.listening.clear()
        self._pass_wakes_on(woken)

    def _pass_wakes_on(self, woken: list[Function] | None) -> None:
        """A woken worker went away or took something else: the jobs it was
        coming for need another worker."""
        if woken:
            for fn in woken:
                if fn.queued > fn.waking and (fn.sleepers or self.cluster is not None):
                    self._ensure_awake(fn)

    # ------------------------------------------------------------------ helpers

    def handle_of(self, job: Job) -> bytes:
        return self.prefix + str(job.id).encode()

    def job_by_handle(self, handle: bytes) -> Job | None:
        prefix = self.prefix
        if not handle.startswith(prefix):
            return None
        digits = handle[len(prefix):]
        # Handles are exact strings: "H:x:01" is not "H:x:1".
        if not digits.isdigit() or len(digits) > 19 or digits[0] == 48:
            return None
        return self.jobs.get(int(digits))

    def function(self, name: bytes) -> Function:
        fn = self.functions.get(name)
        if fn is None:
            fn = self.functions[name] = Function(name)
        return fn

    def is_local_handle(self, handle: bytes) -> bool:
        """Whether ``handle`` has this node's prefix (it may name no job)."""
        return handle.startswith(self.prefix)

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
            s.send(P.packet(P.JOB_CREATED, self.prefix + str(jid).encode()))
            self._make_runnable(job)
        elif self.store.durable:
            job.state = PENDING
            fn.pending += 1
            job.waiters = [(s, s.reserve())]
            self._store(job)
        else:
            s.send(P.packet(P.JOB_CREATED, self.prefix + str(jid).encode()))
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
                created = P.packet(P.JOB_CREATED, self.prefix + str(job.id).encode())
                for s, slot in waiters:
                    s.fill(slot, created)
            state = job.state
            if state == PENDING:
                job.fn.pending -= 1
                if job.when:
                    self._make_runnable(job)
                else:
                    self._enqueue(job)
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
            job.fn.pending -= 1
            job.state = GONE
            self._forget(job)
            self._fail_listeners(job)

    def _make_runnable(self, job: Job) -> None:
        if job.when and job.when > self.clock.time():
            job.state = DELAYED
            job.fn.delayed += 1
            heapq.heappush(self._delayed, (job.when, job.id))
            if self._delay_timer is None or job.when < self._delay_at:
                self._arm_delay_timer()
            return
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        job.state = QUEUED
        fn = job.fn
        fn.queues[job.priority].append(job)
        fn.queued += 1
        if fn.queued > fn.waking and (fn.sleepers or self.cluster is not None):
            self._ensure_awake(fn)

    def _arm_delay_timer(self) -> None:
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        if not self._delayed:
            return
        when = self._delayed[0][0]
        self._delay_at = when
        self._delay_timer = self.clock.call_later(max(0.0, when - self.clock.time()),
                                                  self._release_delayed)

    def _release_delayed(self) -> None:
        self._delay_timer = None
        now = self.clock.time()
        heap = self._delayed
        while heap and heap[0][0] <= now:
            _, jid = heapq.heappop(heap)
            job = self.jobs.get(jid)
            if job is not None and job.state == DELAYED:
                job.fn.delayed -= 1
                self._enqueue(job)
        self._arm_delay_timer()

    # ------------------------------------------------------------------ workers

    def register(self, s: Session, name: bytes, timeout_ms: int) -> None:
        fn = self.function(name)
        s.regs.insert(0, (fn, timeout_ms))
        s.rr = 0
        fn.workers += 1
        if s.asleep:
            fn.sleepers[s] = None
            if self.cluster is not None:
                self.cluster.sleepers_changed(fn)
            if fn.queued > fn.waking:
                # gearmand leaves it asleep; a NOOP is always safe to send.
                self._ensure_awake(fn)

    def unregister(self, s: Session, match: Callable[[Function], bool]) -> None:
        woken = self._unwake(s)
        keep = []
        for fn, t in s.regs:
            if match(fn):
                fn.workers -= 1
                if fn.sleepers.pop(s, 0) is None and self.cluster is not None:
                    self.cluster.sleepers_changed(fn)
            else:
                keep.append((fn, t))
        s.regs = keep
        for job in [j for j in s.held if match(j.fn)]:
            s.held.discard(job)
            self._requeue(job)
        self._pass_wakes_on(woken)

    def pre_sleep(self, s: Session,
                  remote_work: Callable[[Session], bool] | None = None) -> None:
        """PRE_SLEEP; ``remote_work`` says whether a job another node pushed
        here waits for one of s's functions (node/dispatch.py asks the cluster)."""
        for fn, _ in s.regs:
            if fn.queued:
                if not s.noop_sent:
                    self._wake(s)
                return
        cluster = self.cluster
        if remote_work is not None and remote_work(s):
            if not s.noop_sent:
                self._wake(s)
            return
        s.asleep = True
        for fn, _ in s.regs:
            fn.sleepers[s] = None
            if cluster is not None:
                cluster.sleepers_changed(fn)

    def _stop_sleeping(self, s: Session) -> None:
        if s.asleep:
            s.asleep = False
            cluster = self.cluster
            for fn, _ in s.regs:
                fn.sleepers.pop(s, None)
                if cluster is not None:
                    cluster.sleepers_changed(fn)

    def wake_sleepers(self, name: bytes, n: int) -> list[Session]:
        """Another node has n jobs of this function for our workers: wake up
        to n of ours that sleep, and say which."""
        fn = self.functions.get(name)
        woken: list[Session] = []
        if fn is not None:
            sleepers = fn.sleepers
            while sleepers and len(woken) < n:
                s = next(iter(sleepers))
                self._wake(s, counted=False)
                woken.append(s)
        return woken

    def _wake(self, s: Session, counted: bool = True) -> None:
        """NOOP a sleeping worker. A counted wake is one a local job is waiting
        for; a wake on behalf of another node's job is not counted, so it can
        never make a local job wait for a worker that went elsewhere."""
        self._stop_sleeping(s)
        s.noop_sent = True
        if counted:
            # One worker is one wake per function, however often it registered it.
            woken = list(dict.fromkeys(fn for fn, _ in s.regs))
            for fn in woken:
                fn.waking += 1
            s.woken = woken
            self.wakes.sent(s, None)
        self.counters.noops_sent += 1
        s.send(P.NOOP_PACKET)

    def _wake_expired(self, s: Session, _: None) -> None:
        """Wake policy hook: its NOOP led to no GRAB in time (the process may be
        busy with another server's job), so the jobs it was woken for stop
        counting on it. It keeps noop_sent (its NOOP is still on the way), so
        it is never NOOPed twice; its GRAB, when it comes, is served as usual."""
        woken = s.woken
        if woken is None:
            return
        for fn in woken:
            fn.waking -= 1
        s.woken = None
        for fn in woken:
            if fn.queued > fn.waking:
                self._ensure_awake(fn)

    def _unwake(self, s: Session) -> list[Function] | None:
        woken = s.woken
        if woken is not None:
            for fn in woken:
                fn.waking -= 1
            s.woken = None
            self.wakes.answered(s)
        s.noop_sent = False
        return woken

    def _ensure_awake(self, fn: Function) -> None:
        """Wake sleepers until every runnable job has a worker coming for it:
        one NOOP per job, never a worker left asleep while work waits."""
        sleepers = fn.sleepers
        while sleepers and fn.queued > fn.waking:
            self._wake(next(iter(sleepers)))
        if self.cluster is not None and fn.queued > fn.waking:
            self.cluster.unserved(fn, fn.queued - fn.waking)

    def grab(self, s: Session, kind: int,
             pushed: Callable[[Session, int], bool] | None = None) -> Job | None:
        """GRAB_JOB*; ``pushed`` assigns s a job another node pushed here, if
        one waits (node/dispatch.py passes the cluster's)."""
        if s.asleep:
            self._stop_sleeping(s)
        woken = self._unwake(s) if s.noop_sent else None
        # A job another node pushed here was sent because a worker slept here,
        # and its owner counts it as running: it goes before local work.
        if pushed is not None and pushed(s, kind):
            job = None
        else:
            job = self._take(s)
            s.send(self.assignment(job, kind) if job is not None else P.NO_JOB_PACKET)
        self._pass_wakes_on(woken)
        return job

    def assignment(self, job: Job, kind: int) -> bytes:
        return R.assignment_packet(kind, self.prefix + str(job.id).encode(), job.fn.name,
                                 job.unique, job.reducer, job.payload)

    def _take(self, s: Session) -> Job | None:
        """Highest priority across the worker's functions; among equals, round
        robin over its registrations so no function starves."""
        regs = s.regs
        n = len(regs)
        if not n:
            return None
        best_q: deque[Job] | None = None
        best_p = 3
        best_i = 0
        start = s.rr % n
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            fn = regs[i][0]
            if not fn.queued:
                continue
            queues = fn.queues
            for p in range(best_p):
                q = queues[p]
                while q and q[0].state != QUEUED:
                    q.popleft()  # cancelled or abandoned: removed lazily
                if q:
                    best_q, best_p, best_i = q, p, i
                    break
            if best_p == HIGH:
                break
        if best_q is None:
            return None
        s.rr = best_i + 1
        job = best_q.popleft()
        job.fn.queued -= 1
        self._run(job, s, regs[best_i][1])
        return job

    def _run(self, job: Job, s: Session, timeout_ms: int) -> None:
        job.fn.running += 1
        job.state = RUNNING
        job.worker = s
        s.held.add(job)
        self._arm_timeout(job, s, timeout_ms)

    def _arm_timeout(self, job: Job, s: Session, timeout_ms: int) -> None:
        if timeout_ms:
            job.timer = self.clock.call_later(timeout_ms / 1000.0,
                                              lambda: self._timed_out(job, s))

    # -- jobs handed to another node's worker (the cluster's push dispatch)

    def take_queued(self, fn: Function, holder: Session) -> Job | None:
        """Dequeue fn's next runnable job (highest priority first) and count it
        as running, held by ``holder`` until a worker takes it (``reassign``)
        or it comes back unstarted (``unassign``)."""
        if not fn.queued:
            return None
        for q in fn.queues:
            while q and q[0].state != QUEUED:
                q.popleft()  # cancelled or abandoned: removed lazily
            if q:
                job = q.popleft()
                fn.queued -= 1
                self._run(job, holder, 0)
                return job
        return None

    def reassign(self, job: Job, s: Session, timeout_ms: int) -> None:
        """A running job's worker is now ``s`` (a pushed job was taken)."""
        if job.state != RUNNING:
            return
        if job.worker is not None:
            job.worker.held.discard(job)
        job.worker = s
        s.held.add(job)
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        self._arm_timeout(job, s, timeout_ms)

    def take_matching(self, holder: Session, want: Callable[[Job], bool]) -> list[Job]:
        """Every queued or delayed job for which ``want`` holds, in the order
        workers would get them (per function: priority, then arrival; epoch
        jobs last), counted as running and held by ``holder`` — to be moved
        to another node (``handed_off``) or put back (``unassign``)."""
        taken: list[Job] = []
        for fn in self.functions.values():
            if not fn.queued:
                continue
            for q in fn.queues:
                if not q:
                    continue
                kept: deque[Job] = deque()
                for job in q:
                    if job.state != QUEUED:
                        continue  # cancelled or abandoned: dropped now
                    if want(job):
                        taken.append(job)
                    else:
                        kept.append(job)
                q.clear()
                q.extend(kept)
        for job in taken:
            job.fn.queued -= 1
        delayed = [j for j in self.jobs.values() if j.state == DELAYED and want(j)]
        for job in delayed:
            job.fn.delayed -= 1
        taken.extend(delayed)
        for job in taken:
            self._run(job, holder, 0)
        return taken

    def handed_off(self, job: Job) -> None:
        """Another node now holds this job (durably, if it was stored here):
        it leaves this node without a word to anyone."""
        if job.state == RUNNING:
            self._finish(job)

    def unassign(self, job: Job) -> None:
        """A pushed job came back unstarted: to the head of its queue, and not
        counted as a retry, since no worker ever saw it."""
        if job.state != RUNNING:
            return
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if job.worker is not None:
            job.worker.held.discard(job)
        job.worker = None
        fn = job.fn
        fn.running -= 1
        if job.when and job.when > self.clock.time():
            self._make_runnable(job)  # back to waiting for its time
            return
        job.state = QUEUED
        fn.queues[job.priority].appendleft(job)
        fn.queued += 1
        if fn.queued > fn.waking:
            self._ensure_awake(fn)

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
            self._fail_listeners(job)
            return
        if job.listeners is None and not job.bg:
            # Every client gave up on it while it ran: nobody wants it any more.
            self._finish(job)
            return
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        w = job.worker
        if w is not None:
            w.held.discard(job)
        job.worker = None
        job.fn.running -= 1
        job.num = job.den = 0
        self.counters.requeued += 1
        self._enqueue(job)

    # ------------------------------------------------------------------ results

    def _held(self, s: Session, handle: bytes, not_found: bytes) -> Job | None:
        """The job this worker holds under ``handle``; otherwise the worker is
        told. (A handle of another node's job never gets here: node/dispatch.py
        forwards it.)"""
        job = self.job_by_handle(handle)
        if job is not None and job.worker is s:
            return job
        s.send(not_found)
        return None

    def _broadcast(self, job: Job, data: bytes) -> None:
        listeners = job.listeners
        if listeners:
            for c in listeners:
                c.send(data)

    def work_status(self, s: Session, args: tuple[bytes, ...]) -> None:
        job = self._held(s, args[0], R.NOT_FOUND_RESULT)
        if job is None:
            return
        job.num = _u32(c_atoi(args[1]))
        job.den = _u32(c_atoi(args[2][:10]))
        if job.listeners:
            self._broadcast(job, P.packet(P.WORK_STATUS, b"\0".join(args)))

    def work_data(self, s: Session, args: tuple[bytes, ...]) -> None:
        self._forward(s, args, P.WORK_DATA)

    def work_warning(self, s: Session, args: tuple[bytes, ...]) -> None:
        self._forward(s, args, P.WORK_WARNING)

    def _forward(self, s: Session, args: tuple[bytes, ...], ptype: int) -> None:
        # Forwarded as they came; nothing is stored.
        job = self._held(s, args[0], R.NOT_FOUND_DATA)
        if job is None:
            return
        if job.listeners:
            self._broadcast(job, P.packet(ptype, args[0] + b"\0" + args[1]))

    def work_complete(self, s: Session, args: tuple[bytes, ...]) -> None:
        job = self._held(s, args[0], R.NOT_FOUND_RESULT)
        if job is None:
            return
        self._finish(job)
        self.counters.completed += 1
        if job.listeners:
            self._broadcast(job, P.packet(P.WORK_COMPLETE, args[0] + b"\0" + args[1]))
            self._release_listeners(job)

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
            self._broadcast(job, P.packet(P.WORK_FAIL, raw))
            self._release_listeners(job)

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
            self._release_listeners(job)

    def _finish(self, job: Job) -> None:
        """The job leaves the server (its listeners are still on job.listeners)."""
        prev = job.state
        job.state = GONE
        fn = job.fn
        worker = job.worker
        if prev == RUNNING:
            fn.running -= 1
            if worker is not None:
                worker.held.discard(job)
            job.worker = None
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
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

    def _release_listeners(self, job: Job) -> None:
        listeners = job.listeners
        if listeners:
            for c in listeners:
                c.listening.discard(job)
        job.listeners = None

    def _fail_listeners(self, job: Job) -> None:
        if job.listeners:
            self._broadcast(job, P.packet(P.WORK_FAIL, self.handle_of(job)))
            self._release_listeners(job)

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
        if job.state == QUEUED:
            job.fn.queued -= 1
            job.state = GONE
            self._forget(job)
        elif job.state == DELAYED:
            job.fn.delayed -= 1
            job.state = GONE
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
        if state == QUEUED:
            job.fn.queued -= 1
        elif state == DELAYED:
            job.fn.delayed -= 1
        elif state == PENDING:
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
        self._fail_listeners(job)
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

    def function_stats(self) -> Iterator[FunctionStat]:
        for fn in self.functions.values():
            yield FunctionStat(fn.name, fn.queued + fn.delayed + fn.pending, fn.running,
                               fn.workers)

    def job_count(self) -> int:
        return len(self.jobs)

    # Read-only copies for the HTTP API and the dashboard; nothing outside the
    # manager sees its Job or Session objects through these.

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
                    out.append(self._snapshot(job, "queued"))
        if len(out) < limit and fn.delayed:
            for _, jid in sorted(self._delayed):
                later = self.jobs.get(jid)
                if later is not None and later.fn is fn and later.state == DELAYED:
                    out.append(self._snapshot(later, "delayed"))
                    if len(out) >= limit:
                        break
        return fn.queued + fn.delayed, out

    def _snapshot(self, job: Job, state: str) -> JobSnapshot:
        return JobSnapshot(self.handle_of(job), job.unique, job.priority, state, job.created,
                           len(job.payload), job.bg, job.when)

    def worker_snapshots(self) -> list[WorkerSnapshot]:
        """Local connections that registered functions, newest first (as `workers`)."""
        return [WorkerSnapshot(s.fd, s.peer, s.client_id,
                               tuple(dict.fromkeys(fn.name for fn, _ in s.regs)),
                               len(s.held), s.asleep)
                for s in reversed(list(self.sessions.values())) if s.regs]

    # ------------------------------------------------------------------ status & misc

    def status_packet(self, handle: bytes) -> bytes:
        job = self.job_by_handle(handle)
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
