"""The worker registry and wake-ups: who can do what, who sleeps, whom to NOOP.

The rule it keeps: one NOOP per runnable job, never a worker left asleep
while a job it can do waits. ``fn.waking`` counts the workers NOOPed for a
function that have not grabbed yet; while ``fn.queued > fn.waking`` another
sleeper is woken (or, in a cluster, the cluster is told the jobs are
unserved). A NOOP that leads to no GRAB in time counts as not sent
(node/wakeup.py).

Pure: it sends only through :class:`node.session.Session` and reads time
only through the injected clock. The jobs a worker holds are the job
manager's business; this module never touches a job.
"""

from __future__ import annotations

from collections.abc import Callable

from node import protocol as P
from node.clock import Clock
from node.job import Function
from node.seam import ClusterHooks
from node.session import Session
from node.stats import Counters
from node.wakeup import WakeTracker

Woken = list[Function] | None  # the functions a worker's counted wake-up was for


class WorkerRegistry:
    def __init__(self, clock: Clock, counters: Counters,
                 functions: dict[bytes, Function]) -> None:
        self.counters = counters
        self.functions = functions  # the manager's table, shared
        self.cluster: ClusterHooks | None = None  # None = standalone
        # Wake policy hook (node/wakeup.py): a counted NOOP not answered by a
        # GRAB in time counts as not sent, and the next sleeper is woken.
        self.wakes: WakeTracker[Session, None] = WakeTracker(clock, self._wake_expired)

    # ------------------------------------------------------------------ registrations

    def register(self, s: Session, fn: Function, timeout_ms: int) -> None:
        s.regs.insert(0, (fn, timeout_ms))
        s.rr = 0
        fn.workers += 1
        if s.asleep:
            fn.sleepers[s] = None
            if self.cluster is not None:
                self.cluster.sleepers_changed(fn.name)
            if fn.queued > fn.waking:
                # gearmand leaves it asleep; a NOOP is always safe to send.
                self.ensure_awake(fn)

    def unregister(self, s: Session, match: Callable[[Function], bool]) -> Woken:
        """Drop s's registrations of the functions ``match`` picks. Returns the
        wake-up s was counted in, for :meth:`pass_wakes_on` once the jobs it
        held are back in their queues."""
        woken = self.unwake(s)
        keep = []
        for fn, t in s.regs:
            if match(fn):
                fn.workers -= 1
                if fn.sleepers.pop(s, 0) is None and self.cluster is not None:
                    self.cluster.sleepers_changed(fn.name)
            else:
                keep.append((fn, t))
        s.regs = keep
        return woken

    def forget(self, s: Session) -> Woken:
        """s is gone: every registration and wake-up of it (see unregister)."""
        woken = self.unwake(s)
        self.stop_sleeping(s)
        for fn, _ in s.regs:
            fn.workers -= 1
        s.regs = []
        return woken


    # ------------------------------------------------------------------ sleeping

    def pre_sleep(self, s: Session, remote_work: Callable[[Session], bool] | None) -> None:
        for fn, _ in s.regs:
            if fn.queued:
                if not s.noop_sent:
                    self.wake(s)
                return
        if remote_work is not None and remote_work(s):
            if not s.noop_sent:
                self.wake(s)
            return
        s.asleep = True
        cluster = self.cluster
        for fn, _ in s.regs:
            fn.sleepers[s] = None
            if cluster is not None:
                cluster.sleepers_changed(fn.name)

    def stop_sleeping(self, s: Session) -> None:
        if s.asleep:
            s.asleep = False
            cluster = self.cluster
            for fn, _ in s.regs:
                fn.sleepers.pop(s, None)
                if cluster is not None:
                    cluster.sleepers_changed(fn.name)

    def grabbing(self, s: Session) -> Woken:
        """s asked for a job: it is awake, and its NOOP (if any) did its job."""
        if s.asleep:
            self.stop_sleeping(s)
        return self.unwake(s) if s.noop_sent else None

    # ------------------------------------------------------------------ wake-ups

    def job_queued(self, fn: Function) -> None:
        """A job of fn became runnable (or one lost its worker): make sure a
        worker is coming for it."""
        if fn.queued > fn.waking and (fn.sleepers or self.cluster is not None):
            self.ensure_awake(fn)

    def pass_wakes_on(self, woken: Woken) -> None:
        """A woken worker went away or took something else: the jobs it was
        coming for need another worker."""
        if woken:
            for fn in woken:
                self.job_queued(fn)

    def wake_sleepers(self, name: bytes, n: int) -> list[Session]:
        """Another node has n jobs of this function for our workers: wake up
        to n of ours that sleep, and say which."""
        fn = self.functions.get(name)
        woken: list[Session] = []
        if fn is not None:
            sleepers = fn.sleepers
            while sleepers and len(woken) < n:
                s = next(iter(sleepers))
                self.wake(s, counted=False)
                woken.append(s)
        return woken

    def wake(self, s: Session, counted: bool = True) -> None:
        """NOOP a sleeping worker. A counted wake is one a local job is waiting
        for; a wake on behalf of another node's job is not counted, so it can
        never make a local job wait for a worker that went elsewhere."""
        self.stop_sleeping(s)
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
                self.ensure_awake(fn)

    def unwake(self, s: Session) -> Woken:
        woken = s.woken
        if woken is not None:
            for fn in woken:
                fn.waking -= 1
            s.woken = None
            self.wakes.answered(s)
        s.noop_sent = False
        return woken

    def ensure_awake(self, fn: Function) -> None:
        """Wake sleepers until every runnable job has a worker coming for it:
        one NOOP per job, never a worker left asleep while work waits."""
        sleepers = fn.sleepers
        while sleepers and fn.queued > fn.waking:
            self.wake(next(iter(sleepers)))
        if self.cluster is not None and fn.queued > fn.waking:
            self.cluster.unserved(fn.name, fn.queued - fn.waking)
