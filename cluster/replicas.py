"""Replicas and failover, put together for one node (DESIGN.md, "Replicas and
failover"): the owner side (cluster/replication.py), the replica side
(cluster/copies.py) and promotion (cluster/failover.py) around one replica
store (node/replicastore.py) beside the node's job store.

Only for a durable queue: with ``--queue memory`` nothing survives a restart
anyway, and a second copy in another node's memory is not what JOB_CREATED
promises (see docs/durability.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cluster.copies import CopyIntake
from cluster.failover import Failover
from cluster.partition import PartitionMap
from cluster.peerlink import PeerLinks
from cluster.reconcile import ASKED, FORGET, PROMOTED, Reconcile
from cluster.replication import RACKED, REPL, ReplicatingStore
from cluster.router import Router
from node.config import NodeConfig
from node.replicastore import ReplicaStore
from node.server import Node

log = logging.getLogger("gearmesh.cluster")

REPLICA_FILE = "replicas.sqlite3"


class Replicas:
    def __init__(self, node: Node, cfg: NodeConfig, node_id: str, links: PeerLinks,
                 router: Router, lease_held: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        self.node = node
        self.store = ReplicaStore(cfg.data_dir / REPLICA_FILE, loop.call_soon_threadsafe,
                                  fsync=cfg.fsync)
        self.intake = CopyIntake(node_id, self.store, links)
        inner = node.manager.store
        self.owner = ReplicatingStore(inner, node_id, links, lease_held,
                                      single_copy=cfg.single_copy)
        # What we replayed at start is copied again once there is a map.
        self.owner.adopt_replayed(list(inner.load()))
        # The job manager writes through the replicating store from now on;
        # the node keeps its own store for backlog, metrics and close.
        node.manager.store = self.owner
        self.failover = Failover(node_id, node.manager, self.store, self.intake.origins,
                                 router.hand_off)
        self.reconcile = Reconcile(node_id, node.manager, links, self.store, self.failover)
        router.extra_frames[REPL] = self.intake.on_frame
        router.extra_frames[RACKED] = self._on_racked
        router.extra_frames[ASKED] = self.reconcile.on_asked
        router.extra_frames[PROMOTED] = self.reconcile.on_promoted
        router.extra_frames[FORGET] = self.reconcile.on_forget
        self._map: PartitionMap | None = None
        if self.intake.origins:
            log.warning("replica store holds copies of node(s) %s",
                        ", ".join(sorted(self.intake.origins)))

    def hold_replayed(self) -> None:
        """At start, before any worker can connect: the jobs replayed from
        our disk wait until the peers said which they promoted meanwhile."""
        self.reconcile.hold("replayed from disk")

    def _on_racked(self, sender: str, frame: list[object]) -> None:
        self.owner.on_acked(sender, int(frame[1]), str(frame[2]))  # type: ignore[call-overload]

    def before_map(self, new: PartitionMap) -> None:
        """Before the router sees a new map: the replica side drops stale
        copies on its first map, and the owner side re-places copies held by
        nodes that left."""
        old = self._map
        self._map = new
        self.intake.set_map(new)
        self.owner.set_map(new)
        if old is not None:
            for gone in set(old.members) - set(new.members):
                self.owner.node_lost(gone)
                self.reconcile.node_lost(gone)
                self.intake.node_gone(gone)

    def after_map(self, new: PartitionMap) -> None:
        self.failover.set_map(new)
        self.reconcile.set_map(new)

    def peer_down(self, node_id: str) -> None:
        self.owner.node_lost(node_id)
        self.reconcile.node_lost(node_id)

    def peer_up(self, node_id: str) -> None:
        self.intake.peer_up(node_id)
        self.owner.node_back(node_id)

    @property
    def under_replicated(self) -> int:
        return self.owner.under_replicated

    def close(self) -> None:
        self.reconcile.close()
        self.failover.close()
        self.store.close()
