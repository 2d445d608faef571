"""rt: C synchronous clients and W echo workers; measures jobs per second and
the round-trip latency (SUBMIT_JOB sent to WORK_COMPLETE received).

Each client has one job in flight, with a fresh unique and data derived from
it; the worker returns the data unchanged and the client checks it byte for
byte, and that the completion carries the handle JOB_CREATED gave.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from gearmesh.bench import wire
from gearmesh.bench.config import Config
from gearmesh.bench.engine import ChildRuntime, Control, Outcome
from gearmesh.bench.roles import JobSource, WorkerStats
from gearmesh.bench.scenarios.common import (
    client_server,
    connect_workers,
    owned_keys,
    stop_workers,
    total,
    worker_checks,
    worker_result,
)
from gearmesh.bench.stats import fmt_ms, fmt_rate, latency_summary
from node import protocol as P

# Phases: 1 connected (workers start), 2 go, 3 clients finished.


class ClientStats:
    def __init__(self) -> None:
        self.done = 0
        self.mismatch = 0
        self.failed = 0
        self.errors = 0
        self.unexpected = 0
        self.lost = 0
        self.first_error = ""
        self.latencies = array("d")


class RoundTripClient(wire.PacketProtocol):
    def __init__(self, source: JobSource, func: bytes, prefix: bytes, size: int,
                 stats: ClientStats, stopping: Callable[[], bool],
                 keys: Sequence[bytes] | None = None, first: int = 0,
                 send_unique: bool = True) -> None:
        super().__init__()
        # False (--unique none): empty uniques, so each job stays on the node
        # it entered; its data still names the job, so the echo is checked.
        self.send_unique = send_unique
        self.source = source
        # --owner: keys[n - first] is job n's unique id (precomputed).
        self.keys = keys
        self.first = first
        self.func = func
        self.prefix = prefix
        self.size = size
        self.stats = stats
        self.stopping = stopping
        self.expect = b""
        self.handle = b""
        self.t0 = 0.0
        self.last = 0.0
        self.busy = False
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self._next()

    def _finish(self) -> None:
        self.busy = False
        if not self.finished.done():
            self.finished.set_result(None)

    def _next(self) -> None:
        if self.stopping():
            self._finish()
            return
        job = self.source.take(1)
        if not job:
            self._finish()
            return
        if self.keys is None:
            unique = self.prefix + b"%d" % job[0]
        else:
            unique = self.keys[job[0] - self.first]
        self.expect = wire.payload_for(unique, self.size)
        self.handle = b""
        self.busy = True
        self.t0 = time.monotonic()
        self.write(wire.submit_packet(P.SUBMIT_JOB, self.func,
                                      unique if self.send_unique else b"", self.expect))

    def on_packet(self, ptype: int, payload: bytes) -> None:
        st = self.stats
        if ptype == P.WORK_COMPLETE:
            now = time.monotonic()
            st.latencies.append(now - self.t0)
            st.done += 1
            self.last = now
            handle, _, data = payload.partition(b"\0")
            if data != self.expect or handle != self.handle:
                st.mismatch += 1
            self._next()
        elif ptype == P.JOB_CREATED:
            self.handle = payload
        elif ptype in (P.WORK_FAIL, P.WORK_EXCEPTION):
            st.failed += 1
            self._next()
        elif ptype == P.ERROR:
            st.errors += 1
            if not st.first_error:
                st.first_error = wire.error_text(payload)
            self._next()
        elif ptype not in (P.WORK_DATA, P.WORK_STATUS, P.WORK_WARNING):
            st.unexpected += 1

    def on_lost(self) -> None:
        if self.busy:
            self.stats.lost += 1
        self._finish()


class RtScenario:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.prefix = f"{cfg.run_id}-".encode()

    def procs(self) -> int:
        return min(self.cfg.clients, self.cfg.workers)

    async def child(self, rt: ChildRuntime) -> dict[str, Any]:
        cfg = self.cfg
        func = cfg.func.encode()
        lo, hi = rt.block(cfg.jobs)
        source = JobSource(lo, hi)
        cstats = ClientStats()
        # Salted before the timed part: a few hashes per job would otherwise
        # be load-generator CPU inside the measurement.
        keys = owned_keys(cfg, (self.prefix + b"%d" % n for n in range(lo, hi)))
        clients = []
        for n in rt.mine(cfg.clients):
            clients.append(await wire.open_connection(
                client_server(cfg, n),
                lambda: RoundTripClient(source, func, self.prefix, cfg.payload_size, cstats,
                                        lambda: rt.stopped(1), keys, lo,
                                        send_unique=cfg.unique == "job"),
            ))
        wstats = WorkerStats()
        workers = await connect_workers(rt, lambda _u, data: data, wstats,
                                        cfg.work_ms / 1000.0)
        rt.count_with(lambda: cstats.done)
        await rt.sync()
        for w in workers:
            w.begin()
        start = await rt.sync()
        cpu0 = os.times()
        for c in clients:
            c.start()
        await asyncio.gather(*(c.finished for c in clients))
        cpu1 = os.times()
        end = max((c.last for c in clients), default=start)
        await rt.sync()
        late = await stop_workers(workers, cfg.grace)
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        result: dict[str, Any] = {
            "start": start, "end": end, "done": cstats.done, "mismatch": cstats.mismatch,
            "failed": cstats.failed, "errors": cstats.errors, "lost": cstats.lost,
            "unexpected": cstats.unexpected, "first_error": cstats.first_error,
            "latencies": cstats.latencies, "late_workers": late,
            "run_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        }
        result.update(worker_result(wstats))
        return result

    def parent(self, ctl: Control) -> Outcome:
        cfg = self.cfg
        out = Outcome()
        ctl.sync("connecting")
        ctl.sync()
        in_time = ctl.watch("rt", cfg.jobs, lambda: ctl.all_reached(3), cfg.duration)
        if not in_time:
            ctl.stop(1)
        ctl.sync("finishing", timeout=cfg.grace + 10)
        results = ctl.collect()

        done = total(results, "done")
        start = min(r["start"] for r in results)
        end = max(r["end"] for r in results)
        elapsed = max(end - start, 1e-9)
        rate = done / elapsed
        lats: list[float] = []
        for r in results:
            lats.extend(r["latencies"])
        lat = latency_summary(lats)
        run_cpu = sum(r["run_cpu_s"] for r in results)
        bad = total(results, "mismatch")
        failed = total(results, "failed")
        errors = total(results, "errors") + total(results, "lost") + total(results, "unexpected")
        out.metrics.update({
            "jobs": cfg.jobs, "clients": cfg.clients, "workers": cfg.workers, "done": done,
            "elapsed_s": round(elapsed, 4), "jobs_per_s": round(rate, 1),
            "latency": lat, "mismatch": bad, "failed": failed, "errors": errors,
            "capped": not in_time, "tool_run_cpu_s": round(run_cpu, 3),
            "tool_cpu_us_per_job": round(run_cpu / done * 1e6, 2) if done else None,
        })
        out.rows += [
            ("round trips", f"{done:,} by {cfg.clients} clients / {cfg.workers} workers "
                            f"in {elapsed:.3f} s"),
            ("rate", f"{fmt_rate(rate)} jobs/s"),
            ("latency", f"p50 {fmt_ms(lat['p50_ms'])}  p90 {fmt_ms(lat['p90_ms'])}  "
                        f"p99 {fmt_ms(lat['p99_ms'])}  max {fmt_ms(lat['max_ms'])}"),
            ("tool CPU in run", f"{run_cpu:.2f} s"
             + (f" ({run_cpu / done * 1e6:.1f} us/job)" if done else "")),
        ]
        first = next((r["first_error"] for r in results if r.get("first_error")), "")
        out.check("every result echoed the job's data under its handle", bad == 0,
                  f"mismatches={bad}")
        out.check("no failed jobs or errors", failed == 0 and errors == 0,
                  f"failed={failed} errors={errors}" + (f" first={first!r}" if first else ""))
        if in_time:
            out.check("all jobs completed", done == cfg.jobs, f"{done}/{cfg.jobs}")
        else:
            out.rows.append(("note", f"stopped by the --duration cap ({cfg.duration:g} s)"))
        ok, detail = worker_checks(results)
        out.check("workers saw no errors", ok and total(results, "w_done") == done, detail
                  + f" worker_done={total(results, 'w_done')}")
        return out
