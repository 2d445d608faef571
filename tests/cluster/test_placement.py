"""Copy placement and the fencing decisions (cluster/placement.py): pure logic."""

from __future__ import annotations

from cluster.memberinfo import MemberInfo
from cluster.partition import PARTITIONS, PartitionMap, partition_of, ranking
from cluster.placement import Placement, Verdict, job_partition, judge_copies, may_acknowledge


def pmap(active: list[str], others: dict[str, str] | None = None, epoch: int = 7) -> PartitionMap:
    members = {n: MemberInfo("-", state="active") for n in active}
    for n, state in (others or {}).items():
        members[n] = MemberInfo("-", state=state)  # type: ignore[arg-type]
    return PartitionMap(epoch, members)


def test_the_copy_goes_to_the_node_that_owns_the_partition_after_the_owner() -> None:
    m = pmap(["n1", "n2", "n3"])
    for p in range(0, PARTITIONS, 37):
        owner, second = m.preference_list(p)
        assert Placement(m, owner).target(p, lambda n: True) == second
        # ... which is the owner once the first one is gone.
        without = pmap([n for n in ("n1", "n2", "n3") if n != owner])
        assert without.owner_of(p) == second


def test_an_unusable_candidate_is_skipped_and_none_left_gives_none() -> None:
    m = pmap(["n1", "n2", "n3"])
    p = next(p for p in range(PARTITIONS) if m.owner_of(p) == "n1")
    first, second = ranking(["n2", "n3"], p)
    pl = Placement(m, "n1")
    assert pl.target(p, lambda n: n != first) == second
    assert pl.target(p, lambda n: True, avoid=frozenset({first})) == second
    assert pl.target(p, lambda n: False) is None


def test_a_node_that_does_not_own_the_key_places_by_ranking_too() -> None:
    m = pmap(["n1", "n2", "n3"])
    p = next(p for p in range(PARTITIONS) if m.owner_of(p) == "n3")
    # n1 ran it itself (the owner's link was down): its copy avoids n1 only.
    assert Placement(m, "n1").candidates(p) == ranking(["n2", "n3"], p)


def test_alone_there_is_no_candidate() -> None:
    pl = Placement(pmap(["n1"]), "n1")
    assert pl.others == ()
    assert pl.target(3, lambda n: True) is None


def test_job_partition_is_the_routing_keys() -> None:
    assert job_partition(b"u1", b"payload", 5) == partition_of(b"u1")
    assert job_partition(b"-", b"payload", 5) == partition_of(b"payload")
    assert job_partition(b"", b"payload", 5) == partition_of(b"5")


def test_copies_from_a_member_are_accepted_from_a_node_gone_stale() -> None:
    m = pmap(["n1", "n2"], {"n4": "draining", "n5": "joining"})
    assert judge_copies(m, "n1", "n2") is Verdict.ACCEPT
    assert judge_copies(m, "n1", "n4") is Verdict.ACCEPT  # draining still holds its lease
    assert judge_copies(m, "n1", "n5") is Verdict.ACCEPT
    assert judge_copies(m, "n1", "n3") is Verdict.STALE  # lease expired: not a member


def test_a_node_that_is_not_active_keeps_no_copies() -> None:
    m = pmap(["n1"], {"n4": "draining"})
    assert judge_copies(m, "n4", "n1") is Verdict.NOT_REPLICA
    assert judge_copies(None, "n1", "n2") is Verdict.NOT_REPLICA


def test_a_node_that_lost_its_lease_acknowledges_nothing() -> None:
    m = pmap(["n1", "n2"])
    assert may_acknowledge(m, "n1", lease_held=True)
    assert not may_acknowledge(m, "n1", lease_held=False)
    assert not may_acknowledge(pmap(["n2"]), "n1", lease_held=True)
    assert not may_acknowledge(None, "n1", lease_held=True)
