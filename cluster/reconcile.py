"""A node that comes back after its partitions may have failed over.

Two ways back: it restarts with its old disk (kill -9, a lost machine
reattached), or it was paused or cut off past its lease (SIGSTOP, a long GC,
a network partition) and carries on. Either way its queued background jobs
may meanwhile have been promoted by the nodes that held their copies
(cluster/failover.py) — and some of those may already have run there.

So before it runs any of them, the node *holds* them (they leave the queue,
no worker gets them) and asks every other member which of its jobs it
promoted (``["asked"]``). A promoting node keeps a tombstone for each copy it
promoted (node/replicastore.py) and answers with their ids
(``["promoted", ids, last]``), after any promotion of this origin still
running has finished. The returning node then drops the jobs that were
promoted — they live, or lived and completed, elsewhere — and puts the rest
back in its queue; finally it tells the peers to forget the tombstones
(``["forget"]``). Nothing that completed elsewhere runs again, and nothing
that was never promoted is lost.

When is a node "back": at start, if it replayed jobs from its disk; and
whenever a map arrives that no longer lists it (its own registration was
deleted: its lease expired), from when it is a member again. A peer that
does not answer within ASK_TIMEOUT (it died meanwhile) counts as having
promoted nothing: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from cluster.failover import Failover
from cluster.partition import PartitionMap
from cluster.peerlink import PeerLinks
from node.jobs import JobManager
from node.replicastore import ReplicaStore
from node.seam import JobInfo
from node.session import Session

log = logging.getLogger("gearmesh.cluster")

ASKED: Final = "asked"
PROMOTED: Final = "promoted"
FORGET: Final = "forget"
ASK_TIMEOUT: Final = 10.0  # seconds to wait for the peers' answers
ANSWER_CHUNK: Final = 20000  # ids per "promoted" frame
LINK_WAIT: Final = 10.0  # how long an answer waits for a link back to the asker


class _Holder(Session):
    __slots__ = ()
    holds_replies = False

    def __init__(self) -> None:
        super().__init__(0, lambda data: None, "reconcile")


class Reconcile:
    def __init__(self, node_id: str, manager: JobManager, links: PeerLinks,
                 store: ReplicaStore, failover: Failover) -> None:
        self.node_id = node_id
        self.m = manager
        self.links = links
        self.store = store
        self.failover = failover
        self._holder = _Holder()
        self._held: dict[int, JobInfo] = {}
        self._waiting: set[str] | None = None  # asked, not answered yet
        self._answered: set[str] = set()
        self._elsewhere: set[int] = set()
        self._was_member = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0  # jobs dropped because another node had promoted them

    # -- the returning node ---------------------------------------------

    def hold(self, why: str) -> None:
        """Take every queued background job out of the queue until the peers
        have said which of them they promoted."""
        taken = self.m.take_matching(self._holder, lambda j: j.bg and j.clients == 0)
        for job in taken:
            self._held[job.id] = job
        if taken:
            log.warning("%s: holding %d queued background job(s) until the other nodes say "
                        "which of them they promoted", why, len(taken))

    def set_map(self, pmap: PartitionMap) -> None:
        member = self.node_id in pmap.members
        if not member and self._was_member:
            self.hold("this node's lease expired")
            self._waiting = None  # ask again once we are a member again
        self._was_member = member
        if not member or not self._held:
            return
        if self._waiting is None:
            others = [n for n in pmap.members if n != self.node_id]
            self._waiting = {n for n in others if self.links.send(n, [ASKED])}
            self._answered = set()
            self._elsewhere = set()
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(ASK_TIMEOUT,
                                                                    self._timed_out)
        else:
            self._waiting &= set(pmap.members)
        self._maybe_done()

    def node_lost(self, node: str) -> None:
        if self._waiting is not None and node in self._waiting:
            self._waiting.discard(node)
            self._maybe_done()

    def on_promoted(self, sender: str, frame: list[Any]) -> None:
        self._elsewhere.update(int(i) for i in frame[1])
        if frame[2] and self._waiting is not None and sender in self._waiting:
            self._waiting.discard(sender)
            self._answered.add(sender)
            self._maybe_done()

    def _timed_out(self) -> None:
        self._timer = None
        if self._waiting:
            log.warning("no answer from %s about promoted jobs within %gs; running every held "
                        "job (at least once)", ", ".join(sorted(self._waiting)), ASK_TIMEOUT)
            self._waiting = set()
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self._waiting is None or self._waiting:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, {}
        dropped = 0
        for jid, job in held.items():
            if jid in self._elsewhere:
                self.m.handed_off(job)  # it lives (or lived) on the node that promoted it
                dropped += 1
            else:
                self.m.unassign(job)
        self.dropped += dropped
        if held:
            log.warning("back in the cluster: %d held job(s) had been promoted elsewhere and "
                        "were dropped, %d run here", dropped, len(held) - dropped)
        for peer in self._answered:
            self.links.send(peer, [FORGET])
        self._answered = set()
        self._elsewhere = set()
        self._waiting = None

    # -- the nodes it asks ----------------------------------------------

    def on_asked(self, sender: str, frame: list[Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(sender))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, sender: str) -> None:
        await self.failover.finished(sender)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINK_WAIT
        # The asker may be in our map a moment after it asked: a timer, not
        # synchronisation — there is no event for "a link was created".
        while self.links.state(sender) is None and loop.time() < deadline:
            await asyncio.sleep(0.1)
        ids = self.store.promoted_ids(sender)
        for i in range(0, max(len(ids), 1), ANSWER_CHUNK):
            last = i + ANSWER_CHUNK >= len(ids)
            self.links.send(sender, [PROMOTED, ids[i:i + ANSWER_CHUNK], last])
        if ids:
            log.warning("node %s is back: told it which %d of its jobs were promoted here",
                        sender, len(ids))

    def on_forget(self, sender: str, frame: list[Any]) -> None:
        self.store.forget_promoted(sender)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
