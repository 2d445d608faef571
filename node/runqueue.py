"""Which queued job goes next: the pick across a worker's functions, and
taking jobs out of the run queues for the cluster.

A function has one FIFO queue per priority. Jobs that left QUEUED while in a
queue (cancelled, abandoned) stay there until a pick meets them, and are
dropped then: removing them at once would cost a scan per cancel. These
functions only take jobs out of the queues; the caller moves each one to its
next state (node/jobstate.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from node.job import HIGH, Function, Job
from node.jobstate import QUEUED


def pick(regs: list[tuple[Function, int]], start: int) -> tuple[Job, int] | None:
    """Take the highest-priority job across a worker's registrations; among
    equals the first from ``start`` on, so a round robin over them starves no
    function. Returns the job and the index of the registration it came by."""
    n = len(regs)
    if not n:
        return None
    best_q: deque[Job] | None = None
    best_p = 3
    best_i = 0
    start %= n
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
    return best_q.popleft(), best_i


def pop_next(fn: Function) -> Job | None:
    """Take fn's next runnable job, highest priority first."""
    if not fn.queued:
        return None
    for q in fn.queues:
        while q and q[0].state != QUEUED:
            q.popleft()  # cancelled or abandoned: removed lazily
        if q:
            return q.popleft()
    return None


def take_out(functions: Iterable[Function], want: Callable[[Job], bool]) -> list[Job]:
    """Take every queued job for which ``want`` holds out of the queues, in
    the order workers would get them (per function: priority, then arrival)."""
    taken: list[Job] = []
    for fn in functions:
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
    return taken
