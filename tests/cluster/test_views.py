"""The cluster side of the HTTP API: who the other members are (a node that
left stays listed as gone for a while), this node's facts, handle owners."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cluster.memberinfo import MemberInfo
from cluster.partition import PartitionMap
from cluster.peerlink import LinkState
from cluster.views import ClusterViews
from node.api import down_view, merge


class Links:
    def __init__(self, states: dict[str, LinkState]) -> None:
        self.states = states

    def peers(self) -> dict[str, str]:
        return {n: "-" for n in self.states}

    def state(self, node_id: str) -> LinkState | None:
        return self.states.get(node_id)


def _membership(epoch: int, states: dict[str, str]) -> Any:
    members = {n: MemberInfo(f"{n}:4731", f"{n}:4730", f"{n}:4732", state=s)  # type: ignore[arg-type]
               for n, s in states.items()}
    return SimpleNamespace(current=PartitionMap(epoch, members), info=members["n1"])


@pytest.mark.timeout(10)
def test_members_facts_and_gone_nodes() -> None:
    ms = _membership(7, {"n1": "active", "n2": "active", "n3": "draining"})
    views = ClusterViews("n1", lambda: ms, Links({"n2": LinkState.UP, "n3": LinkState.DOWN}))
    assert [(m.node_id, m.state, m.http) for m in views.members()] == [
        ("n2", "active", "n2:4732"), ("n3", "draining", "n3:4732")]
    local = views.local()
    assert (local["state"], local["epoch"], local["links"]) == (
        "active", 7, {"n2": "up", "n3": "down"})
    assert local["partitions"] == len(ms.current.partitions_of("n1")) > 0
    assert views.owner_of_handle(b"H:n3:12") == "n3"
    assert views.owner_of_handle(b"H:n1:12") is None  # our own
    assert views.owner_of_handle(b"H:n9:12") is None  # nobody we know
    ms.current = _membership(8, {"n1": "active", "n2": "active"}).current
    assert [(m.node_id, m.state) for m in views.members()] == [("n2", "active"), ("n3", "gone")]
    assert views.owner_of_handle(b"H:n3:12") is None


@pytest.mark.timeout(10)
def test_an_unreachable_member_is_listed_and_counts_nothing() -> None:
    from node.api import Member

    up = {"node": {"id": "n1", "rates": {"submitted": 2.0, "completed": 1.0}},
          "functions": [{"name": "f", "queued": 3, "running": 1, "workers": 2}], "workers": [],
          "history": {"end": 10, "submitted": [1, 2], "completed": [0, 1]}}
    down = down_view(Member("n2", "active", "n2:4730", "n2:4732"), "timed out")
    view = merge([up, down])
    assert view["totals"] == {"queued": 3, "running": 1, "workers": 2}
    assert [(n["id"], n.get("reachable", True), n.get("error")) for n in view["nodes"]] == [
        ("n1", True, None), ("n2", False, "timed out")]
    assert view["history"]["submitted"] == [1, 2]
