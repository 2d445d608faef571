#!/usr/bin/env python3
"""Where does a cross-node job's CPU go? Profile a 3-node cluster under one
cell of benchmarks/scale.

    sudo .venv/bin/python benchmarks/link_profile.py                 # rt32, 6 s
    sudo .venv/bin/python benchmarks/link_profile.py --cell bg32x16 --no-py-spy

Starts the same 3-node cluster as benchmarks/scale (each node on its own
cgroup CPU quota, default 0.3 core), with every node's peer link wrapped so
it counts the frames it sends per destination and frame kind. During the run
it samples each node with py-spy (``pip install py-spy``; skipped when it is
missing or with --no-py-spy), reads each thread's CPU from
/proc/PID/task/*/stat, and prints per job: frames sent by kind, gRPC
messages, CPU per node and thread, and the functions where the samples
landed (self time, and inclusive time of a few entry points).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpuquota import QuotaUnavailable, detect
from targets import PY, ROOT, Cluster

# The wrapper each node runs: gearmesh's own command, with PeerLinks.send
# counting (destination, kind) and a thread dumping the counts to a file.
WRAPPER = r'''
import collections, json, os, sys, threading, time
import cluster.peerlink as pl

counts = collections.Counter()
links = []
_send = pl.PeerLinks.send
_init = pl.PeerLinks.__init__

def send(self, node_id, frame, *args, **kwargs):
    counts[(node_id, frame[0] if isinstance(frame, list) else "?")] += 1
    return _send(self, node_id, frame, *args, **kwargs)

def init(self, *a, **k):
    _init(self, *a, **k)
    links.append(self)

pl.PeerLinks.send = send
pl.PeerLinks.__init__ = init
out = os.environ["LINK_PROFILE_OUT"]

def dump():
    while True:
        time.sleep(0.25)
        try:
            doc = {"frames": [[d, k, n] for (d, k), n in list(counts.items())],
                   "batches": {n: l.stats(n).batches_sent for l in links for n in l.peers()}}
            tmp = out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, out)
        except Exception:
            pass

threading.Thread(target=dump, daemon=True).start()
from gearmesh.cli import main
sys.exit(main())
'''

# The cells of benchmarks/scale: name -> (bench arguments, jobs cap).
CELLS = {
    "rt32": (["rt", "--clients", "32", "--workers", "32"], 200_000),
    "rt32-spread": (["rt", "--clients", "32", "--workers", "32", "--worker-placement",
                     "spread"], 200_000),
    "rt128": (["rt", "--clients", "128", "--workers", "64"], 200_000),
    "bg32x16": (["bg", "--conns", "32", "--inflight", "16", "--no-cleanup"], 400_000),
    "bg256": (["bg", "--conns", "256", "--inflight", "1", "--no-cleanup"], 150_000),
}


class CountingCluster(Cluster):
    def __init__(self, wrapper: Path, outdir: Path, queue: str) -> None:
        super().__init__("gm3", "3 gearmesh nodes", 3, queue)
        self.wrapper = wrapper
        self.outdir = outdir

    def spawn(self, name: str, cmd: list[str]) -> Any:
        if cmd[:3] == [PY, "-m", "gearmesh"]:
            cmd = [PY, str(self.wrapper), *cmd[3:]]
            os.environ["LINK_PROFILE_OUT"] = str(self.outdir / f"{name}.json")
        return super().spawn(name, cmd)


def thread_cpu(pid: int) -> dict[str, float]:
    """Thread name -> CPU seconds, for every thread of a process."""
    out: dict[str, float] = collections.defaultdict(float)
    tck = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] += (int(fields[11]) + int(fields[12])) / tck
    return out


def read_counts(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {"frames": [], "batches": {}}


def summarise_stacks(raw: Path, top: int) -> list[str]:
    """Self time per function and inclusive time of some entry points, from
    py-spy's raw (folded) output."""
    selfs: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        total += k
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1]
                  if " (" in f else f for f in stack.split(";")]
        if frames:
            selfs[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    lines = [f"    {total} samples; self time:"]
    for f, k in selfs.most_common(top):
        lines.append(f"      {100 * k / total:5.1f}%  {f}")
    lines.append("    inclusive:")
    for f, k in incl.most_common(top * 2):
        if k < total * 0.98:
            lines.append(f"      {100 * k / total:5.1f}%  {f}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", default="rt32", choices=sorted(CELLS))
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--cores", type=float, default=0.3)
    ap.add_argument("--queue", default="memory", choices=("memory", "sqlite"))
    ap.add_argument("--no-py-spy", action="store_true")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    try:
        quotas = detect(a.cores, 10_000)
    except QuotaUnavailable as exc:
        print(f"link_profile: {exc}", file=sys.stderr)
        return 2
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    use_spy = not a.no_py_spy and os.access(spy, os.X_OK)
    work = Path(tempfile.mkdtemp(prefix="link-profile-"))
    wrapper = work / "counting_node.py"
    wrapper.write_text(WRAPPER)
    target = CountingCluster(wrapper, work, a.queue)
    servers = target.start()
    try:
        pids = target.server_pids()
        for i, pid in enumerate(pids):
            quotas.new(f"prof-{i}").add(pid)
        names = [p.name for p in target.procs if p.name != "etcd"]
        before = {n: read_counts(work / f"{n}.json") for n in names}
        cpu0 = {n: thread_cpu(pid) for n, pid in zip(names, pids, strict=True)}
        spies = []
        if use_spy:
            for n, pid in zip(names, pids, strict=True):
                spies.append(subprocess.Popen(
                    [spy, "record", "--nonblocking", *(["--native"] if a.native else []),
                     "-r", "200", "-f", "raw", "-p", str(pid),
                     "-d", str(int(a.seconds)), "-o", str(work / f"{n}.raw")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        args, cap = CELLS[a.cell]
        bench_env = {k: v for k, v in os.environ.items() if k != "LINK_PROFILE_OUT"}
        cmd = [PY, "-m", "gearmesh", "bench", *args, "--jobs", str(cap),
               "--duration", f"{a.seconds:g}", "--servers", servers, "--json", "--no-progress"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=bench_env,
                              timeout=a.seconds * 3 + 60)
        cpu1 = {n: thread_cpu(pid) for n, pid in zip(names, pids, strict=True)}
        time.sleep(0.6)  # one more dump of the counters
        after = {n: read_counts(work / f"{n}.json") for n in names}
        for s in spies:
            s.wait(timeout=60)
    finally:
        target.stop()
        quotas.remove_all()
    doc = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    m = doc["metrics"]
    jobs = int(m.get("done", m.get("acked", 0)) or 0)
    if not jobs:
        print(f"link_profile: the bench ran no job: {proc.stdout[-1500:]} {proc.stderr[-1500:]}",
              file=sys.stderr)
        return 1
    rate = float(m.get("jobs_per_s", m.get("submits_per_s", 0.0)) or 0.0)
    print(f"# {a.cell} on 3 nodes, {a.cores:g} core each: {jobs:,} jobs, {rate:,.0f}/s, "
          f"checks {'ok' if doc.get('ok') else 'FAILED'}")
    total_cpu = 0.0
    for n in names:
        threads = {t: cpu1[n].get(t, 0.0) - cpu0[n].get(t, 0.0) for t in cpu1[n]}
        node_cpu = sum(threads.values())
        total_cpu += node_cpu
        busy = ", ".join(f"{t} {v / jobs * 1e6:.0f}" for t, v in
                         sorted(threads.items(), key=lambda kv: -kv[1]) if v > 0.005)
        print(f"{n}: {node_cpu / jobs * 1e6:.0f} µs/job ({busy})")
        f0 = collections.Counter({(d, k): c for d, k, c in before[n]["frames"]})
        f1 = collections.Counter({(d, k): c for d, k, c in after[n]["frames"]})
        df = f1 - f0
        for dest in sorted({d for d, _ in df}):
            kinds = ", ".join(f"{k} {c / jobs:.3f}" for (d, k), c in sorted(df.items())
                              if d == dest)
            frames = sum(c for (d, _), c in df.items() if d == dest)
            b = after[n]["batches"].get(dest, 0) - before[n]["batches"].get(dest, 0)
            print(f"  -> {dest}: {frames / jobs:.3f} frames/job in {b / jobs:.3f} messages/job "
                  f"({frames / b if b else 0:.1f} per message): {kinds}")
        raw = work / f"{n}.raw"
        if raw.exists():
            print("\n".join(summarise_stacks(raw, a.top)))
    print(f"all nodes: {total_cpu / jobs * 1e6:.0f} µs/job")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
