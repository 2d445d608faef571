"""Where a job's copy goes, and whose copies a replica takes. Pure logic.

Placement: a job's copy goes to the first node of its partition's preference
list (cluster/partition.py) that is not the job's owner and whose link is
usable. Normally that is the partition's second node, which is also the node
that owns the partition once the owner is gone: the copy is already where
failover needs it. A job whose key has no owner here (an empty unique, or a
submit run on its entry node because the owner's link was down) is placed by
its job id, so such copies spread over the other nodes.

Fencing: a replica accepts copies only from a node that is a member of its
own map (active, joining or draining: each holds its lease). A node whose
lease expired (killed, paused, cut off from etcd) drops out of every map
within the watch delay, and that is exactly when the replica promotes its
copies; from then on its copies are refused ("stale"), so it cannot
acknowledge a job that the promotion did not see. A node that is not active
itself (joining, draining) takes no copies: it is leaving, or not yet a
place anyone routes to.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from cluster.partition import PartitionMap, partition_of, ranking


class Verdict(Enum):
    """A replica's answer to a frame of copies (the value goes on the wire)."""

    ACCEPT = "ok"
    STALE = "stale"  # the sender is not a member of our map: its lease expired
    NOT_REPLICA = "not-replica"  # we are not active: try another node


def job_partition(unique: bytes, payload: bytes, jid: int) -> int:
    """The partition a job's copy is placed by: its routing key's (the
    unique, or the payload for unique ``-``; see cluster/router.py), or for a
    job without one, its id's."""
    key = payload if unique == b"-" else unique
    return partition_of(key if key else str(jid).encode())


class Placement:
    """Copy targets under one map; rankings are cached per partition."""

    def __init__(self, pmap: PartitionMap, self_id: str) -> None:
        self.map = pmap
        self.self_id = self_id
        self._others = tuple(n for n in pmap.active if n != self_id)
        self._cache: dict[int, tuple[str, ...]] = {}

    @property
    def others(self) -> tuple[str, ...]:
        """Active nodes other than this one: where copies may go."""
        return self._others

    def candidates(self, partition: int) -> tuple[str, ...]:
        """Copy targets for a partition, best first (this node excluded)."""
        ranked = self._cache.get(partition)
        if ranked is None:
            ranked = self._cache[partition] = ranking(self._others, partition)
        return ranked

    def target(self, partition: int, usable: Callable[[str], bool],
               avoid: frozenset[str] = frozenset()) -> str | None:
        """The first candidate that is usable and not in ``avoid``; None when
        there is none."""
        for node in self.candidates(partition):
            if node not in avoid and usable(node):
                return node
        return None


def judge_copies(pmap: PartitionMap | None, self_id: str, sender: str) -> Verdict:
    """May this node keep copies ``sender`` sends under our map ``pmap``?"""
    if pmap is None or self_id not in pmap.active:
        return Verdict.NOT_REPLICA
    if sender not in pmap.members:
        return Verdict.STALE
    return Verdict.ACCEPT


def may_acknowledge(pmap: PartitionMap | None, self_id: str, lease_held: bool) -> bool:
    """Whether this node may acknowledge a replicated job at all: etcd has not
    told it that its lease is gone, and it is a member of its own map. A node
    that lost its lease acknowledges nothing, even before a replica says
    "stale". (etcd merely unreachable is not a lost lease: etcd renews every
    lease when it comes back, so nobody fails this node over meanwhile.)"""
    return lease_held and pmap is not None and self_id in pmap.members
