"""The seam between a node and the cluster layer — the one place they meet.

A standalone node has neither protocol and pays nothing for them. In a
cluster, ``cluster/`` implements both. node/dispatch.py, in front of the job
manager, asks the :class:`Forwarder` about requests of *local connections*
(requests another node routed here skip it: the job manager only ever does
local work); the job manager tells :class:`ClusterHooks` about dispatch:

* a submit whose key another node owns, a status request for a handle or
  unique another node owns, a work result for another node's job: the
  cluster forwards it (``forward_*`` return True) and later fills the
  session's reply slot;
* dispatch across nodes: the manager reports when it has runnable jobs that
  no local sleeping worker can take (``unserved``) and when the number of
  sleeping workers of a function changes (``sleepers_changed``); the owner
  then pushes such a job to a node where a worker sleeps, one job per
  sleeping worker, never to all. A worker's grab takes a job pushed to its
  node first (``grab``), and PRE_SLEEP asks whether one waits (``remote_work``);
* a session going away (``detached``), so the owners it talked to requeue
  its jobs and drop its subscriptions.

The cluster drives the node back through public methods only, and sees
jobs only as read-only :class:`JobInfo`: it wraps peers on other nodes in
:class:`node.session.Session` subclasses and calls
``Dispatcher.handle_local`` for their requests, and the job manager's
"for the cluster" methods (node/jobs.py: ``session``, ``abilities``,
``unclaimed``, ``sleepers``, ``held``, ``take_queued``/``reassign``/
``unassign``, ``take_matching``/``handed_off``, ``wake_sleepers``,
``detach``) for dispatch and handoff. It never reads the manager's tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from node.store import Record

if TYPE_CHECKING:
    from node.session import Session


class Forwarder(Protocol):
    """Asked by node/dispatch.py, for requests of local connections only."""

    def forward_submit(self, s: Session, ptype: int, args: tuple[bytes, ...]) -> bool:
        """True when another node owns this submit's key and it was sent there."""
        ...

    def forward_handle(self, s: Session, ptype: int, args: tuple[bytes, ...],
                       handle: bytes) -> bool:
        """True when ``handle`` names another node (GET_STATUS, WORK_*)."""
        ...

    def forward_unique(self, s: Session, args: tuple[bytes, ...], unique: bytes) -> bool:
        """True when another node owns ``unique`` (GET_STATUS_UNIQUE)."""
        ...

    def grab(self, s: Session, kind: int) -> bool:
        """True when a job another node pushed here was assigned to s (the
        cluster sent s its JOB_ASSIGN*)."""
        ...

    def remote_work(self, s: Session) -> bool:
        """Whether a job pushed here waits for one of s's functions."""
        ...

    def detached(self, s: Session) -> None:
        """A local connection closed."""
        ...


class ClusterHooks(Protocol):
    """Told by the job manager about dispatch across nodes."""

    def unserved(self, name: bytes, count: int) -> None:
        """``count`` runnable jobs of function ``name`` have no local worker
        coming for them."""
        ...

    def sleepers_changed(self, name: bytes) -> None: ...


class JobInfo(Record, Protocol):
    """A job as the cluster may see it: read-only (node.job.Job is one)."""

    @property
    def bg(self) -> bool: ...
    @property
    def key(self) -> bytes:
        """What it coalesces on (and is routed by): the unique, or the
        payload for ``-``."""
        ...
    @property
    def clients(self) -> int:
        """Foreground clients waiting on it."""
        ...
