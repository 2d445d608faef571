"""/healthz, /readyz and /metrics of a real node process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.admin import gearadmin_status
from tests.support.rawclient import RawClient, T
from tests.support.servers import GEARMESH, ServerProcess, free_port
from tests.support.waiting import wait_until


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def poll(port: int, path: str) -> tuple[int, str] | None:
    try:
        return get(port, path)
    except OSError:
        return None


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, text = get(port, "/metrics")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.timeout(60)
def test_metrics_match_gearadmin_status() -> None:
    http = free_port()
    with ServerProcess(kind=GEARMESH, extra_args=["--http-port", str(http)]) as server, \
            RawClient(server.address) as client, RawClient(server.address) as worker:
        for i in range(3):
            client.submit(b"resize", f"u{i}".encode(), b"x", ptype=T.SUBMIT_JOB_BG)
        client.submit(b"mail", b"m1", b"x", ptype=T.SUBMIT_JOB_BG)
        worker.can_do(b"resize")
        assert worker.grab().ptype == T.JOB_ASSIGN_UNIQ
        rows = gearadmin_status(server.port)
        assert rows == {"resize": (3, 1, 1), "mail": (1, 0, 0)}
        m = metrics(http)
        for name, (total, running, workers) in rows.items():
            labels = (("function", name),)
            assert m[("gearmesh_jobs_queued", labels)] == total - running
            assert m[("gearmesh_jobs_running", labels)] == running
            assert m[("gearmesh_workers", labels)] == workers
        assert m[("gearmesh_submitted_total", ())] == 4
        assert m[("gearmesh_connections", ())] == 2
        assert m[("gearmesh_ring_epoch", ())] == 0
        assert get(http, "/healthz") == (200, "ok\n")


def _fill_store(data_dir: Path, n: int) -> None:
    """A store as a node leaves it, with n background jobs."""
    data_dir.mkdir(parents=True)
    conn = sqlite3.connect(data_dir / "jobs.sqlite3")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, rec BLOB)")
    conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER)")
    pack = msgpack.Packer(use_bin_type=True).pack
    conn.executemany("INSERT INTO jobs VALUES (?, ?)",
                     ((i, pack([b"f", b"u%d" % i, 1, b"p" * 64, 0, b""]))
                      for i in range(1, n + 1)))
    conn.commit()
    conn.close()


@pytest.mark.timeout(120)
def test_readyz_waits_for_replay(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _fill_store(data, 300_000)
    http, port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gearmesh", "serve", "-L", "127.0.0.1",
                             "-p", str(port), "--http-port", str(http), "--data-dir", str(data)],
                            stderr=subprocess.DEVNULL)
    try:
        seen = []

        def ready() -> bool:
            r = poll(http, "/readyz")
            if r is not None:
                seen.append(r)
                # Never ready while the Gearman port is still closed.
                if r[0] == 200:
                    with RawClient(("127.0.0.1", port)):
                        pass
            return r is not None and r[0] == 200

        wait_until(ready, timeout=100, what="ready after replay")
        assert seen[0] == (503, "replaying the job store\n"), seen[:3]
        with RawClient(("127.0.0.1", port)) as c:
            assert c.admin_list("status") == ["f\t300000\t0\t0"]
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.timeout(60)
def test_readyz_says_draining_during_sigterm_grace() -> None:
    http = free_port()
    args = ["--http-port", str(http), "--grace", "30"]
    with ServerProcess(kind=GEARMESH, extra_args=args) as server, \
            RawClient(server.address) as client, RawClient(server.address) as worker:
        assert get(http, "/readyz") == (200, "ready\n")
        worker.can_do(b"f")
        handle = client.submit(b"f", b"", b"x")
        worker.grab()
        server.send_signal(signal.SIGTERM)
        wait_until(lambda: get(http, "/readyz") == (503, "draining\n"), what="draining")
        assert get(http, "/healthz")[0] == 200
        worker.send(T.WORK_COMPLETE, handle, b"ok")
        assert client.expect(T.WORK_COMPLETE).payload == handle + b"\0ok"
        assert server.stop(timeout=20) == 0
