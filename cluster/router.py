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

Dispatch across nodes (work-conserving, one wake per job):

* every node advertises, per function, how many of its workers sleep (``sup``);
* an owner with runnable jobs that no local worker is coming for sends
  ``wake(function, n)`` to nodes that advertised sleepers, spreading over them;
* the woken node NOOPs its sleepers and remembers that the owner has work
  (a hint); their GRAB finds nothing locally and is forwarded to the owner;
* a worker's PRE_SLEEP is answered with NOOP while any hint is live, and a
  NO_JOB from an owner clears that owner's hints, so nothing spins;
* a periodic tick re-offers work whose wakes went unused, so a job is never
  left queued while a worker that can do it sleeps anywhere.

Routing key: the unique id alone (the payload for unique ``-``), not function
+ unique. GET_STATUS_UNIQUE carries no function, so only a key without it
lets any node find the owner; jobs of different functions with the same
unique merely share an owner.

Frames (msgpack lists) on the peer link:

    ["req", rid, conn, exceptions, ptype, args]   entry → owner (rid 0: no reply)
    ["grab", rid, conn, kind, [[function, timeout_ms], ...]]
    ["rep", rid, conn, packet_bytes]              owner → entry
    ["out", conn, packet_bytes]                   owner → entry
    ["gone", conn]                                entry → owner: connection closed
    ["sup", {function: sleepers}]                 worker node → all
    ["wake", function, n]                         owner → worker node
    ["unused", function, n]                       worker node → owner
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from cluster.partition import PartitionMap
from cluster.peerlink import PeerLinks
from node import protocol as P
from node.jobs import Function, JobManager
from node.session import Session, Slot
from node.stats import Counters

log = logging.getLogger("gearmesh.cluster")

REQ: Final = "req"
GRAB: Final = "grab"
REP: Final = "rep"
OUT: Final = "out"
GONE: Final = "gone"
SUP: Final = "sup"
WAKE: Final = "wake"
UNUSED: Final = "unused"

# What a forwarded request was, so the reply can be post-processed.
K_SUBMIT_FG: Final = 1
K_SUBMIT_BG: Final = 2
K_STATUS: Final = 3
K_STATUS_UNIQUE: Final = 4
K_GRAB: Final = 5

_BG_TYPES: Final = frozenset({P.SUBMIT_JOB_BG, P.SUBMIT_JOB_HIGH_BG, P.SUBMIT_JOB_LOW_BG,
                              P.SUBMIT_JOB_EPOCH, P.SUBMIT_REDUCE_JOB_BACKGROUND})
_FINAL_TYPES: Final = frozenset({P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION})
WAKE_TTL: Final = 1.0  # seconds a sent wake counts as "a worker is coming"
TICK: Final = 0.25
SUPPLY_DELAY: Final = 0.05  # how stale a non-zero sleeper count may be


class RemoteSlot(Slot):
    __slots__ = ("rid",)

    def __init__(self, rid: int) -> None:
        super().__init__()
        self.rid = rid


class RemoteSession(Session):
    """A client or worker connected to another node, as this (owner) node sees it."""

    __slots__ = ("conn", "links", "node_id", "rid")
    holds_replies = False

    def __init__(self, sid: int, links: PeerLinks, node_id: str, conn: int) -> None:
        super().__init__(sid, self._write_out, node_id)
        self.links = links
        self.node_id = node_id
        self.conn = conn
        self.rid = 0  # the forwarded request being handled right now

    def _write_out(self, data: bytes) -> None:
        self.links.send(self.node_id, [OUT, self.conn, data])

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        rid = self.rid
        if rid:
            self.rid = 0
            self.links.send(self.node_id, [REP, rid, self.conn, data])
        else:
            self.links.send(self.node_id, [OUT, self.conn, data])

    def reserve(self) -> Slot:
        slot = RemoteSlot(self.rid)
        self.rid = 0
        return slot

    def fill(self, slot: Slot, data: bytes) -> None:
        if not self.closed and isinstance(slot, RemoteSlot):
            self.links.send(self.node_id, [REP, slot.rid, self.conn, data])


class _Pending:
    __slots__ = ("arg", "kind", "owner", "session", "slot")

    def __init__(self, session: Session, slot: Slot, kind: int, owner: str, arg: bytes) -> None:
        self.session = session
        self.slot = slot
        self.kind = kind
        self.owner = owner
        self.arg = arg  # the handle or unique of a status request


def _ptype(data: bytes) -> int:
    return int.from_bytes(data[4:8], "big") if len(data) >= 12 else 0


def _handle_of(data: bytes) -> bytes:
    end = data.find(b"\0", 12)
    return data[12:] if end < 0 else data[12:end]


class Router:
    """Implements node.seam.Cluster for one node."""

    def __init__(self, node_id: str, manager: JobManager, links: PeerLinks,
                 counters: Counters) -> None:
        self.node_id = node_id
        self.m = manager
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
        # worker side: owners that told us they have work, per function, and
        # which owner woke which sleeping worker (it grabs from that one first,
        # so the owner's wake is the one consumed).
        self._hints: dict[bytes, dict[str, int]] = {}
        self._woken_by: dict[int, str] = {}
        # owner side: sleeping workers per function per node, and wakes in flight.
        self._supply: dict[bytes, dict[str, int]] = {}
        self._wakes: dict[bytes, tuple[int, float]] = {}
        self._rotate = 0
        # advertising our own sleepers
        self._dirty: set[bytes] = set()
        self._flush_scheduled = False
        self._advertised: dict[bytes, int] = {}
        self._late: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._tick: asyncio.TimerHandle | None = None
        self._handle_prefix = b"H:"

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

    def owner_of(self, key: bytes) -> str | None:
        m = self.map
        if m is None:
            return None
        owner = m.owner_of_key(key)
        if owner is None or owner == self.node_id:
            return None
        return owner

    def _owner_of_handle(self, handle: bytes) -> str | None:
        if not handle.startswith(self._handle_prefix):
            return None
        node, sep, num = handle[2:].rpartition(b":")
        if not sep or not num.isdigit():
            return None
        node_id = node.decode("utf-8", "replace")
        if node_id == self.node_id or self.map is None or node_id not in self.map.members:
            return None
        return node_id

    # ------------------------------------------------------------------ entry side

    def _request(self, s: Session, owner: str, kind: int, frame: list[Any],
                 arg: bytes = b"") -> bool:
        self._rid += 1
        rid = self._rid
        frame[1] = rid
        if not self.links.send(owner, frame):
            return False
        self._pending[rid] = _Pending(s, s.reserve(), kind, owner, arg)
        self._contacted.setdefault(s.id, set()).add(owner)
        return True

    def forward_submit(self, s: Session, ptype: int, args: tuple[bytes, ...]) -> bool:
        if isinstance(s, RemoteSession):
            return False  # the sender routed it to us: we are its owner
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
        if isinstance(s, RemoteSession):
            return False
        owner = self._owner_of_handle(handle)
        if owner is None:
            return False
        frame: list[Any] = [REQ, 0, s.id, s.exceptions, ptype, list(args)]
        if ptype == P.GET_STATUS:
            return self._request(s, owner, K_STATUS, frame, handle)
        if not self.links.send(owner, frame):
            return False
        self._contacted.setdefault(s.id, set()).add(owner)
        return True

    def forward_unique(self, s: Session, args: tuple[bytes, ...], unique: bytes) -> bool:
        if isinstance(s, RemoteSession) or not unique or unique == b"-":
            return False
        owner = self.owner_of(unique)
        if owner is None:
            return False
        return self._request(s, owner, K_STATUS_UNIQUE,
                             [REQ, 0, s.id, s.exceptions, P.GET_STATUS_UNIQUE, list(args)],
                             unique)

    def grab(self, s: Session, kind: int) -> bool:
        if isinstance(s, RemoteSession) or not s.regs:
            return False
        owner = self._woken_by.pop(s.id, None)
        if owner is None or self.links.state(owner) is None:
            owner = self._hinted_owner(s)
        if owner is None:
            return False
        regs = [[fn.name, t] for fn, t in s.regs]
        return self._request(s, owner, K_GRAB, [GRAB, 0, s.id, kind, regs])

    def _hinted_owner(self, s: Session) -> str | None:
        hints = self._hints
        for fn, _ in s.regs:
            h = hints.get(fn.name)
            if h:
                for owner, n in h.items():
                    if n > 0:
                        return owner
        return None

    def remote_work(self, s: Session) -> bool:
        return not isinstance(s, RemoteSession) and self._hinted_owner(s) is not None

    def detached(self, s: Session) -> None:
        if isinstance(s, RemoteSession):
            return
        self._woken_by.pop(s.id, None)
        owners = self._contacted.pop(s.id, None)
        if owners:
            for owner in owners:
                self.links.send(owner, [GONE, s.id])
        self._listening.pop(s.id, None)

    def _on_reply(self, rid: int, data: bytes) -> None:
        p = self._pending.pop(rid, None)
        if p is None:
            return
        s = p.session
        s.fill(p.slot, data)
        ptype = _ptype(data)
        if p.kind == K_SUBMIT_FG and ptype == P.JOB_CREATED and not s.closed:
            self._listening.setdefault(s.id, {})[data[12:]] = p.owner
        elif p.kind == K_GRAB:
            if ptype == P.NO_JOB:
                for fn, _ in s.regs:
                    h = self._hints.get(fn.name)
                    if h is not None:
                        h.pop(p.owner, None)
            else:
                for fn, _ in s.regs:
                    h = self._hints.get(fn.name)
                    if h is not None and h.get(p.owner, 0) > 0:
                        h[p.owner] -= 1
                        break

    def _on_out(self, conn: int, data: bytes) -> None:
        s = self.m.sessions.get(conn)
        if s is None:
            return
        if _ptype(data) in _FINAL_TYPES:
            waiting = self._listening.get(conn)
            if waiting:
                waiting.pop(_handle_of(data), None)
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
        try:
            self.m.handle(proxy, ptype, tuple(args))
        except Exception:
            log.exception("forwarded packet %d from %s failed", ptype, node_id)
            if proxy.rid:  # the entry node still waits for an answer
                proxy.send(P.error_packet(b"SERVER_ERROR", b"Internal error"))
        finally:
            proxy.rid = 0

    def _on_grab(self, node_id: str, rid: int, conn: int, kind: int,
                 regs: list[list[Any]]) -> None:
        proxy = self._proxy(node_id, conn)
        m = self.m
        proxy.regs = [(m.function(bytes(name)), int(t)) for name, t in regs]
        proxy.rid = rid
        try:
            m.grab(proxy, kind)
        except Exception:
            log.exception("forwarded grab from %s failed", node_id)
            if proxy.rid:
                proxy.send(P.NO_JOB_PACKET)
        finally:
            proxy.rid = 0
            names = [fn.name for fn, _ in proxy.regs]
            proxy.regs = []  # proxies are not registrations: keep `status` counts local
        for name in names:
            self._consume_wake(name)

    def _on_gone(self, node_id: str, conn: int) -> None:
        proxy = self._proxies.pop((node_id, conn), None)
        if proxy is not None:
            self.m.detach(proxy)

    # ------------------------------------------------------------------ wake-ups

    def sleepers_changed(self, fn: Function) -> None:
        self._dirty.add(fn.name)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_supply)

    def _flush_supply(self, everything: bool = False) -> None:
        """Advertise our sleeping workers. Under load the counts flip on every
        job; a message per flip would double the peer traffic. So a function
        going from none to some sleepers (or back) is told at once, and other
        changes at most every SUPPLY_DELAY."""
        self._flush_scheduled = False
        if everything:
            self._late = None
        if not self._dirty:
            return
        funcs = self.m.functions
        advertised = self._advertised
        sup = {}
        later = False
        for name in list(self._dirty):
            fn = funcs.get(name)
            n = len(fn.sleepers) if fn is not None else 0
            before = advertised.get(name, 0)
            if n == before:
                self._dirty.discard(name)
            elif everything or (n == 0) != (before == 0):
                sup[name] = n
                advertised[name] = n
                self._dirty.discard(name)
            else:
                later = True
        if sup:
            for node_id in self._peers():
                self.links.send(node_id, [SUP, sup])
        if later and self._late is None:
            self._late = self._loop.call_later(SUPPLY_DELAY, self._flush_supply, True)

    def _advertise_all(self, node_id: str) -> None:
        sup = {fn.name: len(fn.sleepers) for fn in self.m.functions.values() if fn.sleepers}
        self._advertised.update(sup)
        if sup:
            self.links.send(node_id, [SUP, sup])

    def _peers(self) -> Iterable[str]:
        m = self.map
        if m is None:
            return ()
        return [n for n in m.members if n != self.node_id]

    def _in_flight(self, name: bytes) -> int:
        entry = self._wakes.get(name)
        if entry is None:
            return 0
        n, expires = entry
        if time.monotonic() > expires:
            del self._wakes[name]
            return 0
        return n

    def _consume_wake(self, name: bytes) -> None:
        entry = self._wakes.get(name)
        if entry is not None:
            n, expires = entry
            if n <= 1:
                del self._wakes[name]
            else:
                self._wakes[name] = (n - 1, expires)

    def unserved(self, fn: Function, count: int) -> None:
        supply = self._supply.get(fn.name)
        if not supply:
            return
        need = count - self._in_flight(fn.name)
        if need <= 0:
            return
        nodes = [n for n, k in supply.items() if k > 0]
        if not nodes:
            return
        self._rotate += 1
        start = self._rotate % len(nodes)
        sent = 0
        # Spread: one wake per node per round, so no node's workers starve.
        while need > 0 and nodes:
            progressed = False
            for i in range(len(nodes)):
                node_id = nodes[(start + i) % len(nodes)]
                if need <= 0:
                    break
                if supply.get(node_id, 0) <= 0:
                    continue
                supply[node_id] -= 1  # optimistic until its next advert
                self.links.send(node_id, [WAKE, fn.name, 1])
                need -= 1
                sent += 1
                progressed = True
            if not progressed:
                break
        if sent:
            n = self._in_flight(fn.name)
            self._wakes[fn.name] = (n + sent, time.monotonic() + WAKE_TTL)
            self._arm_tick()

    def _on_sup(self, node_id: str, sup: dict[bytes, int]) -> None:
        funcs = self.m.functions
        for name, k in sup.items():
            name = bytes(name)
            self._supply.setdefault(name, {})[node_id] = int(k)
            if k > 0:
                fn = funcs.get(name)
                if fn is not None and fn.queued > fn.waking:
                    self.unserved(fn, fn.queued - fn.waking)

    def _on_wake(self, node_id: str, name: bytes, n: int) -> None:
        h = self._hints.setdefault(bytes(name), {})
        h[node_id] = h.get(node_id, 0) + n
        woken = self.m.wake_sleepers(bytes(name), n)
        for s in woken:
            self._woken_by[s.id] = node_id
        if len(woken) < n:
            self.links.send(node_id, [UNUSED, name, n - len(woken)])
        self._arm_tick()

    def _on_unused(self, node_id: str, name: bytes, n: int) -> None:
        name = bytes(name)
        entry = self._wakes.get(name)
        if entry is not None:
            left = entry[0] - n
            if left <= 0:
                del self._wakes[name]
            else:
                self._wakes[name] = (left, entry[1])
        fn = self.m.functions.get(name)
        if fn is not None and fn.queued > fn.waking:
            self.unserved(fn, fn.queued - fn.waking)

    def _arm_tick(self) -> None:
        if self._tick is None:
            self._tick = self._loop.call_later(TICK, self._on_tick)

    def _on_tick(self) -> None:
        """Safety net: wakes can go unused (a woken worker took other work),
        and hints can go stale; re-offer what is still waiting."""
        self._tick = None
        busy = False
        for name in list(self._wakes):
            self._in_flight(name)  # drops expired entries
        for fn in self.m.functions.values():
            if fn.queued > fn.waking and self._supply.get(fn.name):
                self.unserved(fn, fn.queued - fn.waking)
                busy = True
        # Hints age out: a woken worker that finds nothing clears them anyway.
        if self._hints:
            for name, h in list(self._hints.items()):
                for owner in [o for o, n in h.items() if n <= 0]:
                    del h[owner]
                if not h:
                    del self._hints[name]
            busy = busy or bool(self._hints)
        if busy or self._wakes:
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
                elif kind == GRAB:
                    self._on_grab(node_id, f[1], f[2], f[3], f[4])
                elif kind == GONE:
                    self._on_gone(node_id, f[1])
                elif kind == SUP:
                    self._on_sup(node_id, f[1])
                elif kind == WAKE:
                    self._on_wake(node_id, f[1], f[2])
                elif kind == UNUSED:
                    self._on_unused(node_id, f[1], f[2])
                else:
                    log.warning("unknown frame %r from %s", kind, node_id)
            except Exception:
                log.exception("bad frame from %s: %.200r", node_id, f)

    # ------------------------------------------------------------------ failures

    def node_lost(self, node_id: str) -> None:
        """A peer died or its link broke: nothing may wait on it for ever."""
        # Owner side: its workers' jobs go back to the queue, its clients detach.
        for key in [k for k in self._proxies if k[0] == node_id]:
            proxy = self._proxies.pop(key)
            self.m.detach(proxy)
        # Entry side: requests in flight get an answer now.
        for rid in [r for r, p in self._pending.items() if p.owner == node_id]:
            p = self._pending.pop(rid)
            p.session.fill(p.slot, self._failure_reply(p))
        for conn, waiting in self._listening.items():
            lost = [h for h, owner in waiting.items() if owner == node_id]
            if not lost:
                continue
            s = self.m.sessions.get(conn)
            for h in lost:
                del waiting[h]
                if s is not None:
                    s.send(P.packet(P.WORK_FAIL, h))
        for hint in self._hints.values():
            hint.pop(node_id, None)
        for sup in self._supply.values():
            sup.pop(node_id, None)
        for owners in self._contacted.values():
            owners.discard(node_id)

    @staticmethod
    def _failure_reply(p: _Pending) -> bytes:
        if p.kind == K_GRAB:
            return P.NO_JOB_PACKET
        # Unknown: the node that held it is gone.
        if p.kind == K_STATUS:
            return P.packet(P.STATUS_RES, p.arg + b"\x000\x000\x000\x000")
        if p.kind == K_STATUS_UNIQUE:
            return P.packet(P.STATUS_RES_UNIQUE, p.arg + b"\x000\x000\x000\x000\x000")
        return P.error_packet(b"QUEUE_ERROR", f"owner node {p.owner} is unreachable".encode())

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._late is not None:
            self._late.cancel()
            self._late = None
