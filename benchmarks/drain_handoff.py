#!/usr/bin/env python3
"""How long a draining node takes to hand its queued background jobs over.

    .venv/bin/python benchmarks/drain_handoff.py [--jobs 100000]

Starts etcd and two nodes (sqlite queues, on loopback, in a temporary
directory), queues ``--jobs`` background jobs (64-byte payloads) that node
n2 owns by submitting them on n1, sends n2 SIGTERM and reports how long it
took to exit and that n1 now holds every job. Needs Debian's etcd-server
(scripts/bootstrap --system).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.admin import status
from tests.support.cluster import Cluster
from tests.support.rawclient import RawClient, T, join, pack
from tests.support.waiting import wait_until

FUNC = "drain.fn"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    jobs = ap.parse_args().jobs
    with tempfile.TemporaryDirectory(prefix="gearmesh-drain-") as tmp:
        cluster = Cluster(Path(tmp), queue="sqlite", lease_ttl=2)
        try:
            n1, n2 = cluster.start(["n1", "n2"])
            cluster.wait_converged(["n1", "n2"])
            uniques = cluster.uniques_owned_by("n2", ["n1", "n2"], jobs, "drain")
            with RawClient(n1.host_port, timeout=60) as c:
                for i in range(0, jobs, 1000):
                    chunk = uniques[i:i + 1000]
                    c.send_raw(b"".join(pack(T.SUBMIT_JOB_BG, join(FUNC, u, "x" * 64))
                                        for u in chunk))
                    for _ in chunk:
                        c.expect(T.JOB_CREATED)
            wait_until(lambda: status(n2.host_port).get(FUNC, (0, 0, 0))[0] == jobs, 60)
            t0 = time.monotonic()
            n2.send_signal(signal.SIGTERM)
            wait_until(lambda: not n2.running, 600, interval=0.05)
            took = time.monotonic() - t0
            held = status(n1.host_port).get(FUNC, (0, 0, 0))[0]
            print(f"{jobs} queued background jobs: n2 exited {took:.2f} s after SIGTERM "
                  f"({jobs / took:,.0f} jobs/s); n1 now holds {held}")
            if held != jobs:
                raise SystemExit("jobs were not all handed over")
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
