"""The job model: a job, the function it is queued under, and priorities.

Plain objects with slots, no behaviour beyond what they hold: the job
manager (node/jobs.py) owns the tables they sit in, node/jobstate.py every
change of a job's state and the counts that go with it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Final

from node.jobstate import NEW

if TYPE_CHECKING:
    # Type-only: a worker holds jobs and a job knows its worker. The mutual
    # reference is the model's, not a layering one (tests/test_imports.py).
    from node.clock import TimerHandle
    from node.session import Session, Slot

HIGH: Final = 0
NORMAL: Final = 1
LOW: Final = 2


class Function:
    __slots__ = ("dash", "delayed", "limits", "name", "pending", "queued", "queues", "running",
                 "sleepers", "uniques", "waking", "workers")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        # Jobs per state, kept by node.jobstate.move. The queues may still
        # hold jobs that left QUEUED (removed lazily); these counts never do.
        self.queued = 0
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

    def __repr__(self) -> str:
        return f"<Function {self.name!r}>"


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
        self.state = NEW
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

    @property
    def key(self) -> bytes:
        """What the job coalesces on: the unique, or the payload for ``-``."""
        return self.payload if self.unique == b"-" else self.unique

    @property
    def clients(self) -> int:
        """Foreground clients waiting on it."""
        return len(self.listeners) if self.listeners else 0

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.fn.name!r} {self.unique!r} state={self.state}>"
