"""--owner: unique ids that a gearmesh cluster routes to one chosen node.

A cluster node routes a submit by its unique id alone (cluster/router.py),
through the partition map that every node builds from the ids of the active
members (cluster/partition.py). The owner of a partition depends on nothing
else: not on the epoch, the replica count or any other member field. So a
map built here from the same ids gives the nodes' answer, and a unique can
be steered to a node by appending a salt until that node owns it.

cluster/ is imported only when --owner is used, so that the load generator
keeps working against any Gearman server without the cluster code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.partition import PartitionMap

# Separates a job's own key from its salt; never a digit, so "1~23" and
# "12~3" cannot be the same unique.
SALT_SEP = b"~"


class OwnedKeys:
    """Turns a job's base key into a unique id that `owner` owns."""

    def __init__(self, owner: str, nodes: Sequence[str]) -> None:
        from cluster.memberinfo import MemberInfo
        from cluster.partition import PartitionMap

        if not owner:
            raise ValueError("--owner needs a node id")
        if len(set(nodes)) != len(nodes):
            raise ValueError("--nodes lists a node id twice")
        if owner not in nodes:
            raise ValueError(f"--owner {owner} is not one of --nodes {','.join(nodes)}")
        self.owner = owner
        self.nodes = tuple(nodes)
        # Every listed node counts as active: a node routes by the active
        # members only, so --nodes must name exactly those.
        self.map: PartitionMap = PartitionMap(
            0, {n: MemberInfo("-", state="active") for n in nodes})
        if not self.map.partitions_of(owner):
            raise ValueError(f"node {owner} owns no partition among {len(nodes)} nodes")

    def owns(self, unique: bytes) -> bool:
        return self.map.owner_of_key(unique) == self.owner

    def key(self, base: bytes, end: bytes = b"") -> bytes:
        """base + "~" + the smallest salt that makes the owner own the result,
        + end. Distinct bases give distinct keys. About len(nodes) tries."""
        owner_of_key, owner = self.map.owner_of_key, self.owner
        base += SALT_SEP
        salt = 0
        while True:
            unique = base + b"%d" % salt + end
            if owner_of_key(unique) == owner:
                return unique
            salt += 1


def parse_nodes(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())
