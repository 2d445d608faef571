"""Plug the cluster layer into a node: membership, peer link, router.

Order at start: bind the peer port (so the address we publish works), hand
the router to the job manager, register in etcd as ``joining``, then turn
``active`` once we have a map — from then on peers route keys to us.
Drain turns ``draining`` first, so peers stop routing new keys here; once
our own map shows that, queued background jobs are handed to their new owners
(each leaves our store only after the new owner committed it), and running
jobs finish here; stop revokes the lease, so we leave the map at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import metadata

from cluster.memberinfo import MemberInfo
from cluster.membership import Membership
from cluster.partition import PartitionMap
from cluster.peerlink import PeerLinks, PeerLinkServer
from cluster.replicas import Replicas
from cluster.router import Router
from cluster.security import ClusterSecurity
from node.config import NodeConfig
from node.server import Node

log = logging.getLogger("gearmesh.cluster")


def _version() -> str:
    try:
        return metadata.version("gearmesh")
    except metadata.PackageNotFoundError:
        return "0"


class ClusterExtension:
    def __init__(self, node: Node, cfg: NodeConfig,
                 security: ClusterSecurity | None = None) -> None:
        self.node = node
        self.cfg = cfg
        self.node_id = cfg.effective_node_id
        self.security = security or ClusterSecurity()
        self.links = PeerLinks(self.node_id, outbox_high=cfg.peer_outbox,
                               ssl_context=self.security.peer_client,
                               defer=cfg.peer_defer_ms / 1000)
        # Back-pressure: a full outbox to a peer pauses the connections that
        # feed this node; our store falling behind stops reading peers.
        self.links.on_outbox(lambda peer: node.pause_feeding(f"peer {peer}"),
                             lambda peer: node.resume_feeding(f"peer {peer}"))
        self.links.set_intake_gate(node.intake_gate)
        node.peer_outboxes = self.links.outboxes
        self.server = PeerLinkServer(self.links, host=cfg.listen or "0.0.0.0", port=cfg.peer_port,
                                     ssl_context=self.security.peer_server)
        self.router = Router(self.node_id, node.manager, node.dispatcher, self.links,
                             node.counters)
        self.links.on_frames(self.router.on_frames)
        self.links.on_peer_down(self._peer_down)
        self.links.on_peer_up(self._peer_up)
        self.replicas: Replicas | None = None  # made in start(), once the store is open
        self.membership: Membership | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._out_of_map = asyncio.Event()  # set once a map lists us as not active
        self._drained = False
        self._drain_started = False
        self._why_left = ""

    def _peer_down(self, node_id: str) -> None:
        log.warning("link to node %s is down", node_id)
        self.router.node_lost(node_id)
        if self.replicas is not None:
            self.replicas.peer_down(node_id)

    def _lease_held(self) -> bool:
        return self.membership is None or self.membership.lease_held

    def _peer_up(self, node_id: str) -> None:
        if self.replicas is not None:
            self.replicas.peer_up(node_id)

    def _on_map(self, new: PartitionMap) -> None:
        log.info("partition map epoch %d: active %s", new.epoch, ", ".join(new.active))
        if self.replicas is not None:
            self.replicas.before_map(new)
        self.router.set_map(new)
        if self.replicas is not None:
            self.replicas.after_map(new)
        if self.node_id not in new.active:
            self._out_of_map.set()
        else:
            self._out_of_map.clear()

    async def start(self) -> None:
        cfg = self.cfg
        if cfg.replicas and self.node.manager.store.durable:
            # First, before the loop serves any connection: jobs replayed
            # from our disk are held until we know none was promoted elsewhere.
            self.replicas = Replicas(self.node, cfg, self.node_id, self.links, self.router,
                                     self._lease_held)
            self.replicas.hold_replayed()
        peer_port = await self.server.start()
        host = cfg.advertise_host
        http = f"{host}:{cfg.http_port}" if cfg.http_port else ""
        info = MemberInfo(peer_address=f"{host}:{peer_port}",
                          gearman_address=f"{host}:{self.node.port}", http_address=http,
                          state="joining", version=_version(), started_at=time.time())
        self.membership = Membership(cfg.etcd or "", cfg.etcd_prefix, self.node_id, info,
                                     lease_ttl=cfg.lease_ttl, on_change=self._on_map,
                                     etcd_credentials=self.security.etcd,
                                     replicas=cfg.replicas)
        self.node.manager.cluster = self.router
        self.node.dispatcher.set_forwarder(self.router)
        self._metrics_task = asyncio.get_running_loop().create_task(self._copy_link_totals())
        await self.membership.start()
        if await self.membership.wait_registered(timeout=10):
            await self.membership.set_state("active", timeout=5)
            log.warning("node %s joined the cluster (peer %s)", self.node_id, info.peer_address)
        else:
            log.error("etcd not reachable yet; serving alone until it is")

    async def _copy_link_totals(self) -> None:
        # The peer link counts per peer; /metrics reads the node's counters.
        counters = self.node.counters
        while True:
            counters.peer_frames_sent, counters.peer_batches_sent = self.links.totals()
            if self.membership is not None:
                counters.lease_losses = self.membership.leases_lost
            if self.replicas is not None:
                owner = self.replicas.owner
                counters.replica_copies_sent = owner.copies_sent
                counters.replica_frames_sent = owner.frames_sent
                counters.under_replicated = owner.under_replicated
                counters.promoted = self.replicas.failover.promoted
            await asyncio.sleep(1.0)

    def _check_nothing_left(self) -> None:
        """A drain must not end with queued jobs while another node could
        take them: after a scale-in nobody starts this node again. If it
        does, say so and exit non-zero; the jobs stay in the store and run
        when the node starts again with the same data directory."""
        left = self.router.handoff.left()
        m = self.membership.current if self.membership is not None else None
        others = [n for n in (m.active if m is not None else ()) if n != self.node_id]
        if left and others:
            log.error("drain: %d queued background job(s) were not handed over (%s); they "
                      "stay in %s for this node's next start; active nodes: %s", left,
                      self._why_left or "unknown reason", self.cfg.data_dir,
                      ", ".join(others))
            self.node.exit_status = 1

    def ready(self) -> tuple[bool, str]:
        ms = self.membership
        if ms is None or not ms.registered:
            return False, "not registered in etcd"
        m = ms.current
        if m is None:
            return False, "no partition map yet"
        if self.node_id not in m.active:
            return False, f"not active in the partition map (state {ms.info.state})"
        return True, "ready"

    def epoch(self) -> int:
        m = self.membership.current if self.membership is not None else None
        return m.epoch if m is not None else 0

    async def drain(self) -> None:
        if self.membership is None:
            return
        self._drain_started = True
        await self.membership.set_state("draining", timeout=2)
        try:
            async with asyncio.timeout(5):
                await self._out_of_map.wait()
        except TimeoutError:
            self._why_left = "the partition map still lists this node as active"
            log.warning("drain: %s; its queued jobs cannot be handed over", self._why_left)
            return
        self._drained = True
        moved, left, why = await self.router.hand_off_all(self.cfg.grace)
        self._why_left = why
        log.warning("drain: %d queued background job(s) handed to their new owners; "
                    "%d queued background job(s) still here%s", moved, left,
                    f" ({why})" if why else "")

    async def stop(self) -> None:
        if self._drained:
            # Submits forwarded here before the peers' maps changed, and the
            # jobs of workers whose connections the node has just closed
            # (their connection_lost runs on the next loop iteration).
            await asyncio.sleep(0)
            moved, _, why = await self.router.hand_off_all(2.0)
            self._why_left = why or self._why_left
            if moved:
                log.warning("drain: %d job(s) handed over in total", moved)
        if self._drain_started:
            self._check_nothing_left()
        if self._metrics_task is not None:
            self._metrics_task.cancel()
        self.router.close()
        if self.membership is not None:
            await self.membership.close()
        if self.replicas is not None:
            self.replicas.close()
        await self.links.close()
        await self.server.stop(0.5)


def attach_cluster(node: Node, cfg: NodeConfig,
                   security: ClusterSecurity | None = None) -> ClusterExtension:
    return ClusterExtension(node, cfg, security)
