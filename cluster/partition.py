"""Job key → partition → owning node. Pure logic, no I/O.

Every node computes the map on its own from the membership it reads in etcd,
so the computation must give the same answer in every process: the hash is a
fixed function of the bytes (never Python's per-process salted ``hash()``),
and ties and orders are broken by node id, never by dict or set order.

Owners are chosen by rendezvous (highest-random-weight) hashing: each
partition ranks the active nodes by ``weight(node, partition)`` and the top
one owns it, the next ones hold its replicas. When a node leaves, only the
partitions it ranked first on change owner; when one joins, it takes only the
partitions where it ranks first — about 1/N of them, taken evenly from
everyone else — which is what keeps handoff small.

Changing ``stable_hash``, ``PARTITIONS`` or the weight function re-homes
almost every job key; nodes of different versions would then disagree about
owners. Treat them as part of the wire protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from cluster.memberinfo import MemberInfo

PARTITIONS: Final = 1024


def stable_hash(key: bytes) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and version."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def partition_of(key: bytes) -> int:
    """The partition of a job key: the unique id (the payload for unique
    ``-``), see cluster/router.py for why the function is left out."""
    return stable_hash(key) % PARTITIONS


def ranking(node_ids: Iterable[str], partition: int) -> tuple[str, ...]:
    """Every node of ``node_ids`` in the partition's preference order (its
    owner first): the map keeps only the first few, replication placement
    needs the rest when those are unreachable."""
    suffix = b"\x00" + partition.to_bytes(4, "big")

    def weight(node_id: str) -> tuple[int, str]:
        # The node id in the key makes ties practically impossible; sorting on
        # it as well keeps even a tie deterministic.
        return stable_hash(node_id.encode() + suffix), node_id

    return tuple(sorted(node_ids, key=weight, reverse=True))


class PartitionMap:
    """Who owns each partition, as of one membership revision (the epoch).

    Only members in state ``active`` own or replicate partitions; joining and
    draining members are listed in ``members`` but hold nothing. With no
    active member every partition is unowned (``owner_of`` returns None).
    """

    __slots__ = ("_by_node", "_epoch", "_members", "_prefs", "_replicas", "_replicated_by_node")

    def __init__(
        self, epoch: int, members: Mapping[str, MemberInfo], replicas: int = 1
    ) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self._epoch = epoch
        self._members: Mapping[str, MemberInfo] = MappingProxyType(dict(members))
        self._replicas = replicas
        active = sorted(n for n, info in members.items() if info.is_active)
        keep = 1 + replicas
        self._prefs: tuple[tuple[str, ...], ...] = tuple(
            ranking(active, p)[:keep] for p in range(PARTITIONS)
        )
        owned: dict[str, set[int]] = {n: set() for n in active}
        replicated: dict[str, set[int]] = {n: set() for n in active}
        for p, pref in enumerate(self._prefs):
            if pref:
                owned[pref[0]].add(p)
                for r in pref[1:]:
                    replicated[r].add(p)
        self._by_node = {n: frozenset(s) for n, s in owned.items()}
        self._replicated_by_node = {n: frozenset(s) for n, s in replicated.items()}

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def members(self) -> Mapping[str, MemberInfo]:
        """Every registered member, whatever its state (read-only)."""
        return self._members

    @property
    def replicas(self) -> int:
        return self._replicas

    @property
    def active(self) -> tuple[str, ...]:
        """Ids of the members that own partitions, sorted."""
        return tuple(sorted(self._by_node))

    def owner_of(self, partition: int) -> str | None:
        pref = self._prefs[partition]
        return pref[0] if pref else None

    def replicas_of(self, partition: int) -> tuple[str, ...]:
        """The replica holders of a partition, best first, owner excluded."""
        return self._prefs[partition][1:]

    def preference_list(self, partition: int) -> tuple[str, ...]:
        """Owner first, then replicas: the failover order of the partition."""
        return self._prefs[partition]

    def owner_of_key(self, key: bytes) -> str | None:
        return self.owner_of(partition_of(key))

    def partitions_of(self, node_id: str) -> frozenset[int]:
        """Partitions the node owns (empty for unknown or inactive nodes)."""
        return self._by_node.get(node_id, frozenset())

    def replica_partitions_of(self, node_id: str) -> frozenset[int]:
        """Partitions the node holds a replica of."""
        return self._replicated_by_node.get(node_id, frozenset())

    def same_assignment(self, other: PartitionMap) -> bool:
        """True when both maps place every partition (and replica) alike."""
        return self._prefs == other._prefs

    def __repr__(self) -> str:
        return (
            f"PartitionMap(epoch={self._epoch}, active={list(self.active)}, "
            f"members={len(self._members)})"
        )


def moved(
    old_map: PartitionMap | None, new_map: PartitionMap
) -> dict[int, tuple[str | None, str | None]]:
    """Partitions whose owner differs between two maps: ``{p: (old, new)}``.

    ``old_map=None`` stands for "no map yet": every owned partition counts as
    moved from None.
    """
    changes: dict[int, tuple[str | None, str | None]] = {}
    for p in range(PARTITIONS):
        before = old_map.owner_of(p) if old_map is not None else None
        after = new_map.owner_of(p)
        if before != after:
            changes[p] = (before, after)
    return changes
