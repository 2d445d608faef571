"""The replica side of replication: keep other nodes' copies, acknowledge.

A ``repl`` frame (cluster/replication.py) carries the copies and deletions
one owner queued for us during one of its loop iterations. We judge the
sender under our own map (cluster/placement.py: a node whose lease expired
is "stale"), queue the whole frame in the replica store's next group commit
(node/replicastore.py) and answer ``racked`` once it is durable. One sync
per frame; the writer thread folds all syncs of a burst into one commit.

Copies left from an earlier life of this node: when this node starts, every
origin that is alive in its first map has copied its jobs again elsewhere
when our link broke (the owner re-replicates what a lost replica held), so
those old copies are dropped before any new copy is taken; copies of origins
that are gone are kept for promotion (cluster/failover.py).
"""

from __future__ import annotations

import logging
from typing import Any

from cluster.partition import PartitionMap
from cluster.peerlink import PeerLinks
from cluster.placement import Verdict, judge_copies
from cluster.replication import RACKED
from node.replicastore import ReplicaStore

log = logging.getLogger("gearmesh.cluster")


class CopyIntake:
    def __init__(self, node_id: str, store: ReplicaStore, links: PeerLinks) -> None:
        self.node_id = node_id
        self.store = store
        self.links = links
        self.map: PartitionMap | None = None
        #: Origins that may have copies here (from the disk, then from frames).
        self.origins: set[str] = set(store.origins())
        self.refused = 0  # frames answered "stale" or "not-replica"
        # Answers to a node we have no link to yet (it restarted with a new
        # address and our map does not show it yet): sent when the link is up.
        self._unsent: dict[str, list[list[Any]]] = {}

    def set_map(self, pmap: PartitionMap) -> None:
        first = self.map is None
        self.map = pmap
        if first:
            alive = {o for o in self.origins if o in pmap.members and o != self.node_id}
            for origin in sorted(alive):
                self.store.drop_origin(origin)
            self.origins -= alive
            if alive:
                log.warning("dropped old copies of %s: those nodes are alive and copied "
                            "their jobs again when this node went away", ", ".join(sorted(alive)))

    def on_frame(self, sender: str, frame: list[Any]) -> None:
        seq, puts, dels = int(frame[1]), frame[2], frame[3]
        verdict = judge_copies(self.map, self.node_id, sender)
        if verdict is not Verdict.ACCEPT:
            self.refused += 1
            self._answer(sender, [RACKED, seq, verdict.value])
            return
        store = self.store
        if puts:
            store.put_many(sender, [(int(jid), bytes(rec)) for jid, rec in puts])
            self.origins.add(sender)
        if dels:
            store.delete_many(sender, [int(jid) for jid in dels])
        def durable(err: BaseException | None) -> None:
            self._answer(sender, [RACKED, seq, Verdict.ACCEPT.value if err is None else "error"])
        store.sync(durable)

    def _answer(self, node: str, frame: list[Any]) -> None:
        if self.links.state(node) is None:
            self._unsent.setdefault(node, []).append(frame)
        else:
            self.links.send(node, frame)  # a broken link: the owner sends again

    def peer_up(self, node: str) -> None:
        for frame in self._unsent.pop(node, ()):
            self.links.send(node, frame)

    def node_gone(self, node: str) -> None:
        self._unsent.pop(node, None)
