#!/usr/bin/env python3
"""Server memory per queued background job.

For each target: start a fresh server, warm it up (a small submit-and-drain
run, so one-time allocations are not charged to the jobs), read the server
process's VmRSS from /proc/PID/status, queue --jobs background jobs of
--payload-size bytes with `gearmesh bench bg --no-cleanup` (which also
checks the server reports them all queued), read VmRSS again, and report
(after - before) / jobs.

    benchmarks/memory.py                          # gearmand, memory, sqlite, gear; 1,000,000 jobs
    benchmarks/memory.py --targets gearmand --jobs 200000 --unique none
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import PY, ROOT, TARGETS, StartFailed


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def bench(servers: str, *args: str) -> dict[str, Any]:
    cmd = [PY, "-m", "gearmesh.bench", "bg", "--servers", servers, "--json", "--no-progress",
           *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT,
                         check=False)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"bench printed nothing: {out.stderr[-500:]}")
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc


def settle(pid: int, timeout: float = 10.0) -> int:
    """VmRSS once it stops moving: a server may still be freeing or
    compacting right after the load ends."""
    last = status_kb(pid, "VmRSS")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.5)
        now = status_kb(pid, "VmRSS")
        if abs(now - last) < 64:
            return now
        last = now
    return last


def measure(key: str, jobs: int, payload: int, unique: str) -> dict[str, Any]:
    target = TARGETS[key]
    servers = target.start()
    try:
        pids = target.server_pids()
        if len(pids) != 1:
            raise StartFailed(f"{target.label}: expected one server process, got {len(pids)}")
        pid = pids[0]
        warm = bench(servers, "--jobs", "2000", "--payload-size", str(payload),
                     "--unique", unique)
        if not warm.get("ok"):
            raise RuntimeError(f"warm-up failed: {warm.get('error') or warm.get('checks')}")
        before = settle(pid)
        t0 = time.monotonic()
        doc = bench(servers, "--jobs", str(jobs), "--payload-size", str(payload), "--unique",
                    unique, "--no-cleanup", "--duration", "3000")
        took = time.monotonic() - t0
        after = settle(pid)
        hwm = status_kb(pid, "VmHWM")
        queued = doc.get("metrics", {}).get("server_queued")
        return {
            "target": key, "label": target.label, "jobs": jobs, "payload_size": payload,
            "unique": unique, "rss_before_kb": before, "rss_after_kb": after, "hwm_kb": hwm,
            "bytes_per_job": round((after - before) * 1024 / jobs, 1),
            "server_queued": queued, "ok": bool(doc.get("ok")),
            "submit_s": round(took, 1),
            "submits_per_s": doc.get("metrics", {}).get("submits_per_s"),
        }
    finally:
        target.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="gearmand,memory,sqlite,gear",
                    help="comma list of gearmand, memory, sqlite, gear (single-process targets)")
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--payload-size", type=int, default=64)
    ap.add_argument("--unique", choices=("job", "none"), default="job",
                    help="job: a distinct unique per job (as libgearman sends); none: empty")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.json"))
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    failed = False
    for key in [t for t in args.targets.split(",") if t]:
        if key not in TARGETS:
            ap.error(f"unknown target {key}")
        try:
            row = measure(key, args.jobs, args.payload_size, args.unique)
        except (StartFailed, RuntimeError, OSError, KeyError) as exc:
            print(f"SKIP {key}: {exc}", flush=True)
            failed = True
            continue
        rows.append(row)
        failed |= not row["ok"]
        print(f"{row['label']:<26} {row['bytes_per_job']:>8,.0f} B/job  "
              f"(RSS {row['rss_before_kb']:,} -> {row['rss_after_kb']:,} kB, "
              f"queued {row['server_queued']}, {row['submit_s']} s)"
              + ("" if row["ok"] else "  CHECK FAILED"), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print()
    print(f"| server | bytes per queued {args.payload_size}-byte job "
          f"({args.jobs:,} jobs, unique={args.unique}) | RSS before | RSS after |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['bytes_per_job']:,.0f} | {r['rss_before_kb'] / 1024:,.1f} MiB"
              f" | {r['rss_after_kb'] / 1024:,.1f} MiB |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
