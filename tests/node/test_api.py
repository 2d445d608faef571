"""The JSON API (/api/...) and the exporter-named metrics of a real node,
against the numbers `gearadmin` reads from the same node."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.admin import gearadmin_status
from tests.support.ops import api_counts, cancel, get_json, request
from tests.support.rawclient import RawClient, T
from tests.support.servers import GEARMESH, ServerProcess, free_port
from tests.support.waiting import wait_until


def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.timeout(60)
def test_api_matches_gearadmin_and_cancels_through_the_admin_rule() -> None:
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    with ServerProcess(kind=GEARMESH, extra_args=["--http-port", str(http)]) as server, \
            RawClient(server.address) as client, RawClient(server.address) as busy, \
            RawClient(server.address) as sleeper:
        handles = [client.submit(b"resize", f"u{i}".encode(), b"x" * (i + 1),
                                 ptype=T.SUBMIT_JOB_BG).decode() for i in range(3)]
        high = client.submit(b"resize", b"hi", b"urgent", ptype=T.SUBMIT_JOB_HIGH_BG).decode()
        client.submit(b"mail", b"m1", b"x", ptype=T.SUBMIT_JOB_BG)
        busy.send(T.SET_CLIENT_ID, b"resizer-1")
        busy.can_do(b"resize")
        assert busy.grab().args()[0].decode() == high  # high priority first
        sleeper.send(T.SET_CLIENT_ID, b"thumbs-1")
        sleeper.can_do(b"thumb")
        sleeper.send(T.PRE_SLEEP)
        assert sleeper.sync() == []

        admin = gearadmin_status(server.port)
        assert admin == {"resize": (4, 1, 1), "mail": (1, 0, 0), "thumb": (0, 0, 1)}
        status = get_json(base + "/api/status")
        assert api_counts(status) == admin
        assert api_counts(get_json(base + "/api/node")) == admin
        assert status["totals"] == {"queued": 4, "running": 1, "workers": 2}
        stuck = {f["name"] for f in status["functions"] if f["stuck"]}
        assert stuck == {"mail"}  # queued, and no worker anywhere can run it
        (node,) = status["nodes"]
        assert (node["state"], node["epoch"], node["reachable"]) == ("active", 0, True)
        assert node["connections"] == 3 and node["workers"] == 2
        workers = {w["client_id"]: (w["functions"], w["state"]) for w in status["workers"]}
        assert workers == {"resizer-1": (["resize"], "busy"), "thumbs-1": (["thumb"], "sleeping")}

        jobs = get_json(base + "/api/functions/resize/jobs")
        assert jobs["total"] == 3
        assert [(j["handle"], j["unique"], j["size"], j["priority"], j["owner"])
                for j in jobs["jobs"]] == [
            (h, f"u{i}", i + 1, "normal", node["id"]) for i, h in enumerate(handles)]
        assert all(0 <= j["age"] < 30 for j in jobs["jobs"])
        assert get_json(base + "/api/functions/resize/jobs?limit=1")["jobs"][0]["handle"] \
            == handles[0]

        # The rate history counts the five submits (sampled once a second).
        wait_until(lambda: sum(get_json(base + "/api/status")["history"]["submitted"]) == 5,
                   10, interval=0.2, what="the five submits in the rate history")

        # The cancel is a JSON POST carrying the page's CSRF token, same origin.
        assert cancel(base, handles[1], token="wrong")[0] == 403
        origin = {"Origin": "http://evil.example"}
        assert cancel(base, handles[1], extra=origin)[0] == 403
        token = get_json(base + "/api/csrf")["token"]
        assert request(base + "/api/jobs/cancel", {"handle": handles[1]},
                       {"X-CSRF-Token": token})[0] == 403  # not JSON: a form could send it
        assert gearadmin_status(server.port)["resize"] == (4, 1, 1)
        status_code, reply = cancel(base, handles[1])
        assert (status_code, reply["cancelled"]) == (200, True)
        assert gearadmin_status(server.port)["resize"] == (3, 1, 1)
        assert cancel(base, handles[1])[0] == 404
        assert [j["handle"] for j in get_json(base + "/api/functions/resize/jobs")["jobs"]] \
            == [handles[0], handles[2]]

        # The community exporter's names, with admin status's numbers.
        m = _metrics(base)
        admin = gearadmin_status(server.port)
        for name, (total, running, nworkers) in admin.items():
            labels = (("function", name),)
            assert m[("gearman_status_total", labels)] == total
            assert m[("gearman_status_running", labels)] == running
            assert m[("gearman_status_workers", labels)] == nworkers
        assert m[("gearman_up", ())] == 1
        assert m[("gearman_version_info", (("version", "1.1.20"),))] == 1


@pytest.mark.timeout(30)
def test_actions_off_leaves_the_api_read_only() -> None:
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    with ServerProcess(kind=GEARMESH, extra_args=["--http-port", str(http),
                                                  "--http-actions", "off"]) as server, \
            RawClient(server.address) as client:
        handle = client.submit(b"resize", b"u", b"x", ptype=T.SUBMIT_JOB_BG).decode()
        code, reply = cancel(base, handle)
        assert code == 403 and "--http-actions off" in reply["error"]
        assert gearadmin_status(server.port)["resize"] == (1, 0, 0)
        assert get_json(base + "/api/csrf")["actions"] is False
