#!/usr/bin/env python3
"""What replication costs per job, and what a crash costs with it.

    .venv/bin/python benchmarks/replication.py [--jobs 60000] [--queued 100000]

1. Cost: a 3-node cluster (sqlite queues, loopback, temporary directory) is
   started with ``--replicas 0`` and then ``--replicas 1``; each time
   ``gearmesh bench bg --servers n1,n2,n3 --no-cleanup --jobs N`` submits
   background jobs (unique per job) through all three nodes. Reported: the
   bench's submits/s, the nodes' CPU (utime + stime from
   /proc/PID/stat) per job, and peer-link frames and batches per job (the
   nodes' /metrics).
2. Crash: with ``--replicas 1``, ``--queued`` jobs owned by n3 are queued
   (submitted through n1, no worker), n3 is killed with SIGKILL, and a worker
   on n1 waits: reported are the time from the kill to the first promoted job
   assigned, the promotion time the nodes log, and that every job runs.

Needs etcd (scripts/bootstrap --system). Run it on an otherwise idle machine:
on a 2-core box the figures move with anything else running.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.memberinfo import MemberInfo
from cluster.partition import PartitionMap
from tests.support.cluster import Cluster, ClusterNode
from tests.support.ledger import Ledger, LedgerWorker
from tests.support.rawclient import RawClient, T, join, pack

TICK = 100  # clock ticks per second in /proc (sysconf CLK_TCK on Linux)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def counter(node: ClusterNode, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", node.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def cost(replicas: int, jobs: int, tmp: Path) -> dict[str, float]:
    c = Cluster(tmp / f"cost-r{replicas}", queue="sqlite", lease_ttl=2)
    try:
        nodes = c.start(["n1", "n2", "n3"], "--replicas", str(replicas))
        c.wait_converged(["n1", "n2", "n3"])
        names = ("gearmesh_peer_frames_sent_total", "gearmesh_peer_batches_sent_total",
                 "gearmesh_replica_frames_sent_total", "gearmesh_replica_copies_sent_total")
        before = {n: sum(counter(x, n) for x in nodes) for n in names}
        cpu0 = sum(cpu_seconds(x.pid) for x in nodes)
        servers = ",".join(f"127.0.0.1:{x.port}" for x in nodes)
        out = subprocess.run(
            [sys.executable, "-m", "gearmesh", "bench", "bg", "--servers", servers,
             "--jobs", str(jobs), "--no-cleanup", "--json", "--no-progress"],
            check=True, capture_output=True, text=True).stdout
        cpu = sum(cpu_seconds(x.pid) for x in nodes) - cpu0
        # The counters are copied to /metrics once a second.
        time.sleep(1.2)
        after = {n: sum(counter(x, n) for x in nodes) for n in names}
        result = json.loads(out)
        d = {n: after[n] - before[n] for n in names}
        return {
            "submits_per_s": float(result["metrics"]["submits_per_s"]),
            "cpu_us_per_job": cpu / jobs * 1e6,
            "frames_per_job": d["gearmesh_peer_frames_sent_total"] / jobs,
            "batches_per_job": d["gearmesh_peer_batches_sent_total"] / jobs,
            "copy_frames_per_job": d["gearmesh_replica_frames_sent_total"] / jobs,
            "copies_per_job": d["gearmesh_replica_copies_sent_total"] / jobs,
            "raw": result,
        }
    finally:
        c.close()


def crash(queued: int, tmp: Path) -> None:
    c = Cluster(tmp / "crash", queue="sqlite", lease_ttl=2)
    try:
        n1, n2, n3 = c.start(["n1", "n2", "n3"])
        c.wait_converged(["n1", "n2", "n3"])
        # One map for all candidates (Cluster.uniques_owned_by builds one per
        # candidate: fine for tests, far too slow for 100,000).
        pm = PartitionMap(0, {n: MemberInfo("-", state="active") for n in ("n1", "n2", "n3")})
        uniques = []
        i = 0
        while len(uniques) < queued:
            u = f"crash-{i}"
            if pm.owner_of_key(u.encode()) == "n3":
                uniques.append(u)
            i += 1
        with RawClient(n1.host_port, timeout=120) as cl:
            for i in range(0, len(uniques), 1000):
                chunk = uniques[i:i + 1000]
                cl.send_raw(b"".join(pack(T.SUBMIT_JOB_BG, join("crash", u, u)) for u in chunk))
                for _ in chunk:
                    assert cl.recv().ptype == T.JOB_CREATED
        ledger = Ledger()
        workers = [LedgerWorker(n.host_port, [b"crash"], ledger) for n in (n1, n2)]
        for w in workers:
            w.start()
        killed = time.monotonic()
        n3.kill9()
        assert ledger.wait_assigned(1, 60)
        first = time.monotonic() - killed
        assert ledger.wait_assigned(queued, 600), len(ledger)
        everything = time.monotonic() - killed
        for w in workers:
            w.stop()
        runs = ledger.runs()
        lost = sum(1 for u in uniques if runs[u.encode()] == 0)
        twice = sum(1 for u in uniques if runs[u.encode()] > 1)
        logs = "\n".join(m.group(0) for n in (n1, n2)
                         for m in re.finditer(r"promoted \d+ of its .* in [\d.]+s", n.log_text()))
        print(f"\n## Crash of an owner with {queued} queued jobs (lease TTL 2 s)\n")
        print(f"- first promoted job assigned {first:.2f} s after the SIGKILL")
        print(f"- all {queued} run {everything:.1f} s after it; lost {lost}, run twice {twice}")
        print("- promotion as the nodes logged it:\n  " + logs.replace("\n", "\n  "))
    finally:
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=60_000)
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-crash", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gearmesh-repl-") as tmp:
        if not args.skip_cost:
            rows = {r: cost(r, args.jobs, Path(tmp)) for r in (0, 1)}
            print(f"## Background submits through 3 nodes ({args.jobs} jobs, unique per job)\n")
            print("| --replicas | submits/s | node CPU µs/job | peer frames/job "
                  "| peer batches/job | copy frames/job | copies/job |")
            print("|---|---|---|---|---|---|---|")
            for r, d in rows.items():
                print(f"| {r} | {d['submits_per_s']:,.0f} | "
                      f"{d['cpu_us_per_job']:.0f} | {d['frames_per_job']:.2f} | "
                      f"{d['batches_per_job']:.3f} | {d['copy_frames_per_job']:.3f} | "
                      f"{d['copies_per_job']:.2f} |")
            r0, r1 = rows[0]["submits_per_s"], rows[1]["submits_per_s"]
            if r0:
                print(f"\nthroughput with replication: {r1 / r0:.2f}x without")
        if not args.skip_crash:
            crash(args.queued, Path(tmp))
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
