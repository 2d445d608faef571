"""Routing jobs between nodes: the cluster side of node/seam.py.

Roles, as DESIGN.md names them: the *entry node* is where a client or worker
is connected, the *owner* holds the job (chosen by the partition map from the
job's unique id), the *worker node* is where the worker that runs it sits.

The owner's job manager does all the job logic. Peers on other nodes appear
to it as :class:`RemoteSession` objects — one per (node, connection) — so a
forwarded submit, grab or work result is handled exactly like a local one,
and whatever the manager sends to such a session travels back over the peer
link. Replies to forwarded requests carry the request id (``rep``); anything
else (WORK_* for a subscribed client, an error for a worker) is ``out``. The
entry node keeps each connection's reply order with the session's slots.

Dispatch across nodes (work-conserving, one job per sleeping worker):

* every node advertises, per function, how many of its workers sleep (``sup``);
* an owner with runnable jobs that no local worker is coming for *pushes*
  them, one per advertised sleeper, spreading over the nodes that have some;
  it counts a pushed job as running, held for that node (a proxy with
  connection 0);
* the worker node NOOPs one sleeper per pushed job and keeps the job (the
  next sleeper too if that one does not GRAB within node.wakeup.WAKE_GRACE); a
  worker's GRAB takes a pushed job before local work and the node tells the
  owner which connection took it (``taken``), so its results, timeout and
  disconnection apply as for any remote worker;
* a push that finds no sleeper (or awake worker), or that no worker took
  within PUSH_HOLD (PUSH_HOLD_AWAKE when no sleeper was woken for it),
  goes back (``return``) to the head of the owner's queue, unstarted;
* a periodic tick re-offers queued work to nodes that advertise sleepers,
  so a job is never left queued while a worker that can do it sleeps.

Pushing, rather than waking a remote worker and letting it grab from the
owner, saves two of the four peer-link hops between "job queued" and "worker
has it", and the worker node never forwards a grab that finds nothing.

Routing key: the unique id alone (the payload for unique ``-``), not function
+ unique. GET_STATUS_UNIQUE carries no function, so only a key without it
lets any node find the owner; jobs of different functions with the same
unique merely share an owner.

Frames on the peer link: cluster/frames.py. Moving queued jobs when
partitions move: cluster/handoff.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, cast

from cluster.frames import GONE, OUT, PUSH, REP, REQ, RETURN, SUP, TAKEN
from cluster.handoff import Handoff
from cluster.partition import PartitionMap
from cluster.peerlink import LinkState, PeerLinks
from node import protocol as P
from node import replies as R
from node.dispatch import Dispatcher
from node.handles import node_of
from node.jobs import JobManager
from node.session import Session, Slot
from node.stats import Counters
from node.wakeup import WakeTracker

log = logging.getLogger("gearmesh.cluster")

__all__ = ["GONE", "OUT", "PUSH", "REP", "REQ", "RETURN", "SUP", "TAKEN", "RemoteSession",
           "Router"]

# What a forwarded request was, so the reply can be post-processed.
K_SUBMIT_FG: Final = 1
K_SUBMIT_BG: Final = 2
K_STATUS: Final = 3
K_STATUS_UNIQUE: Final = 4

_BG_TYPES: Final = frozenset({P.SUBMIT_JOB_BG, P.SUBMIT_JOB_HIGH_BG, P.SUBMIT_JOB_LOW_BG,
                              P.SUBMIT_JOB_EPOCH, P.SUBMIT_REDUCE_JOB_BACKGROUND})
_FINAL_TYPES: Final = frozenset({P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION})
_FG_TYPES: Final = frozenset({P.SUBMIT_JOB, P.SUBMIT_JOB_HIGH, P.SUBMIT_JOB_LOW,
                              P.SUBMIT_REDUCE_JOB})
_JOB_CREATED: Final = P.JOB_CREATED.to_bytes(4, "big")
TICK: Final = 0.25
# How long a pushed job may wait here for a worker to take it. The sleeper it
# woke grabs within milliseconds unless it died or took other work first.
PUSH_HOLD: Final = 0.5
# How long one kept for an awake worker may wait: that worker may be busy with
# another node's job (a worker connected to several nodes is awake on all of
# them), so a short wait, enough for one that just finished to grab or sleep.
PUSH_HOLD_AWAKE: Final = 0.02
HOLDER_CONN: Final = 0  # the proxy that holds jobs pushed to a node, not yet taken
SUPPLY_DELAY: Final = 0.05  # how stale a non-zero sleeper count may be
SUPPLY_REFRESH: Final = 1.0  # exact counts re-sent this often while workers sleep


class RemoteSlot(Slot):
    __slots__ = ("rid",)

    def __init__(self, rid: int) -> None:
        super().__init__()
        self.rid = rid


class RemoteSession(Session):
    """A client or worker connected to another node, as this (owner) node sees it."""

    __slots__ = ("conn", "lazy", "links", "node_id", "rid")
    holds_replies = False

    def __init__(self, sid: int, links: PeerLinks, node_id: str, conn: int) -> None:
        super().__init__(sid, self._write_out, node_id)
        self.links = links
        self.node_id = node_id
        self.conn = conn
        self.rid = 0  # the forwarded request being handled right now
        # Set while handling a foreground submit: its JOB_CREATED may wait to
        # ride with the job's first result (PeerLinks.send, urgent=False).
        self.lazy = False

    def _write_out(self, data: bytes) -> None:
        self.links.send(self.node_id, [OUT, self.conn, data])

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        rid = self.rid
        if rid:
            self.rid = 0
            urgent = not self.lazy or data[4:8] != _JOB_CREATED
            self.links.send(self.node_id, [REP, rid, self.conn, data], urgent)
        else:
            self.links.send(self.node_id, [OUT, self.conn, data])

    def reserve(self) -> Slot:
        slot = RemoteSlot(self.rid)
        self.rid = 0
        return slot

    def fill(self, slot: Slot, data: bytes) -> None:
        # Every slot of a proxy comes from its reserve(): a RemoteSlot.
        if not self.closed:
            self.links.send(self.node_id, [REP, cast(RemoteSlot, slot).rid, self.conn, data])


class _Pushed:
    __slots__ = ("handle", "name", "owner", "payload", "reducer", "unique", "until")

    def __init__(self, owner: str, handle: bytes, name: bytes, unique: bytes, reducer: bytes,
                 payload: bytes, until: float) -> None:
        self.owner = owner
        self.handle = handle
        self.name = name
        self.unique = unique
        self.reducer = reducer
        self.payload = payload
        self.until = until  # returned to its owner if no worker took it by then


class _Pending:
    __slots__ = ("arg", "frame", "kind", "owner", "session", "slot")

    def __init__(self, session: Session, slot: Slot, kind: int, owner: str, arg: bytes,
                 frame: list[Any]) -> None:
        self.session = session
        self.slot = slot
        self.kind = kind
        self.owner = owner
        self.arg = arg  # the handle or unique of a status request
        self.frame = frame  # the request, to send it again elsewhere if its owner is lost


class _Relay(Session):
    """A submit sent again after its owner was lost: its first reply fills the
    slot the client's connection reserved for the original request (so reply
    order holds), later output (a foreground job's results) goes to it."""

    __slots__ = ("_slot", "_target")
    holds_replies = False

    def __init__(self, target: Session, slot: Slot) -> None:
        super().__init__(target.id, self._deliver, target.peer, target.fd)
        self._target = target
        self._slot: Slot | None = slot
        self.exceptions = target.exceptions

    def _deliver(self, data: bytes) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            self._target.fill(slot, data)
        else:
            self._target.send(data)


class Router:
    """Implements node.seam.Forwarder and node.seam.ClusterHooks for one node."""

    def __init__(self, node_id: str, manager: JobManager, dispatcher: Dispatcher,
                 links: PeerLinks, counters: Counters) -> None:
        self.node_id = node_id
        self.m = manager
        self.dispatcher = dispatcher
        self.links = links
        self.counters = counters
        self.map: PartitionMap | None = None
        self._rid = 0
        self._pending: dict[int, _Pending] = {}
        self._proxies: dict[tuple[str, int], RemoteSession] = {}
        self._next_proxy = 0
        # entry side: which owners each local connection talked to, and the
        # remote foreground jobs it waits on (handle → owner).
        self._contacted: dict[int, set[str]] = {}
        self._listening: dict[int, dict[bytes, str]] = {}
        # worker side: jobs owners pushed here, per function, oldest first.
        self._pushed: dict[bytes, deque[_Pushed]] = {}
        # pushed jobs taken by a local worker whose owner has not been told
        # yet: connection → handle → owner.
        self._untold: dict[int, dict[bytes, str]] = {}
        # draining: jobs sent to their new owners, by request id, until answered.
        self.handoff = Handoff(node_id, manager, links, counters, self._next_rid)
        # owner side: sleeping workers per function per node (as advertised,
        # less what we pushed since), and functions with work to push.
        self._supply: dict[bytes, dict[str, int]] = {}
        self._to_push: set[bytes] = set()
        self._push_scheduled = False
        self._rotate = 0
        # advertising our own sleepers
        self._dirty: set[bytes] = set()
        self._flush_scheduled = False
        self._advertised: dict[bytes, int] = {}
        self._late: asyncio.TimerHandle | None = None
        self._refresh: asyncio.TimerHandle | None = None
        self._short: asyncio.TimerHandle | None = None
        self._last_advert = 0.0
        self._loop = asyncio.get_running_loop()
        self._tick: asyncio.TimerHandle | None = None
        self._handle_prefix = b"H:"
        # Frame kinds other modules handle (replication: cluster/replication.py).
        self.extra_frames: dict[str, Callable[[str, list[Any]], None]] = {}
        # Wake policy hook (node/wakeup.py): a sleeper woken for a pushed job
        # that does not GRAB in time may be busy on another node; wake the next.
        self._push_wakes: WakeTracker[Session, bytes] = WakeTracker(
            self._loop, self._push_wake_expired)

    # ------------------------------------------------------------------ map

    def set_map(self, new: PartitionMap) -> None:
        old = self.map
        self.map = new
        self.links.epoch = new.epoch
        before = set(old.members) if old is not None else set()
        after = set(new.members)
        for node_id in after - {self.node_id}:
            info = new.members[node_id]
            if info.peer_address:
                self.links.connect(node_id, info.peer_address)
            if node_id not in before:
                self._advertise_all(node_id)
        for node_id in before - after - {self.node_id}:
            log.warning("node %s left the cluster", node_id)
            self.links.disconnect(node_id)
            self.node_lost(node_id)
        # Partitions moved (a node joined, or we came back to a changed ring):
        # queued background jobs follow their key, so the new owner coalesces
        # against them. A draining node hands off from drain() instead, where
        # it can wait for the answers.
        if self.node_id in new.active and (old is None or not old.same_assignment(new)):
            moved = self.hand_off()
            if moved:
                log.warning("ring change (epoch %d): handing %d queued background job(s) to "
                            "their new owners", new.epoch, moved)

    def owner_of(self, key: bytes) -> str | None:
        m = self.map
        if m is None:
            return None
        owner = m.owner_of_key(key)
        if owner is None or owner == self.node_id:
            return None
        return owner

    def _owner_of_handle(self, handle: bytes) -> str | None:
        node_id = node_of(handle)
        if node_id is None or node_id == self.node_id or self.map is None \
                or node_id not in self.map.members:
            return None
        return node_id

    # ------------------------------------------------------------------ entry side

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def _request(self, s: Session, owner: str, kind: int, frame: list[Any],
                 arg: bytes = b"") -> bool:
        rid = self._next_rid()
        frame[1] = rid
        if not self.links.send(owner, frame):
            return False
        self._pending[rid] = _Pending(s, s.reserve(), kind, owner, arg, frame)
        self._contacted.setdefault(s.id, set()).add(owner)
        return True

    def forward_submit(self, s: Session, ptype: int, args: tuple[bytes, ...]) -> bool:
        unique = args[1]
        if unique == b"-":
            key = args[-1]
            if not key:
                return False
        else:
            key = unique
        owner = self.owner_of(key)
        if owner is None:
            return False
        kind = K_SUBMIT_BG if ptype in _BG_TYPES else K_SUBMIT_FG
        if self._request(s, owner, kind, [REQ, 0, s.id, s.exceptions, ptype, list(args)]):
            self.counters.forwarded += 1
            return True
        # The owner's link is down: run it here rather than fail it.
        return False

    def forward_handle(self, s: Session, ptype: int, args: tuple[bytes, ...],
                       handle: bytes) -> bool:
        owner = self._owner_of_handle(handle)
        if owner is None:
            return False
        frame: list[Any] = [REQ, 0, s.id, s.exceptions, ptype, list(args)]
        if ptype == P.GET_STATUS:
            return self._request(s, owner, K_STATUS, frame, handle)
        if self._untold:
            self._tell_taken(s, handle)
        if not self.links.send(owner, frame):
            return False
        self._contacted.setdefault(s.id, set()).add(owner)
        return True

    def forward_unique(self, s: Session, args: tuple[bytes, ...], unique: bytes) -> bool:
        if not unique or unique == b"-":
            return False
        owner = self.owner_of(unique)
        if owner is None:
            return False
        return self._request(s, owner, K_STATUS_UNIQUE,
                             [REQ, 0, s.id, s.exceptions, P.GET_STATUS_UNIQUE, list(args)],
                             unique)

    def grab(self, s: Session, kind: int) -> bool:
        self._push_wakes.answered(s)
        pushed = self._pushed
        if not pushed:
            return False
        for name, timeout in self.m.abilities(s):
            q = pushed.get(name)
            while q:
                p = q.popleft()
                if not q:
                    del pushed[name]
                # Only a job whose owner will hear who took it may run:
                # otherwise its results could not reach it and it would run
                # twice. (A stale job is dropped; its owner requeues it.)
                if self.links.state(p.owner) not in (LinkState.CONNECTING, LinkState.UP):
                    continue
                self._contacted.setdefault(s.id, set()).add(p.owner)
                if timeout:
                    self.links.send(p.owner, [TAKEN, p.handle, s.id, timeout])
                else:
                    # Told with the worker's first result (one message fewer
                    # per job), or when the worker goes away. Only a timeout
                    # needs the owner to know at once.
                    self._untold.setdefault(s.id, {})[p.handle] = p.owner
                s.send(R.assignment_packet(kind, p.handle, p.name, p.unique, p.reducer,
                                         p.payload))
                return True
        return False

    def _tell_taken(self, s: Session, handle: bytes) -> None:
        untold = self._untold.get(s.id)
        if untold is not None:
            owner = untold.pop(handle, None)
            if owner is not None:
                self.links.send(owner, [TAKEN, handle, s.id, 0])
            if not untold:
                del self._untold[s.id]

    def remote_work(self, s: Session) -> bool:
        pushed = self._pushed
        return bool(pushed) and any(name in pushed for name, _ in self.m.abilities(s))

    def detached(self, s: Session) -> None:
        self._push_wakes.answered(s)
        untold = self._untold.pop(s.id, None)
        if untold:
            # Before "gone", so the owner requeues these jobs too.
            for handle, owner in untold.items():
                self.links.send(owner, [TAKEN, handle, s.id, 0])
        owners = self._contacted.pop(s.id, None)
        if owners:
            for owner in owners:
                self.links.send(owner, [GONE, s.id])
        self._listening.pop(s.id, None)

    def _on_reply(self, rid: int, data: bytes) -> None:
        if self.handoff.answered(rid, data):
            return
        p = self._pending.pop(rid, None)
        if p is None:
            return
        s = p.session
        s.fill(p.slot, data)
        ptype = P.packet_type(data)
        if p.kind == K_SUBMIT_FG and ptype == P.JOB_CREATED and not s.closed:
            self._listening.setdefault(s.id, {})[P.payload_of(data)] = p.owner

    def _on_out(self, conn: int, data: bytes) -> None:
        s = self.m.session(conn)
        if s is None:
            return
        if P.packet_type(data) in _FINAL_TYPES:
            waiting = self._listening.get(conn)
            if waiting:
                waiting.pop(P.first_arg(data), None)
        s.send(data)

    # ------------------------------------------------------------------ owner side

    def _proxy(self, node_id: str, conn: int) -> RemoteSession:
        key = (node_id, conn)
        proxy = self._proxies.get(key)
        if proxy is None:
            self._next_proxy -= 1  # negative ids never collide with local sessions
            proxy = RemoteSession(self._next_proxy, self.links, node_id, conn)
            self._proxies[key] = proxy
        return proxy

    def _on_req(self, node_id: str, rid: int, conn: int, exceptions: bool, ptype: int,
                args: list[bytes]) -> None:
        if not 0 < ptype <= P.MAX_TYPE:
            return
        proxy = self._proxy(node_id, conn)
        proxy.exceptions = bool(exceptions)
        proxy.rid = rid
        proxy.lazy = ptype in _FG_TYPES
        freed: bytes | None = None
        if ptype in _FINAL_TYPES and args:
            job = self.m.held(bytes(args[0]), proxy)
            if job is not None:
                freed = job.function
        try:
            self.dispatcher.handle_local(proxy, ptype, tuple(args))
        except Exception:
            log.exception("forwarded packet %d from %s failed", ptype, node_id)
            if proxy.rid:  # the entry node still waits for an answer
                proxy.send(P.error_packet(b"SERVER_ERROR", b"Internal error"))
        finally:
            proxy.rid = 0
            proxy.lazy = False
        if freed is not None:
            self._worker_freed(freed, node_id)

    def _worker_freed(self, name: bytes, node_id: str) -> None:
        """A worker there finished a job of ours, so it is about to ask for
        more: count it as available again at once. Waiting for its node's
        next advert would leave our next job queued for up to SUPPLY_DELAY
        whenever that node's sleeper count only went from some to some."""
        supply = self._supply.setdefault(name, {})
        supply[node_id] = supply.get(node_id, 0) + 1
        if n := self.m.unclaimed(name):
            self.unserved(name, n)

    def _on_taken(self, node_id: str, handle: bytes, conn: int, timeout_ms: int) -> None:
        holder = self._proxies.get((node_id, HOLDER_CONN))
        job = self.m.held(bytes(handle), holder) if holder is not None else None
        if job is None:
            # Requeued meanwhile (that node's link broke); the worker's
            # results will find no job here, as for any stale handle.
            log.warning("node %s took job %r, which it no longer held", node_id, handle)
            return
        self.m.reassign(job, self._proxy(node_id, conn), int(timeout_ms))

    def _on_return(self, node_id: str, handle: bytes) -> None:
        holder = self._proxies.get((node_id, HOLDER_CONN))
        job = self.m.held(bytes(handle), holder) if holder is not None else None
        if job is None:
            return
        # It had no sleeper after all: count none there until it says otherwise.
        supply = self._supply.get(job.function)
        if supply is not None and node_id in supply:
            supply[node_id] = 0
        self.m.unassign(job)

    def _on_gone(self, node_id: str, conn: int) -> None:
        proxy = self._proxies.pop((node_id, conn), None)
        if proxy is not None:
            self.m.detach(proxy)

    # ------------------------------------------------------------------ wake-ups

    def sleepers_changed(self, name: bytes) -> None:
        self.sleepers_changed_name(name)

    def sleepers_changed_name(self, name: bytes) -> None:
        self._dirty.add(name)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_supply)
        if self._refresh is None:
            self._refresh = self._loop.call_later(SUPPLY_REFRESH, self._refresh_supply)

    def _refresh_supply(self) -> None:
        """Every SUPPLY_REFRESH while workers sleep here, tell every peer the
        exact counts: owners adjust theirs by guesses (a push takes one, a
        finished job gives one back), and this bounds how long a wrong guess
        can keep a job queued while a worker sleeps."""
        self._refresh = None
        sup = self.m.sleeper_counts()
        if not sup:
            return
        self._advertised.update(sup)
        for node_id in self._peers():
            self.links.send(node_id, [SUP, sup])
        self._refresh = self._loop.call_later(SUPPLY_REFRESH, self._refresh_supply)

    def _flush_supply(self, late: bool = False) -> None:
        """Advertise our sleeping workers' counts. Under load they change on
        every job, and a frame to every peer per change would cost more than
        the jobs: so at most one advert per SUPPLY_DELAY. An idle node's
        first change still goes at once (a cold start waits for nothing), and
        owners meanwhile count a worker that finished their job as free."""
        self._flush_scheduled = False
        if late:
            self._late = None
        if not self._dirty:
            return
        now = time.monotonic()
        wait = self._last_advert + SUPPLY_DELAY - now
        if wait > 0 and not late:
            if self._late is None:
                self._late = self._loop.call_later(wait, self._flush_supply, True)
            return
        advertised = self._advertised
        sup = {}
        for name in self._dirty:
            n = self.m.sleepers(name)
            if n != advertised.get(name, 0):
                sup[name] = n
                advertised[name] = n
        self._dirty.clear()
        if sup:
            self._last_advert = now
            for node_id in self._peers():
                self.links.send(node_id, [SUP, sup])

    def _advertise_all(self, node_id: str) -> None:
        sup = self.m.sleeper_counts()
        self._advertised.update(sup)
        if sup:
            self.links.send(node_id, [SUP, sup])

    def _peers(self) -> Iterable[str]:
        m = self.map
        if m is None:
            return ()
        return [n for n in m.members if n != self.node_id]

    def unserved(self, name: bytes, count: int) -> None:
        # Pushed once per loop iteration, not from inside the manager's call
        # (it is in the middle of a submit or a requeue).
        if name not in self._supply:
            return
        self._to_push.add(name)
        if not self._push_scheduled:
            self._push_scheduled = True
            self._loop.call_soon(self._push_all)

    def _push_all(self) -> None:
        self._push_scheduled = False
        todo, self._to_push = self._to_push, set()
        for name in todo:
            self._push(name)

    def _push(self, name: bytes) -> None:
        supply = self._supply.get(name)
        if not supply:
            return
        nodes = [n for n, k in supply.items() if k > 0]
        if not nodes:
            return
        self._rotate += 1
        start = self._rotate % len(nodes)
        m = self.m
        # Spread: one job per node per round, so no node's workers starve.
        while nodes and m.unclaimed(name):
            progressed = False
            for i in range(len(nodes)):
                node_id = nodes[(start + i) % len(nodes)]
                if not m.unclaimed(name):
                    break
                if supply.get(node_id, 0) <= 0:
                    continue
                job = m.take_queued(name, self._proxy(node_id, HOLDER_CONN))
                if job is None:
                    return
                supply[node_id] -= 1  # until its next advert
                frame = [PUSH, m.handle_of(job), name, job.unique, job.reducer, job.payload]
                if not self.links.send(node_id, frame):
                    supply[node_id] = 0
                    m.unassign(job)
                    continue
                self.counters.pushed += 1
                progressed = True
            if not progressed:
                break

    def _on_sup(self, node_id: str, sup: dict[bytes, int]) -> None:
        for name, k in sup.items():
            name = bytes(name)
            self._supply.setdefault(name, {})[node_id] = int(k)
            if k > 0 and (n := self.m.unclaimed(name)):
                self.unserved(name, n)

    def _on_push(self, node_id: str, handle: bytes, name: bytes, unique: bytes,
                 reducer: bytes, payload: bytes) -> None:
        name = bytes(name)
        q = self._pushed.get(name)
        # Kept for a sleeper (woken now), or briefly for a worker that is
        # awake: one that just finished a job is on its way to GRAB or
        # PRE_SLEEP, and both find the pushed job. Never more than there are
        # awake workers.
        if woken := self.m.wake_sleepers(name, 1):
            hold = PUSH_HOLD
            self._push_wakes.sent(woken[0], name)
        elif (len(q) if q else 0) < self.m.awake_workers(name):
            hold = PUSH_HOLD_AWAKE
            if self._short is None:
                self._short = self._loop.call_later(PUSH_HOLD_AWAKE, self._expire_pushed)
        else:
            hold = 0.0
        if not hold:
            self.links.send(node_id, [RETURN, handle])
            return
        p = _Pushed(node_id, bytes(handle), name, bytes(unique), bytes(reducer),
                    bytes(payload), time.monotonic() + hold)
        self._pushed.setdefault(name, deque()).append(p)
        self._arm_tick()

    def _push_wake_expired(self, s: Session, name: bytes) -> None:
        """Wake policy hook: the sleeper woken for a pushed job did not GRAB
        in time; if a pushed job still waits, wake the next sleeper and give
        the job the time that one needs."""
        q = self._pushed.get(name)
        if not q:
            return
        woken = self.m.wake_sleepers(name, 1)
        if woken:
            self._push_wakes.sent(woken[0], name)
            q[0].until = max(q[0].until, time.monotonic() + 2 * self._push_wakes.grace)

    def _expire_pushed(self) -> None:
        """Pushed jobs no worker took in time go back to their owner."""
        self._short = None
        now = time.monotonic()
        for name, q in list(self._pushed.items()):
            if all(p.until > now for p in q):
                continue
            for p in [p for p in q if p.until <= now]:
                self.links.send(p.owner, [RETURN, p.handle])
            kept = deque(p for p in q if p.until > now)
            if kept:
                self._pushed[name] = kept
            else:
                del self._pushed[name]
            # The owner now counts no sleeper here: tell it the truth.
            self._advertised[name] = -1
            self.sleepers_changed_name(name)

    def _arm_tick(self) -> None:
        if self._tick is None:
            self._tick = self._loop.call_later(TICK, self._on_tick)

    def _on_tick(self) -> None:
        """Safety net: pushed jobs that no worker took go back to their owner,
        and queued work is re-offered to nodes that advertise sleepers."""
        self._tick = None
        busy = False
        if self._pushed:
            self._expire_pushed()
            busy = bool(self._pushed)
        for name, n in self.m.unclaimed_all().items():
            if self._supply.get(name):
                self.unserved(name, n)
                busy = True
        if busy:
            self._arm_tick()

    # ------------------------------------------------------------------ frames

    def on_frames(self, node_id: str, epoch: int, frames: list[Any]) -> None:
        for f in frames:
            try:
                kind = f[0]
                if kind == OUT:
                    self._on_out(f[1], f[2])
                elif kind == REP:
                    self._on_reply(f[1], f[3])
                elif kind == REQ:
                    self._on_req(node_id, f[1], f[2], f[3], f[4], f[5])
                elif kind == GONE:
                    self._on_gone(node_id, f[1])
                elif kind == SUP:
                    self._on_sup(node_id, f[1])
                elif kind == PUSH:
                    self._on_push(node_id, f[1], f[2], f[3], f[4], f[5])
                elif kind == TAKEN:
                    self._on_taken(node_id, f[1], f[2], f[3])
                elif kind == RETURN:
                    self._on_return(node_id, f[1])
                elif (extra := self.extra_frames.get(kind)) is not None:
                    extra(node_id, f)
                else:
                    log.warning("unknown frame %r from %s", kind, node_id)
            except Exception:
                log.exception("bad frame from %s: %.200r", node_id, f)

    # ------------------------------------------------------------------ draining

    def hand_off(self) -> int:
        """Hand the queued background jobs whose key moved to its new owner
        (cluster/handoff.py); how many were sent."""
        return self.handoff.start(self.map)

    async def hand_off_all(self, timeout: float) -> tuple[int, int, str]:
        """Drain: (jobs handed over, queued background jobs still here, why)."""
        return await self.handoff.drain(lambda: self.map, timeout)

    # ------------------------------------------------------------------ failures

    def node_lost(self, node_id: str) -> None:
        """A peer died or its link broke: nothing may wait on it for ever."""
        # Owner side: its workers' jobs go back to the queue, its clients detach.
        for key in [k for k in self._proxies if k[0] == node_id]:
            proxy = self._proxies.pop(key)
            self.m.detach(proxy)
        # Entry side: requests in flight get an answer now. A submit is not
        # the client's problem: it goes to the key's owner under the current
        # map (or is run here), as if it had just arrived.
        for rid in [r for r, p in self._pending.items() if p.owner == node_id]:
            p = self._pending.pop(rid)
            if p.kind in (K_SUBMIT_FG, K_SUBMIT_BG) and not p.session.closed:
                self._resubmit(p)
            else:
                p.session.fill(p.slot, self._failure_reply(p))
        for conn, waiting in self._listening.items():
            lost = [h for h, owner in waiting.items() if owner == node_id]
            if not lost:
                continue
            s = self.m.session(conn)
            for h in lost:
                del waiting[h]
                if s is not None:
                    s.send(P.packet(P.WORK_FAIL, h))
        self.handoff.node_lost(node_id)
        for conn, untold in list(self._untold.items()):
            for handle in [h for h, o in untold.items() if o == node_id]:
                del untold[handle]
            if not untold:
                del self._untold[conn]
        # Worker side: jobs it pushed here are requeued by nobody now; they
        # come back with the owner's store (background) or were failed above.
        for name, q in list(self._pushed.items()):
            kept = deque(p for p in q if p.owner != node_id)
            if kept:
                self._pushed[name] = kept
            else:
                del self._pushed[name]
        for sup in self._supply.values():
            sup.pop(node_id, None)
        for owners in self._contacted.values():
            owners.discard(node_id)

    def _resubmit(self, p: _Pending) -> None:
        self.counters.rerouted += 1
        relay = _Relay(p.session, p.slot)
        ptype, args = p.frame[4], tuple(p.frame[5])
        try:
            self.dispatcher.handle(relay, ptype, args)
        except Exception:
            log.exception("resubmitting a request of lost node %s failed", p.owner)
            relay.send(P.error_packet(b"SERVER_ERROR", b"Internal error"))

    @staticmethod
    def _failure_reply(p: _Pending) -> bytes:
        # Unknown: the node that held it is gone.
        if p.kind == K_STATUS:
            return R.unknown_status(p.arg)
        if p.kind == K_STATUS_UNIQUE:
            return R.unknown_status_unique(p.arg)
        return P.error_packet(b"QUEUE_ERROR", f"owner node {p.owner} is unreachable".encode())

    def close(self) -> None:
        self._push_wakes.close()
        for timer in (self._tick, self._late, self._refresh, self._short):
            if timer is not None:
                timer.cancel()
        self._tick = self._late = self._refresh = self._short = None
