"""The replica store (node/replicastore.py) on a real SQLite file: group
commit, sync after everything queued before it, order on load, survives a
reopen, drops an origin's copies."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path

import pytest

from node.replicastore import Copy, ReplicaStore


class Posted:
    """Stands in for the event loop: callbacks posted from the writer thread."""

    def __init__(self) -> None:
        self.q: queue.Queue[Callable[[], None]] = queue.Queue()

    def post(self, cb: Callable[[], None]) -> None:
        self.q.put(cb)

    def run_one(self, timeout: float = 10.0) -> None:
        self.q.get(timeout=timeout)()


def synced(store: ReplicaStore, loop: Posted) -> BaseException | None:
    result: list[BaseException | None] = []
    store.sync(result.append)
    while not result:
        loop.run_one()
    return result[0]


@pytest.fixture
def loop() -> Posted:
    return Posted()


def test_put_delete_sync_load_in_id_order(tmp_path: Path, loop: Posted) -> None:
    s = ReplicaStore(tmp_path / "r.sqlite3", loop.post)
    try:
        s.put_many("n3", [(5, b"e"), (2, b"b"), (9, b"i")])
        s.put_many("n2", [(1, b"x")])
        s.delete_many("n3", [9])
        assert synced(s, loop) is None
        assert list(s.load("n3")) == [Copy("n3", 2, b"b"), Copy("n3", 5, b"e")]
        assert s.origins() == {"n3": 2, "n2": 1}
    finally:
        s.close()


def test_copies_survive_a_reopen_and_an_origin_can_be_dropped(tmp_path: Path,
                                                               loop: Posted) -> None:
    path = tmp_path / "r.sqlite3"
    s = ReplicaStore(path, loop.post)
    s.put_many("n3", [(i, b"r%d" % i) for i in range(1, 1001)])  # several statements
    assert synced(s, loop) is None
    s.close()
    s = ReplicaStore(path, loop.post)
    try:
        assert s.origins() == {"n3": 1000}
        assert [c.id for c in s.load("n3")] == list(range(1, 1001))
        s.drop_origin("n3")
        assert synced(s, loop) is None
        assert s.origins() == {}
    finally:
        s.close()


def test_many_syncs_queued_together_all_fire(tmp_path: Path, loop: Posted) -> None:
    s = ReplicaStore(tmp_path / "r.sqlite3", loop.post)
    try:
        fired: list[BaseException | None] = []
        for i in range(50):
            s.put("n1", i + 1, b"x")
            s.sync(fired.append)
        while len(fired) < 50:
            loop.run_one()
        assert fired == [None] * 50
        assert s.origins() == {"n1": 50}
    finally:
        s.close()
