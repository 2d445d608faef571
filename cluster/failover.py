"""Failover: when a node's lease expires, promote the copies we hold of its jobs.

etcd decides: a node whose lease expired leaves every member's map (the
same epoch everywhere). Each node that holds copies of that origin's jobs
then *promotes* them: it makes each copy a background job of its own through
the job manager's ordinary submit, in the origin's submission order, with
its priority, epoch time, reducer and unique — so a resubmit of the same
unique coalesces onto the promoted job, exactly as it would have on the dead
node. The submit is durable like any other: written in our group commit and
copied to our own replica (cluster/replication.py) before it counts as
promoted, and only then is the old copy deleted, so every job has two copies
at every moment (the new pair, or the old one). Jobs whose key another node
owns under the new map are then handed to it (cluster/handoff.py, as after
any ring change), so coalescing holds.

The handle changes: a handle names the node that owns the job (``H:<node>:<n>``)
so that any node routes GET_STATUS and WORK_* by it, and the dead node's
name would route nowhere. A status request for the old handle gets "unknown",
as for any job of a node that is gone.

Paced: copies are read and submitted in slices of SLICE, yielding to the
loop between slices, so a promotion of 100,000 copies never stalls the
lease keepalive's loop, client traffic, or the peer link.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import msgpack

from cluster.partition import PartitionMap
from node import protocol as P
from node.jobs import JobManager
from node.replicastore import ReplicaStore
from node.session import Session, Slot

log = logging.getLogger("gearmesh.cluster")

SLICE: Final = 2000


class _CopySlot(Slot):
    __slots__ = ("jid",)

    def __init__(self, jid: int) -> None:
        super().__init__()
        self.jid = jid


class _Promoter(Session):
    """The "client" promoted copies are submitted by: it learns, per copy,
    whether the job is now durable here (JOB_CREATED) or was refused."""

    __slots__ = ("current", "on_reply")
    holds_replies = False

    def __init__(self, on_reply: Callable[[int, bytes], None]) -> None:
        super().__init__(0, lambda data: None, "failover")
        self.current = 0
        self.on_reply = on_reply

    def send(self, data: bytes) -> None:  # an immediate reply (coalesced, refused)
        self.on_reply(self.current, data)

    def reserve(self) -> Slot:
        return _CopySlot(self.current)

    def fill(self, slot: Slot, data: bytes) -> None:
        if isinstance(slot, _CopySlot):
            self.on_reply(slot.jid, data)


class Failover:
    def __init__(self, node_id: str, manager: JobManager, store: ReplicaStore,
                 origins: set[str], after: Callable[[], object]) -> None:
        self.node_id = node_id
        self.m = manager
        self.store = store
        self.origins = origins  # shared with cluster.copies.CopyIntake
        self._after = after  # hands promoted jobs whose key moved to their owner
        self._running: dict[str, asyncio.Task[None]] = {}
        self.promoted = 0  # copies made jobs of ours, in total
        self.refused = 0  # copies the manager refused (kept for a later try)
        self.last_promotion: tuple[str, int, float] | None = None  # origin, jobs, seconds

    def set_map(self, pmap: PartitionMap) -> None:
        """Promote the copies of every origin that is no longer a member."""
        if self.node_id not in pmap.active:
            return  # not serving partitions: leave them for an active node
        loop = asyncio.get_running_loop()
        for origin in sorted(self.origins):
            if origin not in pmap.members and origin not in self._running:
                self._running[origin] = loop.create_task(self._promote(origin),
                                                         name=f"promote-{origin}")

    async def finished(self, origin: str) -> None:
        """Return once no promotion of ``origin``'s copies is running."""
        task = self._running.get(origin)
        if task is not None:
            await asyncio.wait([task])

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def synced(err: BaseException | None) -> None:
            if not done.done():
                done.set_result(None)
        self.store.sync(synced)  # called back on the loop
        await done

    async def _promote(self, origin: str) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        outstanding = 0
        all_sent = asyncio.Event()
        all_done = asyncio.Event()
        finished: list[int] = []
        counts = [0, 0]  # promoted, refused

        def flush_deletes() -> None:
            if finished:
                self.store.promoted_many(origin, finished[:])
                finished.clear()

        def on_reply(jid: int, data: bytes) -> None:
            nonlocal outstanding
            outstanding -= 1
            if P.packet_type(data) == P.JOB_CREATED:
                counts[0] += 1
                if not finished:
                    loop.call_soon(flush_deletes)
                finished.append(jid)
            else:
                counts[1] += 1
                log.warning("promoting copy %d of node %s was refused: %r", jid, origin,
                            data[12:].replace(b"\0", b" ")[:200])
            if outstanding == 0 and all_sent.is_set():
                all_done.set()

        holder = _Promoter(on_reply)
        try:
            # Copies that arrived just before the origin left are durable and
            # visible to the read below.
            await self._sync()
            unpack = msgpack.unpackb
            n = 0
            for copy in self.store.load(origin):
                f, u, prio, payload, when, reducer = unpack(copy.rec)
                holder.current = copy.id
                outstanding += 1
                self.m.submit(holder, f, u, payload, int(prio), True, int(when), reducer)
                n += 1
                if n % SLICE == 0:
                    await asyncio.sleep(0)
            all_sent.set()
            if outstanding:
                await all_done.wait()
            flush_deletes()
            await self._sync()
            promoted, refused = counts
            self.promoted += promoted
            self.refused += refused
            took = loop.time() - t0
            self.last_promotion = (origin, promoted, took)
            if not refused:
                self.origins.discard(origin)
            if n:
                log.warning("failover: node %s is gone; promoted %d of its queued background "
                            "job(s) in %.2fs%s", origin, promoted, took,
                            f" ({refused} refused, kept)" if refused else "")
            self._after()
        except Exception:
            log.exception("promoting the copies of node %s failed", origin)
        finally:
            self._running.pop(origin, None)

    def close(self) -> None:
        for task in self._running.values():
            task.cancel()
