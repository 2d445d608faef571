"""Moving queued background jobs to the node that owns their key now.

Two events move partitions: a node draining (SIGTERM, scale-in) gives up all
of them, and a ring change (a node joining, or one coming back to a changed
ring) moves some. Either way the queued and delayed background jobs of the
moved partitions follow their key, so the new owner coalesces against them
and nothing waits on a node that is leaving.

A job is handed over as an ordinary background submit (priority and epoch
time kept) on the peer link. It leaves this node — memory and store — only
when the new owner answers JOB_CREATED, which a durable owner sends after its
own commit: a job is never in neither place. If that answer is lost (the link
breaks at that moment) the job is in both and may run twice. Foreground jobs
(their clients wait on this node's job), background jobs a foreground client
has coalesced onto, and reduce jobs stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from cluster.frames import REQ, packet_type
from cluster.partition import PartitionMap
from cluster.peerlink import PeerLinks
from node import protocol as P
from node.jobs import HIGH, LOW, NORMAL, Job, JobManager
from node.session import Session
from node.stats import Counters

log = logging.getLogger("gearmesh.cluster")

HANDOFF_CONN: Final = -1  # the "connection" jobs are handed over from
_BG_SUBMIT: Final = {HIGH: P.SUBMIT_JOB_HIGH_BG, NORMAL: P.SUBMIT_JOB_BG, LOW: P.SUBMIT_JOB_LOW_BG}


class _Holder(Session):
    """Holds this node's jobs while they are on their way to another node."""

    __slots__ = ()
    holds_replies = False

    def __init__(self) -> None:
        super().__init__(0, lambda data: None, "handoff")


class Handoff:
    def __init__(self, node_id: str, manager: JobManager, links: PeerLinks,
                 counters: Counters, next_rid: Callable[[], int]) -> None:
        self.node_id = node_id
        self.m = manager
        self.links = links
        self.counters = counters
        self._next_rid = next_rid
        self._holder = _Holder()
        self._sent: dict[int, tuple[Job, str]] = {}  # request id → (job, new owner)
        self._all_answered: asyncio.Event | None = None
        self._rotate = 0

    def start(self, pmap: PartitionMap | None) -> int:
        """Send each queued or delayed background job whose key another node
        owns under ``pmap``: all of them when this node is not active in it,
        those of moved partitions otherwise. Returns how many were sent."""
        if pmap is None or not pmap.active:
            return 0
        draining = self.node_id not in pmap.active
        targets: dict[int, str] = {}

        def want(job: Job) -> bool:
            if not job.bg or job.listeners or job.reducer:
                return False
            key = job.payload if job.unique == b"-" else job.unique
            if key:
                target = pmap.owner_of_key(key)
            elif draining:
                self._rotate += 1  # no key: any other node will do; spread them
                target = pmap.active[self._rotate % len(pmap.active)]
            else:
                return False  # no key: it belongs where it was submitted
            if target is None or target == self.node_id:
                return False
            targets[job.id] = target
            return True

        taken = self.m.take_matching(self._holder, want)
        refused = [job for job in taken if not self._send(job, targets[job.id])]
        for job in reversed(refused):  # back to the head, in their order
            self.m.unassign(job)
        return len(taken) - len(refused)

    def _send(self, job: Job, target: str) -> bool:
        if job.when:
            ptype = P.SUBMIT_JOB_EPOCH
            args = [job.fn.name, job.unique, str(job.when).encode(), job.payload]
        else:
            ptype = _BG_SUBMIT[job.priority]
            args = [job.fn.name, job.unique, job.payload]
        rid = self._next_rid()
        if not self.links.send(target, [REQ, rid, HANDOFF_CONN, False, ptype, args]):
            return False
        self._sent[rid] = (job, target)
        return True

    def answered(self, rid: int, data: bytes) -> bool:
        """The new owner's reply to request ``rid``; False when it is not ours."""
        sent = self._sent.pop(rid, None)
        if sent is None:
            return False
        self._settle(sent[0], data)
        return True

    def node_lost(self, node_id: str) -> None:
        """Jobs on their way to a lost node stay here."""
        for rid in [r for r, (_, target) in self._sent.items() if target == node_id]:
            self._settle(self._sent.pop(rid)[0], b"")

    def _settle(self, job: Job, data: bytes) -> None:
        if packet_type(data) == P.JOB_CREATED:
            self.m.handed_off(job)
            self.counters.handed_off += 1
        else:
            if data:
                log.warning("handing job %d over was refused: %r; it stays here", job.id,
                            data[12:].replace(b"\0", b" "))
            self.m.unassign(job)
        if not self._sent and self._all_answered is not None:
            self._all_answered.set()

    async def drain(self, current_map: Callable[[], PartitionMap | None],
                    timeout: float) -> tuple[int, int]:
        """Hand everything over, again while submits routed here under the
        previous map still arrive, until nothing is left to send or the time
        is up. Returns (jobs handed over, background jobs still here)."""
        deadline = asyncio.get_running_loop().time() + timeout
        for _ in range(3):
            if not self.start(current_map()):
                break
            self._all_answered = asyncio.Event()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._all_answered.wait()
            except TimeoutError:
                break
            finally:
                self._all_answered = None
        left = sum(1 for j in self.m.jobs.values() if j.bg)
        return self.counters.handed_off, left
