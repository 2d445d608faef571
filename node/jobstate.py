"""Where a job is in its life, and the one place it moves from state to state.

Every change of ``Job.state`` goes through :func:`move`, which checks it
against the transition table and keeps the function's count of jobs in each
state (``Function.queued``, ``delayed``, ``pending``, ``running``) in step
with it. The counts are read on every submit and grab (``fn.queued >
fn.waking`` decides whether to wake a worker), so they are plain ints kept
up to date here rather than recounted; keeping all their edits in one
function is what keeps them right.

Pure: no I/O, no clock. Queues, the delayed heap and the job table are the
job manager's; this module only knows states and counts.
"""

from __future__ import annotations

from typing import Final, Protocol

NEW: Final = 5  # created, placed nowhere yet: counted in no state
PENDING: Final = 0  # background job waiting for its commit: coalescable, not runnable
QUEUED: Final = 1
DELAYED: Final = 2  # epoch job whose time has not come
RUNNING: Final = 3  # held by a worker (or by the cluster on its way to one)
GONE: Final = 4  # completed, failed, cancelled, abandoned or handed to another node

NAMES: Final = {NEW: "new", PENDING: "pending", QUEUED: "queued", DELAYED: "delayed",
                RUNNING: "running", GONE: "gone"}

# Which states a job may move to from each state. Anything else is a bug in
# the manager, and move() says so instead of letting a count drift.
TRANSITIONS: Final[dict[int, frozenset[int]]] = {
    # submit: durable background (PENDING), epoch in the future (DELAYED), else QUEUED
    NEW: frozenset({PENDING, QUEUED, DELAYED}),
    # committed (QUEUED/DELAYED), or the commit failed (GONE)
    PENDING: frozenset({QUEUED, DELAYED, GONE}),
    # a worker or a push takes it (RUNNING); cancelled or abandoned (GONE)
    QUEUED: frozenset({RUNNING, GONE}),
    # its time came (QUEUED), handed over (RUNNING), cancelled or abandoned (GONE)
    DELAYED: frozenset({QUEUED, RUNNING, GONE}),
    # requeued or returned unstarted (QUEUED, DELAYED if its time is still to
    # come), finished (GONE)
    RUNNING: frozenset({QUEUED, DELAYED, GONE}),
    GONE: frozenset(),
}


# The table as one set of (from << 3 | to): one lookup per move, on the hot path.
_ALLOWED: Final = frozenset(a << 3 | b for a, nexts in TRANSITIONS.items() for b in nexts)


class InvalidTransition(RuntimeError):
    """A job was asked to move where the table does not allow."""


class StateCounts(Protocol):
    """What move() keeps up to date: a function's jobs per state."""

    queued: int
    delayed: int
    pending: int
    running: int


class Stateful(Protocol):
    state: int

    @property
    def fn(self) -> StateCounts: ...


def move(job: Stateful, to: int) -> None:
    """Move ``job`` to state ``to`` and adjust its function's counts."""
    frm = job.state
    if (frm << 3 | to) not in _ALLOWED:
        raise InvalidTransition(f"job {job!r}: {NAMES.get(frm, frm)} -> {NAMES.get(to, to)}")
    fn = job.fn
    # If-chains, not a table of attribute names: this runs several times per
    # job, and getattr/setattr would cost more than the rest of it.
    if frm == QUEUED:
        fn.queued -= 1
    elif frm == RUNNING:
        fn.running -= 1
    elif frm == DELAYED:
        fn.delayed -= 1
    elif frm == PENDING:
        fn.pending -= 1
    if to == QUEUED:
        fn.queued += 1
    elif to == RUNNING:
        fn.running += 1
    elif to == DELAYED:
        fn.delayed += 1
    elif to == PENDING:
        fn.pending += 1
    job.state = to
