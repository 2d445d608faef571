"""The `helm test` script (helm/gearmesh/files/roundtrip.py) against the
reference server, gearmand: proves the script speaks Gearman correctly, so
that when `helm test` fails it is the cluster, not the test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helm import render
from tests.support.servers import free_port

SCRIPT = render.CHART / "files" / "roundtrip.py"
GEARMAND = Path(os.environ.get("GEARMESH_TEST_GEARMAND", "/usr/sbin/gearmand"))

pytestmark = pytest.mark.no_helm


@pytest.fixture(scope="module")
def gearmand() -> Iterator[str]:
    if not GEARMAND.exists():
        pytest.skip(f"gearmand not installed at {GEARMAND} (scripts/bootstrap --system)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gearmand-") as d:
        proc = subprocess.Popen(
            [str(GEARMAND), "-L", "127.0.0.1", "-p", str(port), "-l", f"{d}/log",
             "--verbose", "ERROR"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail("gearmand did not start")
                    time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def run_script(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(60)
def test_jobs_round_trip(gearmand: str) -> None:
    run = run_script("--worker", gearmand, "--client", gearmand, "--client", gearmand,
                     "--jobs", "25", "--timeout", "20")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok   via") == 2


@pytest.mark.timeout(60)
def test_two_workers(gearmand: str) -> None:
    run = run_script("--worker", gearmand, "--worker", gearmand, "--client", gearmand,
                     "--jobs", "10", "--timeout", "20")
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.timeout(60)
def test_fails_when_no_worker_can_be_reached(gearmand: str) -> None:
    # The worker's server is down: jobs queue forever, and the script must say
    # so and exit non-zero at its deadline instead of hanging.
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    run = run_script("--worker", dead, "--client", gearmand, "--jobs", "1", "--timeout", "3")
    assert run.returncode == 1
    assert "FAIL via" in run.stdout
    assert time.monotonic() - started < 15


@pytest.mark.timeout(60)
def test_fails_when_the_server_is_down() -> None:
    dead = f"127.0.0.1:{free_port()}"
    run = run_script("--worker", dead, "--client", dead, "--jobs", "1", "--timeout", "2")
    assert run.returncode == 1
    assert "cannot connect" in run.stdout


@pytest.mark.timeout(90)
def test_jobs_round_trip_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """The chart's TLS mode: the test pod dials a node that requires client
    certificates (--ssl-verify-client), verifying the chain only."""
    from tests.support.certs import make_pki
    from tests.support.tlsclients import tls_server

    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    client = pki.client("client")
    with tls_server(pki, "--ssl-verify-client", probe=client, workdir=tmp_path / "n") as node:
        run = run_script("--worker", node.address, "--client", node.address, "--jobs", "5",
                         "--timeout", "30", "--tls-ca", str(pki.ca), "--tls-cert",
                         str(client.cert), "--tls-key", str(client.key), timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.count("ok   via") == 1
        plain = run_script("--worker", node.address, "--client", node.address, "--jobs", "1",
                           "--timeout", "3")
        assert plain.returncode == 1
