"""The owner side of replication: a Store that keeps a second copy elsewhere.

The job manager writes durable background jobs through node.store.Store:
``add(job, done)``, ``remove(id, done)``. :class:`ReplicatingStore` wraps the
node's own store with that same interface, so the manager does not know
replication exists: ``add`` writes the row in the local group commit *and*
sends the copy to one other node (cluster/placement.py chooses which), and
calls ``done`` — which is when the client gets JOB_CREATED — only after both
the local commit and the replica's commit are done. The two overlap, so the
latency is about the larger of the two, not their sum.

Copies travel as typed frames in the ordinary peer batches: every copy and
deletion queued for one replica during a loop iteration goes as *one* frame,

    ["repl", seq, [[id, record], ...], [deleted id, ...]]   owner → replica
    ["racked", seq, verdict]                                  replica → owner

and the replica writes the whole frame in its own group commit
(node/replicastore.py) before it acknowledges. Acknowledgements are
cumulative per replica (frames to one peer arrive and commit in order).

Deletion: ``remove`` (a job finished) deletes the local row and the copy; its
``done`` — which JobManager uses to hold the worker's next reply — fires only
after both, so a job whose worker has heard back is gone from both disks and
is never promoted after a failover.

When the replica cannot be used (its link is down, it said it is not a
replica) the copy goes to the next candidate; with none left the submit is
refused (QUEUE_ERROR) unless the operator allowed single copies
(``--single-copy``). A cluster whose only active node is this one stores
single copies: it is not a cluster of two.

When a replica is lost, the jobs whose copies it held are copied again to
the next candidate (re-replication); ``under_replicated`` counts the jobs
here that have fewer than two copies meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import msgpack

from cluster.partition import PartitionMap
from cluster.peerlink import LinkState, PeerLinks
from cluster.placement import Placement, Verdict, job_partition, may_acknowledge
from node.store import Added, Done, R, Record, Store

log = logging.getLogger("gearmesh.cluster")

# A frame of copies is sent as soon as it holds this many bytes of records,
# not only at the end of the loop iteration: bounds one message's size (and
# the replica's one-commit latency) when a burst or a promotion makes many
# copies at once, or payloads are large.
FRAME_BYTES: Final = 256 * 1024
# A frame whose acknowledgement has not come this long after it was sent is
# sent again (copies and deletions are idempotent): the answer travels on the
# replica's own link to us, which can be missing (it just restarted and does
# not know our address yet) or break while ours stays up. After RESENDS tries
# the copies go to the next candidate.
ACK_TIMEOUT: Final = 3.0
RESENDS: Final = 3
REPL: Final = "repl"
RACKED: Final = "racked"
OK: Final = Verdict.ACCEPT.value
STALE: Final = Verdict.STALE.value


class ReplicationError(Exception):
    """A job could not get its second copy; the client hears QUEUE_ERROR."""


class _Add:
    """A job being written here and copied to a replica."""

    __slots__ = ("avoid", "copied", "done", "err", "local", "rec", "target")

    def __init__(self, rec: Any, done: Added[Any] | None) -> None:
        self.rec = rec
        self.done = done  # None: a re-replication nobody waits for
        self.local = done is None  # re-replications are on our disk already
        self.copied = False  # the replica confirmed its commit
        self.target: str | None = None  # where the copy went (None: nowhere, single copy)
        self.avoid: frozenset[str] = frozenset()  # candidates that failed it
        self.err: BaseException | None = None


class _Remove:
    __slots__ = ("done", "err", "left")

    def __init__(self, done: Done, left: int) -> None:
        self.done = done
        self.left = left
        self.err: BaseException | None = None

    def one_done(self, err: BaseException | None) -> None:
        if err is not None:
            self.err = err
        self.left -= 1
        if self.left == 0:
            self.done(self.err)


class _Outgoing:
    __slots__ = ("adds", "attempts", "dels", "puts", "removes", "sent_at", "size")

    def __init__(self) -> None:
        self.size = 0  # bytes of records in puts
        self.attempts = 0
        self.sent_at = 0.0
        self.puts: list[list[Any]] = []
        self.adds: list[_Add] = []
        self.dels: list[int] = []
        self.removes: list[_Remove | None] = []


class ReplicatingStore:
    """A Store: the node's own, plus one copy per job on another node."""

    def __init__(self, inner: Store, node_id: str, links: PeerLinks,
                 lease_held: Callable[[], bool], *, single_copy: bool = False) -> None:
        self.inner = inner
        self.durable = inner.durable
        self.node_id = node_id
        self.links = links
        self._lease_held = lease_held
        self.single_copy = single_copy
        self._map: PartitionMap | None = None
        self._placement: Placement | None = None
        self._loop = asyncio.get_running_loop()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._pending: dict[int, _Add] = {}  # written or being copied, not confirmed
        self._copies: dict[int, tuple[str, Any]] = {}  # confirmed: id → (holder, record)
        self._single: dict[int, Any] = {}  # confirmed with one copy only
        # Replayed from our disk at start: where their copies are is not
        # known (an earlier life of this node placed them), so a deletion is
        # sent to every other node, whatever holds the copy made since.
        self._replayed: set[int] = set()
        self._out: dict[str, _Outgoing] = {}
        self._inflight: dict[str, deque[tuple[int, _Outgoing]]] = {}
        self._seq = 0
        self._ack_timer: asyncio.TimerHandle | None = None
        # Jobs whose copy was sent to a node whose link then broke, and that
        # were copied elsewhere: if the link comes back without a restart
        # (which would have dropped them), that node is told to delete them.
        self._moved_from: dict[str, list[int]] = {}
        self._flush_scheduled = False
        self.frames_sent = 0
        self.copies_sent = 0

    # -- the map ----------------------------------------------------------

    def set_map(self, pmap: PartitionMap) -> None:
        self._map = pmap
        self._placement = Placement(pmap, self.node_id)
        if self._single and self._placement.others:
            # A node joined a cluster that was this one alone (or copies were
            # allowed single): give those jobs their second copy now.
            for jid, rec in list(self._single.items()):
                del self._single[jid]
                self._start(_Add(rec, None))

    @property
    def under_replicated(self) -> int:
        """Jobs here with fewer than two copies: single copies, and copies
        being made again after their replica was lost."""
        return len(self._single) + sum(1 for a in self._pending.values() if a.done is None)

    # -- Store: adding ----------------------------------------------------

    def backlog(self) -> int:
        return self.inner.backlog()

    def adopt_replayed(self, recs: list[Any]) -> None:
        """Jobs replayed from our disk: copy each again (to the node placement
        picks now — usually the one that still holds its old copy, which the
        new one replaces), so every job has two copies after a restart too."""
        for rec in recs:
            self._replayed.add(rec.id)
            self._single[rec.id] = rec
        if self._placement is not None and self._placement.others:
            self.set_map(self._placement.map)

    def add(self, rec: R, done: Added[R]) -> None:
        placement = self._placement
        if placement is None or not placement.others:
            # Not a cluster of two (yet): one copy is all there is; it gets its
            # second when another node is there (set_map).
            self.inner.add(rec, self._one_copy(done))
            return
        if not may_acknowledge(self._map, self.node_id, self._lease_held()):
            done(rec, ReplicationError(
                f"node {self.node_id} lost its cluster lease; resubmit to another node"))
            return
        a = _Add(rec, done)
        self._pending[rec.id] = a
        self.inner.add(rec, self._local_done)
        self._start(a)

    def _one_copy(self, done: Added[Any]) -> Added[Any]:
        def committed(rec: Any, err: BaseException | None) -> None:
            if err is None:
                self._single[rec.id] = rec
            done(rec, err)
        return committed

    def _local_done(self, rec: Record, err: BaseException | None) -> None:
        a = self._pending.get(rec.id)
        if a is None or a.rec is not rec:
            return
        a.local = True
        if err is not None and a.err is None:
            a.err = err
        self._settle(a)

    def _start(self, a: _Add) -> None:
        """Send a's copy to the best usable candidate, or settle it without."""
        placement = self._placement
        rec = a.rec
        if a.done is None:
            self._pending[rec.id] = a
        target = None
        if placement is not None:
            target = placement.target(job_partition(rec.unique, rec.payload, rec.id),
                                      self._usable, a.avoid)
        a.target = target
        a.copied = False
        if target is None:
            if a.done is None or self.single_copy or placement is None or not placement.others:
                a.copied = True  # allowed: one copy, counted under-replicated
            else:
                a.err = ReplicationError("no replica reachable for this job's second copy")
            self._settle(a)
            return
        out = self._outgoing(target)
        packed = self._pack([rec.function, rec.unique, rec.priority, rec.payload, rec.when,
                             rec.reducer])
        out.puts.append([rec.id, packed])
        out.adds.append(a)
        out.size += len(packed)
        self.copies_sent += 1
        if out.size >= FRAME_BYTES:
            del self._out[target]
            self._send(target, out)

    def _usable(self, node: str) -> bool:
        return self.links.state(node) in (LinkState.UP, LinkState.CONNECTING)

    def _settle(self, a: _Add) -> None:
        """Tell the waiter once both copies are done, or one failed."""
        if a.err is not None or (a.local and a.copied):
            self._finish(a)

    def _finish(self, a: _Add) -> None:
        rec = a.rec
        if self._pending.get(rec.id) is a:
            del self._pending[rec.id]
        if a.err is None:
            if a.target is not None:
                self._copies[rec.id] = (a.target, rec)
            else:
                self._single[rec.id] = rec
        elif a.done is not None:
            # Refused: take our row back (the store applies this after the
            # add, in order) and the copy if one was made, so no node runs it.
            self.inner.remove(rec.id)
            if a.copied and a.target is not None:
                self._queue_delete(a.target, rec.id, None)
        done = a.done
        if done is not None:
            a.done = None
            done(rec, a.err)

    # -- Store: removing --------------------------------------------------

    def remove(self, job_id: int, done: Done | None = None) -> None:
        held = self._copies.pop(job_id, None)
        self._single.pop(job_id, None)
        a = self._pending.pop(job_id, None)
        if a is not None and a.target is not None:
            held = (a.target, a.rec)  # a re-replication in flight: delete it there too
        if job_id in self._replayed:
            self._replayed.discard(job_id)
            if self._placement is not None:
                for node in self._placement.others:
                    if held is None or node != held[0]:
                        self._queue_delete(node, job_id, None)
        if held is None:
            self.inner.remove(job_id, done)
            return
        if done is None:
            self.inner.remove(job_id)
            self._queue_delete(held[0], job_id, None)
            return
        r = _Remove(done, 2)
        self.inner.remove(job_id, r.one_done)
        self._queue_delete(held[0], job_id, r)

    def _queue_delete(self, node: str, job_id: int, r: _Remove | None) -> None:
        if not self._usable(node):
            if r is not None:
                r.one_done(None)  # its holder is gone; it re-replicates nothing of ours
            return
        out = self._outgoing(node)
        out.dels.append(job_id)
        out.removes.append(r)

    # -- Store: the rest --------------------------------------------------

    def load(self) -> Any:
        return self.inner.load()

    def next_id(self) -> int:
        return self.inner.next_id()

    def close(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self.inner.close()

    # -- frames -----------------------------------------------------------

    def _outgoing(self, node: str) -> _Outgoing:
        out = self._out.get(node)
        if out is None:
            out = self._out[node] = _Outgoing()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return out

    def _flush(self) -> None:
        """One frame per replica for everything queued this loop iteration."""
        self._flush_scheduled = False
        outs, self._out = self._out, {}
        for node, out in outs.items():
            self._send(node, out)

    def _send(self, node: str, out: _Outgoing) -> None:
        self._seq += 1
        seq = self._seq
        if self.links.send(node, [REPL, seq, out.puts, out.dels]):
            self.frames_sent += 1
            out.attempts += 1
            out.sent_at = self._loop.time()
            self._inflight.setdefault(node, deque()).append((seq, out))
            if self._ack_timer is None:
                self._ack_timer = self._loop.call_later(ACK_TIMEOUT, self._check_acks)
        else:
            self._lost(node, [out])

    def _check_acks(self) -> None:
        """Frames not acknowledged within ACK_TIMEOUT: again, or elsewhere."""
        self._ack_timer = None
        late = self._loop.time() - ACK_TIMEOUT
        for node in list(self._inflight):
            q = self._inflight[node]
            again: list[_Outgoing] = []
            while q and q[0][1].sent_at <= late:
                again.append(q.popleft()[1])
            if not q:
                del self._inflight[node]
            for out in again:
                if out.attempts < RESENDS and self._usable(node):
                    self._send(node, out)
                else:
                    log.warning("replica %s did not confirm copies for %.0fs; sending them to "
                                "the next node", node, ACK_TIMEOUT * out.attempts)
                    self._lost(node, [out])
        if self._inflight and self._ack_timer is None:
            self._ack_timer = self._loop.call_later(ACK_TIMEOUT / 2, self._check_acks)

    def on_acked(self, node: str, seq: int, verdict: str) -> None:
        """The replica's commit covering our frames up to ``seq`` is done
        (``ok``), or it refused them: ``stale`` (we are not a member of its
        map: our lease expired, and we must acknowledge nothing), or
        ``not-replica`` / ``error`` (try the next candidate)."""
        ok = verdict == OK
        q = self._inflight.get(node)
        while q and q[0][0] <= seq:
            _, out = q.popleft()
            for a in out.adds:
                if self._pending.get(a.rec.id) is not a or a.target != node:
                    continue  # finished or re-sent meanwhile
                if ok:
                    a.copied = True
                    self._settle(a)
                elif verdict == STALE:
                    a.err = ReplicationError(
                        f"node {self.node_id} is not in node {node}'s cluster map (its lease "
                        "expired); resubmit to another node")
                    self._settle(a)
                else:
                    a.avoid = a.avoid | {node}
                    self._start(a)
            for r in out.removes:
                if r is not None:
                    r.one_done(None)
        if q is not None and not q:
            del self._inflight[node]

    def node_lost(self, node: str) -> None:
        """A replica's link broke or it left the map: what it was sent and
        not confirmed goes to the next candidate, and the jobs whose copies
        it held are copied again."""
        outs = [out for _, out in self._inflight.pop(node, deque())]
        buffered = self._out.pop(node, None)
        if buffered is not None:
            outs.append(buffered)
        self._lost(node, outs)
        lost = [(jid, rec) for jid, (holder, rec) in self._copies.items() if holder == node]
        moved = self._moved_from.setdefault(node, [])
        for jid, rec in lost:
            del self._copies[jid]
            moved.append(jid)
            a = _Add(rec, None)
            a.avoid = frozenset({node})
            self._start(a)
        if lost:
            log.warning("replica %s lost: copying %d job(s) again", node, len(lost))

    def node_back(self, node: str) -> None:
        """The link to ``node`` is up again: copies it may still hold of jobs
        that were copied elsewhere meanwhile are deleted there."""
        moved = self._moved_from.pop(node, None)
        if moved:
            for jid in moved:
                self._queue_delete(node, jid, None)

    def _lost(self, node: str, outs: list[_Outgoing]) -> None:
        moved = self._moved_from.setdefault(node, [])
        for out in outs:
            for a in out.adds:
                if self._pending.get(a.rec.id) is a:
                    moved.append(a.rec.id)
                    a.avoid = a.avoid | {node}
                    self._start(a)
            for r in out.removes:
                if r is not None:
                    r.one_done(None)
