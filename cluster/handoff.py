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

Paced, so a node holding hundreds of thousands of jobs neither stalls its
loop nor floods a peer: at most WINDOW handoffs are unanswered at a time;
each answer sends the next job. The rest wait here (held, so no local
worker starts them) until their turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from cluster.frames import REQ
from cluster.partition import PartitionMap
from cluster.peerlink import PeerLinks
from node import protocol as P
from node.job import HIGH, LOW, NORMAL
from node.jobs import JobManager
from node.seam import JobInfo
from node.session import Session
from node.stats import Counters

log = logging.getLogger("gearmesh.cluster")

HANDOFF_CONN: Final = -1  # the "connection" jobs are handed over from
# Handoffs sent and not answered yet, at most: bounds the peer's outbox and
# the new owner's burst, while keeping its group commits full.
WINDOW: Final = 2000
# While a target's link is down (it may be redialling), try again this often.
RETRY: Final = 0.2
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
        self._sent: dict[int, tuple[JobInfo, str]] = {}  # request id → (job, new owner)
        self._backlog: deque[tuple[JobInfo, str]] = deque()  # taken, waiting for the window
        self._all_answered: asyncio.Event | None = None
        self._rotate = 0
        self.refused = 0  # jobs put back by the last start(): their target was unreachable

    def start(self, pmap: PartitionMap | None) -> int:
        """Send each queued or delayed background job whose key another node
        owns under ``pmap``: all of them when this node is not active in it,
        those of moved partitions otherwise. Returns how many were sent."""
        if pmap is None or not pmap.active:
            return 0
        draining = self.node_id not in pmap.active
        targets: dict[int, str] = {}

        def want(job: JobInfo) -> bool:
            if not job.bg or job.clients or job.reducer:
                return False
            key = job.key
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
        self._backlog.extend((job, targets[job.id]) for job in taken)
        self.refused = self._pump()
        return len(taken) - self.refused

    def _pump(self) -> int:
        """Send from the backlog while the window has room; jobs whose target
        refuses go back to the head of their queue. Returns how many did."""
        backlog = self._backlog
        refused: list[JobInfo] = []
        while backlog and len(self._sent) < WINDOW:
            job, target = backlog.popleft()
            if not self._send(job, target):
                refused.append(job)
        for job in reversed(refused):  # back to the head, in their order
            self.m.unassign(job)
        return len(refused)

    @property
    def busy(self) -> bool:
        """Handoffs are waiting to be sent or answered."""
        return bool(self._sent or self._backlog)

    def _send(self, job: JobInfo, target: str) -> bool:
        if job.when:
            ptype = P.SUBMIT_JOB_EPOCH
            args = [job.function, job.unique, str(job.when).encode(), job.payload]
        else:
            ptype = _BG_SUBMIT[job.priority]
            args = [job.function, job.unique, job.payload]
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
        waiting = [job for job, target in self._backlog if target == node_id]
        if waiting:
            self._backlog = deque(e for e in self._backlog if e[1] != node_id)
            for job in reversed(waiting):
                self.m.unassign(job)
        for rid in [r for r, (_, target) in self._sent.items() if target == node_id]:
            self._settle(self._sent.pop(rid)[0], b"")

    def _settle(self, job: JobInfo, data: bytes) -> None:
        if P.packet_type(data) == P.JOB_CREATED:
            self.m.handed_off(job)
            self.counters.handed_off += 1
        else:
            if data:
                log.warning("handing job %d over was refused: %r; it stays here", job.id,
                            P.payload_of(data).replace(b"\0", b" "))
            self.m.unassign(job)
        if self._backlog:
            self._pump()
        if not self._sent and not self._backlog and self._all_answered is not None:
            self._all_answered.set()

    async def drain(self, current_map: Callable[[], PartitionMap | None],
                    timeout: float) -> tuple[int, int, str]:
        """Hand everything over — again and again while submits routed here
        under the previous map still arrive, or while a target's link is
        redialling — until nothing is left or ``timeout`` is up. Returns
        (jobs handed over, queued background jobs still here, why)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        why = ""
        while True:
            pmap = current_map()
            others = [n for n in (pmap.active if pmap is not None else ()) if n != self.node_id]
            if not others:
                why = "no other active node to hand them to"
                break
            sent = self.start(pmap)
            if self.busy:
                self._all_answered = asyncio.Event()
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._all_answered.wait()
                except TimeoutError:
                    why = f"not all answered within {timeout:g}s"
                    break
                finally:
                    self._all_answered = None
            elif not sent:
                if not self.refused:
                    break  # nothing left to hand over
                if loop.time() + RETRY >= deadline:
                    why = f"their new owners were unreachable for {timeout:g}s"
                    break
                # Timer, not synchronisation: a target is redialling.
                await asyncio.sleep(RETRY)
        return self.counters.handed_off, self.left(), why

    def left(self) -> int:
        """Background jobs here that a drain should have moved: queued or
        delayed, or still on their way."""
        return self.m.background_left(self._holder)
