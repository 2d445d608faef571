"""Cluster membership through etcd: register this node, watch the others.

A node writes ``<prefix>/nodes/<node-id>`` under a lease it keeps alive, reads
the whole ``<prefix>/nodes/`` range once, then watches it from the next
revision, so it never misses a change between the read and the watch. Each
change of the member set yields a new PartitionMap whose epoch is the etcd
revision of that change — the same number on every node for the same map.

Everything etcd does wrong is handled here and never raised into the node:
etcd unreachable → keep the last map, retry with capped exponential backoff,
log it (logger ``gearmesh.cluster``); lease lost (etcd restarted without it,
keepalives missed, someone revoked it) → re-register at once; watch history
compacted → take a fresh snapshot. ``close()`` revokes the lease so the node
leaves the map immediately instead of a TTL later.

All of it runs in one background task (a "session" per etcd connection); the
node talks to it only through ``set_state``, ``current`` and ``on_change``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import aetcd
import grpc

from cluster.backoff import backoff
from cluster.etcdclient import make_channel, make_client
from cluster.etcdkeys import node_id_of, node_key, nodes_prefix
from cluster.keepalive import LeaseKeeper
from cluster.memberinfo import MemberInfo, NodeState
from cluster.partition import PartitionMap
from cluster.tasks import stop_task, stop_tasks

log = logging.getLogger("gearmesh.cluster")

OnChange = Callable[[PartitionMap], None]

_BACKOFF_START: Final = 0.1
# A repeated outage is logged at most this often, so a long etcd outage does
# not flood the log while still showing that the node keeps trying.
_OUTAGE_LOG_INTERVAL: Final = 30.0


def parse_endpoints(spec: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"a:2379,http://b:2379"`` or a list of such → ``[(host, port), ...]``.

    Raises ValueError on a malformed endpoint: that is a configuration error
    the operator must see at start-up, not an outage to retry.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    result: list[tuple[str, int]] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item.startswith("https://"):
            raise ValueError(f"etcd endpoint {item!r}: TLS is not supported by the etcd client")
        item = item.removeprefix("http://").rstrip("/")
        host, sep, port_text = item.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"etcd endpoint {raw.strip()!r} is not host:port")
        result.append((host.strip("[]"), int(port_text)))
    if not result:
        raise ValueError("no etcd endpoint given")
    return result


class Membership:
    """This node's registration in etcd and its view of the other members."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        prefix: str,
        node_id: str,
        info: MemberInfo,
        lease_ttl: float = 5,
        on_change: OnChange | None = None,
        *,
        replicas: int = 1,
        max_backoff: float = 5.0,
        etcd_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not node_id or "/" in node_id:
            raise ValueError(f"node id {node_id!r} must be non-empty and contain no '/'")
        self._endpoints = parse_endpoints(endpoints)
        self._prefix_bytes = nodes_prefix(prefix)
        self._key = node_key(prefix, node_id)
        self.node_id = node_id
        self._info = info
        # etcd leases are whole seconds, and below 2 s a single slow keepalive
        # would drop a healthy node.
        self._ttl = max(2, math.ceil(lease_ttl))
        self._rpc_timeout = min(max(self._ttl / 2, 1.0), 5.0)
        self._on_change = on_change
        self._replicas = replicas
        self._max_backoff = max_backoff
        # TLS to etcd (cluster/security.py); None: plaintext.
        self._creds = etcd_credentials

        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._lease_id: int | None = None
        self._registered = asyncio.Event()

        self._members: dict[str, MemberInfo] = {}
        self._current: PartitionMap | None = None
        # The etcd revision self._members reflects (0: nothing read yet).
        self._revision = 0
        self._own_put_revision = 0
        self._reregister = False
        self._deliver_scheduled = False
        #: Leases etcd dropped while this node was alive (keepalives missed).
        self.leases_lost = 0

        # set_state() bumps the wanted version; the session's publisher writes
        # it and reports the written version to the waiters.
        self._info_version = 0
        self._published_version = -1
        self._publish_wanted = asyncio.Event()
        self._publish_waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._put_lock = asyncio.Lock()

        self._outage_since: float | None = None
        self._outage_logged_at = 0.0
        # Built in start(): it posts to the running loop.
        self._keeper: LeaseKeeper | None = None

    # -- public surface -------------------------------------------------

    @property
    def current(self) -> PartitionMap | None:
        """The last map delivered to ``on_change`` (None before the first)."""
        return self._current

    @property
    def info(self) -> MemberInfo:
        return self._info

    @property
    def registered(self) -> bool:
        """True while a session with etcd is up and our key is written."""
        return self._registered.is_set()

    async def start(self) -> None:
        """Start registering and watching in the background; never raises."""
        if self._task is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._keeper = LeaseKeeper(self._endpoints, self._ttl, self._lease_lost,
                                       loop.call_soon_threadsafe,
                                       channel_factory=partial(make_channel,
                                                               credentials=self._creds))
            self._keeper.keep(self._lease_id)
            self._keeper.start()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"membership-{self.node_id}"
            )

    async def wait_registered(self, timeout: float | None = None) -> bool:
        """Wait until registered (or ``timeout`` seconds); True if registered."""
        try:
            async with asyncio.timeout(timeout):
                await self._registered.wait()
        except TimeoutError:
            return False
        return True

    async def set_state(self, state: NodeState, timeout: float | None = None) -> bool:
        """Publish a new state; True once etcd has it, False on timeout.

        The state is kept either way and written on the next (re)registration,
        so a False only means "not confirmed yet". ``timeout`` defaults to the
        lease TTL.
        """
        if state == self._info.state and self._published_version == self._info_version:
            return True
        self._info = self._info.with_state(state)
        self._info_version += 1
        if self._closing:
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._publish_waiters.append((self._info_version, done))
        self._publish_wanted.set()
        try:
            async with asyncio.timeout(self._ttl if timeout is None else timeout):
                return await asyncio.shield(done)
        except TimeoutError:
            log.warning(
                "node %s: state %r not confirmed by etcd yet; it will be written when "
                "etcd is reachable", self.node_id, state,
            )
            return False

    async def close(self) -> None:
        """Stop, and revoke the lease so the others drop this node at once."""
        if self._closing:
            return
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.keep(None)
            await asyncio.get_running_loop().run_in_executor(None, keeper.stop)
        for _, fut in self._publish_waiters:
            if not fut.done():
                fut.set_result(False)
        self._publish_waiters.clear()
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is not None:
            await self._revoke(lease_id)

    # -- session loop ---------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            host, port = self._endpoints[failures % len(self._endpoints)]
            client = make_client(host, port, self._rpc_timeout, self._creds)
            try:
                await self._session(client, f"{host}:{port}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, aetcd.RevisionCompactedError):
                    # The history we would resume from is gone: start over
                    # from a snapshot.
                    self._revision = 0
                failures += 1
                delay = self._backoff(failures)
                self._report_outage(f"{host}:{port}", exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._registered.clear()
                await self._close_client(client)

    async def _session(self, client: aetcd.Client, where: str) -> None:
        await self._ensure_lease(client)
        mine = await client.get_range(self._key, self._key + b"\0")
        if int(mine.header.revision) < self._revision:
            log.error(
                "etcd is at revision %d, behind the %d this node has seen: etcd lost its "
                "data; rebuilding the membership from scratch",
                mine.header.revision, self._revision,
            )
            self._revision = 0
        current = mine.kvs[0] if mine.kvs else None
        if (current is None or current.lease != self._lease_id
                or current.value != self._info.encode()
                or self._published_version < self._info_version):
            await self._publish(client)
        else:
            # Our record survived the outage as it is: rewriting it would only
            # make a revision that every node turns into a no-op map change.
            self._registered.set()
        if self._revision == 0:
            await self._load_snapshot(client)
        # Resuming right after the last revision seen, rather than re-reading
        # a snapshot, replays every change made during an outage, deletes
        # included, so this node reaches the same epochs as nodes that never
        # lost etcd.
        watch = await client.watch_prefix(self._prefix_bytes, start_revision=self._revision + 1)
        self._registered.set()
        self._report_recovery(where)
        tasks = [
            asyncio.create_task(self._consume(watch), name="membership-watch"),
            asyncio.create_task(self._publisher(client), name="membership-publish"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
            raise ConnectionError("etcd watch ended")
        finally:
            await stop_tasks(tasks)

    async def _load_snapshot(self, client: aetcd.Client) -> None:
        snapshot = await client.get_prefix(self._prefix_bytes)
        members: dict[str, MemberInfo] = {}
        for kv in snapshot:
            decoded = self._decode(kv.key, kv.value)
            if decoded is not None:
                members[decoded[0]] = decoded[1]
        self._revision = int(snapshot.header.revision)
        if self._current is None or dict(self._current.members) != members:
            self._members = members
            self._deliver()

    async def _ensure_lease(self, client: aetcd.Client) -> None:
        if self._lease_id is not None:
            # Reusing a lease that outlived the outage keeps our key untouched,
            # so the others see no leave/join flap.
            reply = await client.refresh_lease(self._lease_id)
            if reply is not None and reply.TTL > 0:
                return
            log.warning("node %s: etcd lease %x is gone; taking a new one", self.node_id,
                        self._lease_id)
            self.leases_lost += 1
            self._lease_id = None
        lease = await client.lease(self._ttl)
        self._lease_id = int(lease.id)
        if self._keeper is not None:
            self._keeper.keep(self._lease_id)
        log.info("node %s: etcd lease %x granted (ttl %ds)", self.node_id, lease.id, self._ttl)

    async def _publish(self, client: aetcd.Client) -> int:
        """Write our record under the lease; returns the put's revision."""
        async with self._put_lock:
            version = self._info_version
            reply = await client.put(self._key, self._info.encode(), lease=self._lease_id)
            revision = int(reply.header.revision)
            self._own_put_revision = revision
            self._published_version = max(self._published_version, version)
        self._registered.set()
        still_waiting = []
        for wanted, fut in self._publish_waiters:
            if wanted <= self._published_version:
                if not fut.done():
                    fut.set_result(True)
            else:
                still_waiting.append((wanted, fut))
        self._publish_waiters = still_waiting
        return revision

    async def _publisher(self, client: aetcd.Client) -> None:
        """Writes our record again when the state changed or it was lost."""
        while True:
            await self._publish_wanted.wait()
            self._publish_wanted.clear()
            if self._reregister:
                self._reregister = False
                await self._ensure_lease(client)
                await self._publish(client)
                log.warning("node %s: registered again", self.node_id)
            elif self._published_version < self._info_version:
                await self._publish(client)

    def _request_reregistration(self, why: str) -> None:
        if self._closing or self._reregister:
            return
        log.warning("node %s: %s; registering again", self.node_id, why)
        self.leases_lost += 1
        self._registered.clear()
        self._reregister = True
        self._publish_wanted.set()

    def _lease_lost(self, lease_id: int) -> None:
        """The keepalive thread learnt from etcd that the lease is gone."""
        if lease_id == self._lease_id and not self._closing:
            self._lease_id = None
            self._request_reregistration(f"etcd lease {lease_id:x} is gone")

    @property
    def lease_held(self) -> bool:
        """False from the moment etcd said our lease is gone (peers may be
        failing our partitions over) until we are registered again."""
        return not self._reregister

    @property
    def keepalive_gap(self) -> float:
        """Longest time between two successful lease refreshes so far."""
        return self._keeper.longest_gap if self._keeper is not None else 0.0

    async def _consume(self, watch: Any) -> None:
        async for event in watch:
            key: bytes = event.kv.key
            revision: int = event.kv.mod_revision
            node_id = node_id_of(key, self._prefix_bytes)
            if event.kind == aetcd.EventKind.DELETE:
                self._members.pop(node_id, None)
                if key == self._key:
                    self._request_reregistration(
                        "our registration was deleted (lease expired or revoked)")
            else:
                decoded = self._decode(key, event.kv.value)
                if decoded is None:
                    self._members.pop(node_id, None)
                else:
                    self._members[decoded[0]] = decoded[1]
                if (key == self._key and revision > self._own_put_revision
                        and event.kv.lease != self._lease_id):
                    log.error(
                        "node %s: another process wrote our key %s (lease %x); "
                        "is the node id used twice?",
                        self.node_id, key.decode(errors="replace"), event.kv.lease,
                    )
            self._revision = max(self._revision, revision)
            # The watch hands over all events of one etcd response without
            # yielding to the loop; delivering from call_soon turns a burst of
            # them (e.g. several leases expiring together) into one map.
            if not self._deliver_scheduled:
                self._deliver_scheduled = True
                asyncio.get_running_loop().call_soon(self._deliver)

    # -- map delivery ---------------------------------------------------

    def _decode(self, key: bytes, value: bytes) -> tuple[str, MemberInfo] | None:
        node_id = node_id_of(key, self._prefix_bytes)
        if not node_id or "/" in node_id:
            return None
        try:
            return node_id, MemberInfo.decode(value)
        except ValueError as exc:
            log.warning("ignoring malformed member record %s: %s",
                        key.decode(errors="replace"), exc)
            return None

    def _deliver(self) -> None:
        # Called for every batch of watch events, even when the member set
        # ends up as it was (a node left and came back): every node sees the
        # same events, so every node then reaches the same epoch.
        self._deliver_scheduled = False
        current = self._current
        epoch = self._revision
        if current is not None and epoch == current.epoch:
            return
        if current is not None and epoch < current.epoch:
            log.error(
                "etcd revision went back from %d to %d (etcd data lost?); "
                "partition map epochs are no longer monotonic", current.epoch, epoch,
            )
        new_map = PartitionMap(epoch, self._members, self._replicas)
        self._current = new_map
        log.info("partition map epoch %d: %d member(s), active %s",
                 epoch, len(self._members), ", ".join(new_map.active) or "none")
        if self._on_change is not None:
            try:
                self._on_change(new_map)
            except Exception:
                log.exception("membership on_change callback failed")

    # -- outage bookkeeping ------------------------------------------------

    def _backoff(self, failures: int) -> float:
        # Jitter spreads the reconnects of many nodes after an etcd restart.
        return backoff(failures, _BACKOFF_START, self._max_backoff)

    def _report_outage(self, where: str, exc: BaseException, delay: float) -> None:
        now = time.monotonic()
        first = self._outage_since is None
        if first:
            self._outage_since = now
        if first or now - self._outage_logged_at >= _OUTAGE_LOG_INTERVAL:
            self._outage_logged_at = now
            epoch = self._current.epoch if self._current is not None else None
            log.warning(
                "node %s: etcd %s unavailable (%s: %s); keeping partition map epoch %s; "
                "retrying in %.1fs", self.node_id, where, type(exc).__name__, exc, epoch, delay,
            )
        else:
            log.debug("node %s: etcd %s still unavailable: %s", self.node_id, where, exc)

    def _report_recovery(self, where: str) -> None:
        if self._outage_since is not None:
            log.warning("node %s: etcd %s reachable again after %.1fs; registered",
                        self.node_id, where, time.monotonic() - self._outage_since)
            self._outage_since = None
        else:
            log.info("node %s: registered in etcd %s", self.node_id, where)

    async def _close_client(self, client: aetcd.Client) -> None:
        try:
            async with asyncio.timeout(self._rpc_timeout):
                # Shielded: a repeated cancel from stop_task must not leave
                # the channel half-closed.
                await asyncio.shield(client.close())
        except Exception as exc:
            log.debug("closing etcd client failed: %r", exc)

    async def _revoke(self, lease_id: int) -> None:
        for host, port in self._endpoints:
            client = make_client(host, port, self._rpc_timeout, self._creds)
            try:
                await client.revoke_lease(lease_id)
                log.info("node %s: left the cluster (lease %x revoked)", self.node_id, lease_id)
                return
            except Exception as exc:
                log.warning("node %s: could not revoke lease at %s:%d (%s); the others "
                            "drop this node when the lease expires", self.node_id, host, port,
                            exc)
            finally:
                await self._close_client(client)
