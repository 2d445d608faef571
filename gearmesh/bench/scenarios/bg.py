"""bg: pipelined SUBMIT_JOB_BG; measures acknowledged submits per second.

Every job has its own unique id, so nothing coalesces and the server must
end up holding exactly as many jobs as it acknowledged; that is checked with
the admin `status` command. Afterwards (unless --no-cleanup) workers drain
the queue, untimed, which also proves every stored job was intact.
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
    throttled,
    total,
    worker_checks,
    worker_result,
)
from gearmesh.bench.stats import fmt_rate

# Phases: 1 connected, 2 go, 3 submitted, 4 cleanup started.


class BgScenario:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.prefix = f"{cfg.run_id}-".encode()

    def procs(self) -> int:
        return self.cfg.conns

    async def child(self, rt: ChildRuntime) -> dict[str, Any]:
        cfg = self.cfg
        lo, hi = rt.block(cfg.jobs)
        source = JobSource(lo, hi)
        stats = SubmitStats()
        subs = await connect_submitters(rt, source, self.prefix, stats, lambda: rt.stopped(1))
        rt.count_with(lambda: stats.acked + stats.errors)
        await rt.sync()
        start = await rt.sync()
        cpu0 = os.times()
        end = await submit_all(subs)
        cpu1 = os.times()
        result: dict[str, Any] = {
            "start": start, "end": end, "sent": stats.sent, "acked": stats.acked,
            "errors": stats.errors, "lost": stats.lost, "unexpected": stats.unexpected,
            "first_error": stats.first_error,
            "run_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        }
        await rt.sync()
        if not cfg.cleanup:
            return result
        wstats = WorkerStats()
        handler = DrainHandler(self.prefix, cfg.payload_size, cfg.jobs)
        workers = await connect_workers(rt, handler, wstats)
        rt.count_with(lambda: wstats.done)
        await rt.sync()
        for w in workers:
            w.begin()
        await rt.wait_stop(2)
        result["late_workers"] = await stop_workers(workers, cfg.grace)
        result.update(worker_result(wstats))
        result["bitmap"] = bytes(handler.bitmap)
        result["bad_payload"] = handler.bad_payload
        result["foreign"] = handler.foreign
        result["unverified"] = handler.unverified
        result["dup_local"] = handler.dup_local
        return result

    def parent(self, ctl: Control) -> Outcome:
        cfg = self.cfg
        out = Outcome()
        ctl.sync("connecting")
        ctl.sync()
        in_time = ctl.watch("bg", cfg.jobs, lambda: ctl.all_reached(3), cfg.duration)
        if not in_time:
            ctl.stop(1)
        ctl.sync("finishing", timeout=cfg.grace + 10)
        queued, running, how = queued_view(ctl.status(cfg.func))
        drained_in_time = True
        final_empty = True
        if cfg.cleanup:
            ctl.sync()
            drained_in_time = ctl.watch("cleanup", queued, throttled(queue_empty(ctl), 0.25),
                                        max(cfg.duration, 60.0), stop_level=2)
            final_empty = queue_empty(ctl)()
        results = ctl.collect()

        sent, acked = total(results, "sent"), total(results, "acked")
        errors, lost = total(results, "errors"), total(results, "lost")
        unexpected = total(results, "unexpected")
        start = min(r["start"] for r in results)
        end = max(r["end"] for r in results)
        elapsed = max(end - start, 1e-9)
        rate = acked / elapsed
        run_cpu = sum(r["run_cpu_s"] for r in results)
        out.metrics.update({
            "jobs": cfg.jobs, "sent": sent, "acked": acked, "errors": errors, "lost": lost,
            "elapsed_s": round(elapsed, 4), "submits_per_s": round(rate, 1),
            "server_queued": queued, "capped": not in_time,
            "tool_run_cpu_s": round(run_cpu, 3),
            "tool_cpu_us_per_job": round(run_cpu / acked * 1e6, 2) if acked else None,
        })
        out.rows += [
            ("submits acknowledged", f"{acked:,} of {sent:,} sent in {elapsed:.3f} s"),
            ("rate", f"{fmt_rate(rate)} submits/s"),
            ("errors", f"{errors} (lost in flight: {lost})"),
            ("server reports queued", f"{queued:,} ({how})"),
            ("tool CPU in run", f"{run_cpu:.2f} s"
             + (f" ({run_cpu / acked * 1e6:.1f} us/job)" if acked else "")),
        ]
        first = next((r["first_error"] for r in results if r.get("first_error")), "")
        out.check("every submit acknowledged with JOB_CREATED",
                  acked == sent and errors == 0 and lost == 0 and unexpected == 0,
                  f"sent={sent} acked={acked} errors={errors} lost={lost} "
                  f"unexpected={unexpected}" + (f" first_error={first!r}" if first else ""))
        if in_time:
            out.check("all jobs submitted", sent == cfg.jobs, f"{sent}/{cfg.jobs}")
        else:
            out.rows.append(("note", f"stopped by the --duration cap ({cfg.duration:g} s)"))
        out.check("server holds every acknowledged job", queued == acked and running == 0,
                  f"queued={queued} running={running} acked={acked}")
        if cfg.cleanup:
            done = total(results, "w_done")
            seen, twice = merge_bitmaps(r.get("bitmap", b"") for r in results)
            dups = twice + total(results, "dup_local")
            bad = total(results, "bad_payload") + total(results, "foreign")
            out.metrics["drained"] = done
            out.rows.append(("cleanup drained", f"{done:,} jobs"))
            unverified = total(results, "unverified")
            out.check("cleanup ran each job exactly once with its data",
                      done == acked and seen + unverified == acked and dups == 0 and bad == 0
                      and drained_in_time and final_empty,
                      f"done={done} distinct={seen} duplicates={dups} bad_data={bad} "
                      f"unverifiable={unverified} queue_empty={final_empty}")
            ok, detail = worker_checks(results)
            out.check("workers saw no errors", ok, detail)
        return out
