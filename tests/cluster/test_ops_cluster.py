"""The operator surface of a 3-node cluster (real etcd, real nodes): any
node's /api/status and dashboard show the whole cluster with the numbers of
gearadmin summed over the nodes, and a cancel from the page removes a job
that another node owns."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import gearadmin_status
from tests.support.cluster import Cluster
from tests.support.ops import api_counts, chromium_page, get_json
from tests.support.rawclient import RawClient, T
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
NODES = ["n1", "n2", "n3"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster")
    try:
        c.start(NODES)
        yield c
    finally:
        c.close()


def summed_gearadmin(c: Cluster) -> dict[str, tuple[int, int, int]]:
    total: dict[str, list[int]] = {}
    for n in NODES:
        for name, row in gearadmin_status(c.nodes[n].port).items():
            acc = total.setdefault(name, [0, 0, 0])
            for i in range(3):
                acc[i] += row[i]
    return {k: (v[0], v[1], v[2]) for k, v in total.items()}


def linked_status(base: str) -> dict[str, Any] | None:
    """/api/status once every node reports both its peer links up."""
    status: dict[str, Any] = get_json(base + "/api/status")
    ok = all(n["reachable"] and len(n["links"]) == 2 and set(n["links"].values()) == {"up"}
             for n in status["nodes"])
    return status if ok else None


@pytest.mark.timeout(120)
def test_any_node_shows_the_whole_cluster_and_cancels_anywhere(
        cluster: Cluster, tmp_path: Path) -> None:
    n1, n2, n3 = (cluster.nodes[n] for n in NODES)
    owned = {n: cluster.uniques_owned_by(n, NODES, 2, f"img-{n}") for n in NODES}
    with RawClient(n1.address) as client, RawClient(n3.address) as busy, \
            RawClient(n2.address) as sleeper:
        handles = {u: client.submit(b"resize", u.encode(), b"x" * 10,
                                    ptype=T.SUBMIT_JOB_BG).decode()
                   for us in owned.values() for u in us}
        assert all(handles[u].startswith(f"H:{n}:") for n, us in owned.items() for u in us)
        busy.send(T.SET_CLIENT_ID, b"resizer-n3")
        busy.can_do(b"resize")
        grabbed = busy.grab().args()[0].decode()
        assert grabbed.startswith("H:n3:")  # its own node's queue first
        sleeper.send(T.SET_CLIENT_ID, b"thumbs-n2")
        sleeper.can_do(b"thumb")
        sleeper.send(T.PRE_SLEEP)
        assert sleeper.sync() == []

        admin = summed_gearadmin(cluster)
        assert admin == {"resize": (6, 1, 1), "thumb": (0, 0, 1)}
        for node in (n1, n2):
            status = wait_until(lambda node=node: linked_status(node.http_base), 15,
                                interval=0.2, what="every peer link up")
            assert api_counts(status) == admin
            nodes = {n["id"]: n for n in status["nodes"]}
            assert sorted(nodes) == NODES
            assert {n["state"] for n in nodes.values()} == {"active"}
            assert len({n["epoch"] for n in nodes.values()}) == 1
            assert sum(n["partitions"] for n in nodes.values()) == 1024
            assert (nodes["n2"]["workers"], nodes["n3"]["workers"]) == (1, 1)
            assert {(w["node"], w["client_id"], w["state"]) for w in status["workers"]} == {
                ("n3", "resizer-n3", "busy"), ("n2", "thumbs-n2", "sleeping")}
            per_node = next(f for f in status["functions"] if f["name"] == "resize")["nodes"]
            assert {n: v["queued"] + v["running"] for n, v in per_node.items()} == \
                {n: gearadmin_status(cluster.nodes[n].port)["resize"][0] for n in NODES}

        out = subprocess.run([sys.executable, "-m", "gearmesh", "status", "--etcd",
                              cluster.etcd.endpoint, "--json"], capture_output=True, text=True,
                             timeout=30, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert api_counts(json.loads(out.stdout)) == admin

        jobs = get_json(n1.http_base + "/api/functions/resize/jobs")
        assert jobs["total"] == 5
        assert {j["handle"] for j in jobs["jobs"]} == set(handles.values()) - {grabbed}
        assert {j["owner"] for j in jobs["jobs"]} == set(NODES)

        with chromium_page() as page:
            page.goto(n1.http_base + "/")
            page.wait_for_selector('tr[data-node="n3"]')
            page.wait_for_function(
                "() => document.querySelector('tr[data-fn=\"resize\"] td[data-col=\"queued\"]')"
                "?.textContent === '5'")
            row = 'tr[data-fn="resize"] td[data-col="{}"]'
            assert page.text_content(row.format("running")) == "1"
            assert page.text_content(row.format("workers")) == "1"
            assert page.locator("#nodes tbody tr").count() == 3
            page.click(row.format("name"))
            victim = next(h for h in handles.values() if h.startswith("H:n2:"))
            page.wait_for_selector(f'#jobs tr[data-handle="{victim}"]')
            page.screenshot(path=str(tmp_path / "dashboard-cluster.png"), full_page=True)
            before = gearadmin_status(n2.port)["resize"][0]
            page.click(f'button.cancel[data-handle="{victim}"]')  # asked of n1, owned by n2
            page.wait_for_selector(f'#jobs tr[data-handle="{victim}"]', state="detached")
            assert page.text_content("#jobs-msg") == ""
            assert gearadmin_status(n2.port)["resize"][0] == before - 1
            page.wait_for_function(
                "() => document.querySelector('tr[data-fn=\"resize\"] td[data-col=\"queued\"]')"
                "?.textContent === '4'")
