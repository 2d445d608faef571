"""/readyz of a cluster node: not ready until it has joined, not ready while draining."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import http_get
from tests.support.etcd import EtcdServer
from tests.support.rawclient import RawClient, T
from tests.support.servers import free_port
from tests.support.waiting import wait_until


@pytest.mark.timeout(90)
def test_ready_only_after_joining_and_not_while_draining(tmp_path: Path) -> None:
    etcd = EtcdServer()  # ports reserved, not started yet: the node must wait for it
    port, http = free_port(), free_port()
    node = subprocess.Popen(
        [sys.executable, "-m", "gearmesh", "serve", "-L", "127.0.0.1", "-p", str(port),
         "--http-port", str(http), "--peer-port", "0", "--etcd", etcd.endpoint,
         "--node-id", "r1", "--lease-ttl", "2", "--queue", "memory",
         "--data-dir", str(tmp_path / "data"), "--grace", "30"],
        stderr=subprocess.DEVNULL)
    readyz = f"http://127.0.0.1:{http}/readyz"
    try:
        status, body = wait_until(lambda: http_get(readyz)[0] and http_get(readyz),
                                  timeout=30, what="HTTP up")
        assert (status, body) == (503, "not registered in etcd\n")
        # The Gearman port already serves (a standalone-like node), it just
        # is not a cluster member yet.
        with RawClient(("127.0.0.1", port)) as c:
            assert c.request(T.ECHO_REQ, b"x").payload == b"x"
        etcd.start()
        wait_until(lambda: http_get(readyz) == (200, "ready\n"), timeout=30, what="joined")

        with RawClient(("127.0.0.1", port)) as worker, \
                RawClient(("127.0.0.1", port)) as client:
            worker.can_do(b"f")
            handle = client.submit(b"f", b"", b"x")
            assert worker.grab().args()[0] == handle
            node.send_signal(signal.SIGTERM)
            wait_until(lambda: http_get(readyz) == (503, "draining\n"), what="draining")
            worker.send(T.WORK_COMPLETE, handle, b"ok")
            assert client.expect(T.WORK_COMPLETE).payload == handle + b"\0ok"
        assert node.wait(30) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)
        etcd.close()
