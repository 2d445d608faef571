"""drain: W workers empty a pre-filled queue; measures jobs per second.

The queue is filled first (untimed, pipelined background submits), its size
is checked with the admin `status` command, and then every worker starts
grabbing at the same instant. The rate is jobs / (last job done - start).
Each job's data is checked, and a bitmap per process proves every job ran
exactly once.
"""

from __future__ import annotations

import os
from typing import Any

from gearmesh.bench.config import Config
from gearmesh.bench.engine import ChildRuntime, Control, Outcome, queued_view
from gearmesh.bench.roles import JobSource, SubmitStats, WorkerStats
from gearmesh.bench.scenarios.common import (
    DrainHandler,
    connect_submitters,
    connect_workers,
    merge_bitmaps,
    queue_empty,
    stop_workers,
    submit_all,
    total,
    worker_checks,
    worker_result,
)
from gearmesh.bench.stats import fmt_rate

# Phases: 1 connected, 2 pre-filled, 3 go.


class DrainScenario:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.prefix = f"{cfg.run_id}-".encode()

    def procs(self) -> int:
        return min(self.cfg.workers, self.cfg.conns)

    async def child(self, rt: ChildRuntime) -> dict[str, Any]:
        cfg = self.cfg
        lo, hi = rt.block(cfg.jobs)
        source = JobSource(lo, hi)
        sstats = SubmitStats()
        subs = await connect_submitters(rt, source, self.prefix, sstats, lambda: False)
        wstats = WorkerStats()
        handler = DrainHandler(self.prefix, cfg.payload_size, cfg.jobs)
        # Workers connect and register now, so the timed part is only the
        # grabbing and completing.
        workers = await connect_workers(rt, handler, wstats)
        rt.count_with(lambda: sstats.acked + sstats.errors)
        await rt.sync()
        await submit_all(subs)
        rt.count_with(lambda: wstats.done)
        await rt.sync()
        start = await rt.sync()
        cpu0 = os.times()
        for w in workers:
            w.begin()
        await rt.wait_stop(1)
        cpu1 = os.times()
        late = await stop_workers(workers, cfg.grace)
        result: dict[str, Any] = {
            "start": start, "last": handler.last, "late_workers": late,
            "sent": sstats.sent, "acked": sstats.acked, "submit_errors": sstats.errors,
            "submit_lost": sstats.lost, "first_submit_error": sstats.first_error,
            "bitmap": bytes(handler.bitmap), "bad_payload": handler.bad_payload,
            "foreign": handler.foreign, "dup_local": handler.dup_local,
            "unverified": handler.unverified,
            "run_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        }
        result.update(worker_result(wstats))
        return result

    def parent(self, ctl: Control) -> Outcome:
        cfg = self.cfg
        out = Outcome()
        ctl.sync("connecting")
        ctl.sync("pre-filling", total=cfg.jobs)
        queued, running, how = queued_view(ctl.status(cfg.func))
        expected = queued
        ctl.sync()
        in_time = ctl.watch("drain", expected, lambda: ctl.progress() >= expected,
                            cfg.duration, stop_level=1)
        results = ctl.collect()
        empty_after = queue_empty(ctl)()

        acked, sent = total(results, "acked"), total(results, "sent")
        done = total(results, "w_done")
        start = min(r["start"] for r in results)
        last = max((r["last"] for r in results if r["last"]), default=start)
        elapsed = max(last - start, 1e-9)
        rate = done / elapsed
        seen, twice = merge_bitmaps(r["bitmap"] for r in results)
        dups = twice + total(results, "dup_local")
        bad = total(results, "bad_payload")
        foreign = total(results, "foreign")
        run_cpu = sum(r["run_cpu_s"] for r in results)
        out.metrics.update({
            "jobs": cfg.jobs, "prefilled": acked, "server_queued_before": queued,
            "done": done, "elapsed_s": round(elapsed, 4), "jobs_per_s": round(rate, 1),
            "duplicates": dups, "bad_payload": bad, "capped": not in_time,
            "tool_run_cpu_s": round(run_cpu, 3),
            "tool_cpu_us_per_job": round(run_cpu / done * 1e6, 2) if done else None,
        })
        out.rows += [
            ("pre-filled", f"{acked:,} jobs; server reports {queued:,} queued ({how})"),
            ("drained", f"{done:,} jobs by {cfg.workers} workers in {elapsed:.3f} s"),
            ("rate", f"{fmt_rate(rate)} jobs/s"),
            ("tool CPU in run", f"{run_cpu:.2f} s"
             + (f" ({run_cpu / done * 1e6:.1f} us/job)" if done else "")),
        ]
        serr = total(results, "submit_errors") + total(results, "submit_lost")
        out.check("pre-fill acknowledged", acked == sent == cfg.jobs and serr == 0,
                  f"sent={sent} acked={acked} errors={serr}")
        out.check("server held every pre-filled job before the drain",
                  queued == acked and running == 0, f"queued={queued} acked={acked}")
        unverified = total(results, "unverified")
        out.check("every job ran exactly once with its data",
                  done == acked and seen + unverified == acked and dups == 0 and bad == 0
                  and foreign == 0,
                  f"done={done} distinct={seen} duplicates={dups} bad_data={bad} "
                  f"foreign={foreign} unverifiable={unverified}")
        out.check("drained within the --duration cap", in_time,
                  f"{done}/{expected} in {cfg.duration:g} s")
        out.check("queue empty afterwards", empty_after)
        ok, detail = worker_checks(results)
        out.check("workers saw no errors", ok, detail)
        return out
