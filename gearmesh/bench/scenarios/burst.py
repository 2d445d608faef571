"""burst: a flash-sale shape.

Clients come up one after another over --ramp seconds until --clients are
connected, and each keeps submitting until --duration is over: a --fg-ratio
share in the foreground (waits for the result), the rest in the background
(waits for JOB_CREATED), and a --dup-ratio share with a unique from a small
hot set (--uniques), so many submissions should coalesce. Workers hold each
job --work-ms.

Reported: completions, errors, jobs run more than once at the same time
("duplicates run": a run of a unique that started while another run of the
same unique was still going, or any second run of a one-off unique), and a
per-interval timeline of throughput and latency. Afterwards the queue must
drain to empty.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from array import array
from collections import defaultdict
from typing import Any

from gearmesh.bench import wire
from gearmesh.bench.config import Config
from gearmesh.bench.engine import ChildRuntime, Control, Outcome
from gearmesh.bench.owner import OwnedKeys
from gearmesh.bench.roles import WorkerStats
from gearmesh.bench.scenarios.common import (
    client_server,
    connect_workers,
    owner_keys,
    queue_empty,
    stop_workers,
    throttled,
    total,
    worker_checks,
    worker_result,
)
from gearmesh.bench.stats import fmt_ms, fmt_rate, latency_summary, percentile
from node import protocol as P

# Phases: 1 connected (workers start), 2 go, 3 clients finished.


class Recorder:
    """Everything the clients of one process observed, as flat arrays so
    that shipping them to the coordinator stays cheap."""

    def __init__(self) -> None:
        self.op_end = array("d")
        self.op_lat = array("d")
        self.op_fg = array("b")
        self.err_t = array("d")
        self.err_kind: list[str] = []
        self.mismatch = 0
        self.submitted = 0

    def error(self, kind: str) -> None:
        self.err_t.append(time.monotonic())
        self.err_kind.append(kind)


class BurstClient(wire.PacketProtocol):
    def __init__(self, cfg: Config, number: int, hot: list[bytes], rec: Recorder,
                 end_at: float, owned: OwnedKeys | None = None) -> None:
        super().__init__()
        self.owned = owned
        self.loop = asyncio.get_running_loop()
        self.func = cfg.func.encode()
        self.size = cfg.payload_size
        self.dup_ratio = cfg.dup_ratio
        self.fg_ratio = cfg.fg_ratio
        self.think_s = cfg.think_ms / 1000.0
        self.hot = hot
        self.rec = rec
        self.end_at = end_at
        self.rng = random.Random(cfg.seed * 1_000_003 + number)
        self.prefix = f"{cfg.run_id}-c{number}-".encode()
        self.seq = 0
        self.fg = False
        self.expect = b""
        self.handle = b""
        self.t0 = 0.0
        self.busy = False
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.finished: asyncio.Future[None] = self.loop.create_future()

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._next()

    def _finish(self) -> None:
        self.busy = False
        if not self.finished.done():
            self.stopped_at = time.monotonic()
            self.finished.set_result(None)

    def _next(self) -> None:
        now = time.monotonic()
        if now >= self.end_at or self.transport is None or self.transport.is_closing():
            self._finish()
            return
        rng = self.rng
        if self.hot and rng.random() < self.dup_ratio:
            unique = self.hot[rng.randrange(len(self.hot))]
        else:
            self.seq += 1
            unique = self.prefix + b"%d" % self.seq
            if self.owned is not None:
                # Salted on the fly: burst's pace is set by --think-ms and
                # the ramp, not by the generator's CPU.
                unique = self.owned.key(unique)
        self.fg = rng.random() < self.fg_ratio
        self.expect = wire.payload_for(unique, self.size)
        self.handle = b""
        self.busy = True
        self.t0 = now
        self.rec.submitted += 1
        ptype = P.SUBMIT_JOB if self.fg else P.SUBMIT_JOB_BG
        self.write(wire.submit_packet(ptype, self.func, unique, self.expect))

    def _done(self, latency: float) -> None:
        rec = self.rec
        rec.op_end.append(self.t0 + latency)
        rec.op_lat.append(latency)
        rec.op_fg.append(1 if self.fg else 0)
        self._after()

    def _after(self) -> None:
        self.busy = False
        if self.think_s > 0:
            self.loop.call_later(self.rng.expovariate(1.0 / self.think_s), self._next)
        else:
            self._next()

    def on_packet(self, ptype: int, payload: bytes) -> None:
        if ptype == P.JOB_CREATED:
            if self.fg:
                self.handle = payload
            else:
                self._done(time.monotonic() - self.t0)
        elif ptype == P.WORK_COMPLETE:
            handle, _, data = payload.partition(b"\0")
            if not self.fg or handle != self.handle:
                self.rec.error("stray WORK_COMPLETE")
                return
            if data != self.expect:
                self.rec.mismatch += 1
            self._done(time.monotonic() - self.t0)
        elif ptype == P.ERROR:
            code = payload.partition(b"\0")[0].decode(errors="replace")
            self.rec.error(f"ERROR {code}")
            self._after()
        elif ptype in (P.WORK_FAIL, P.WORK_EXCEPTION):
            self.rec.error("WORK_FAIL" if ptype == P.WORK_FAIL else "WORK_EXCEPTION")
            self._after()
        elif ptype not in (P.WORK_DATA, P.WORK_STATUS, P.WORK_WARNING):
            self.rec.error(f"unexpected packet {ptype}")

    def on_lost(self) -> None:
        if not self.finished.done():
            self.rec.error("connection lost")
        self._finish()


class BurstScenario:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.owned = owner_keys(cfg)
        hot = [f"{cfg.run_id}-hot{k}".encode() for k in range(cfg.uniques)]
        self.hot = hot if self.owned is None else [self.owned.key(u) for u in hot]

    def procs(self) -> int:
        return max(1, min(self.cfg.clients, self.cfg.workers))

    async def child(self, rt: ChildRuntime) -> dict[str, Any]:
        cfg = self.cfg
        rec = Recorder()
        mine = rt.mine(cfg.clients)
        wstats = WorkerStats()
        workers = await connect_workers(rt, lambda _u, data: data, wstats,
                                        cfg.work_ms / 1000.0, record_runs=True)
        rt.count_with(lambda: len(rec.op_end))
        await rt.sync()
        for w in workers:
            w.begin()
        start = await rt.sync()
        end_at = start + cfg.duration
        cpu0 = os.times()
        clients: list[BurstClient] = []

        async def bring_up(c: int) -> None:
            # Client c joins at its place on the ramp, connecting only then,
            # so the server sees the connection storm as well as the load.
            delay = cfg.ramp * c / max(1, cfg.clients)
            await asyncio.sleep(max(0.0, start + delay - time.monotonic()))
            if time.monotonic() >= end_at:
                return
            try:
                client = await wire.open_connection(
                    client_server(cfg, c),
                    lambda: BurstClient(cfg, c, self.hot, rec, end_at, self.owned))
            except (OSError, TimeoutError) as exc:
                rec.error(f"connect failed: {type(exc).__name__}")
                return
            clients.append(client)
            client.start()

        await asyncio.gather(*(bring_up(c) for c in mine))
        # Outstanding foreground jobs get --grace seconds past the end.
        pending = [c.finished for c in clients if not c.finished.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, end_at + cfg.grace - time.monotonic()))
        for c in clients:
            if not c.finished.done():
                rec.error("timeout")
                c._finish()
        cpu1 = os.times()
        await rt.sync()
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        await rt.wait_stop(1)
        late = await stop_workers(workers, cfg.grace)
        runs = wstats.runs
        result: dict[str, Any] = {
            "start": start,
            "op_end": rec.op_end, "op_lat": rec.op_lat, "op_fg": rec.op_fg,
            "err_t": rec.err_t, "err_kind": rec.err_kind, "mismatch": rec.mismatch,
            "submitted": rec.submitted,
            "client_start": array("d", [c.started_at for c in clients]),
            "client_stop": array("d", [c.stopped_at for c in clients]),
            "run_unique": [u for u, _, _ in runs],
            "run_start": array("d", [s for _, s, _ in runs]),
            "run_end": array("d", [e for _, _, e in runs]),
            "late_workers": late,
            "run_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        }
        result.update(worker_result(wstats))
        return result

    def parent(self, ctl: Control) -> Outcome:
        cfg = self.cfg
        out = Outcome()
        ctl.sync("connecting")
        ctl.sync()
        ctl.watch("burst", None, lambda: ctl.all_reached(3), cfg.duration + cfg.grace + 5)
        ctl.sync("finishing", timeout=cfg.grace + 10)
        drained = ctl.watch("draining", None, throttled(queue_empty(ctl), 0.25),
                            max(cfg.grace, 5.0), stop_level=1)
        results = ctl.collect()
        return self._report(out, results, drained)

    def _report(self, out: Outcome, results: list[dict[str, Any]], drained: bool) -> Outcome:
        cfg = self.cfg
        t0 = min(r["start"] for r in results)
        op_end: list[float] = []
        op_lat: list[float] = []
        op_fg: list[int] = []
        err_t: list[float] = []
        err_kind: list[str] = []
        for r in results:
            op_end.extend(r["op_end"])
            op_lat.extend(r["op_lat"])
            op_fg.extend(r["op_fg"])
            err_t.extend(r["err_t"])
            err_kind.extend(r["err_kind"])
        fg_lat = [lat for lat, fg in zip(op_lat, op_fg, strict=True) if fg]
        bg_lat = [lat for lat, fg in zip(op_lat, op_fg, strict=True) if not fg]

        # Duplicate runs, across all workers of all processes.
        by_unique: dict[bytes, list[tuple[float, float]]] = defaultdict(list)
        for r in results:
            for u, s, e in zip(r["run_unique"], r["run_start"], r["run_end"], strict=True):
                by_unique[u].append((s, e))
        hot = set(self.hot)
        dup = 0
        for u, spans in by_unique.items():
            if u not in hot:
                dup += len(spans) - 1
                continue
            spans.sort()
            busy_until = -1.0
            for s, e in spans:
                if s < busy_until:
                    dup += 1
                busy_until = max(busy_until, e)
        runs = sum(len(v) for v in by_unique.values())

        kinds: dict[str, int] = defaultdict(int)
        for k in err_kind:
            kinds[k] += 1
        submitted = total(results, "submitted")
        fg_done, bg_done = len(fg_lat), len(bg_lat)
        mismatch = total(results, "mismatch")
        run_cpu = sum(r["run_cpu_s"] for r in results)
        window = max(max(op_end, default=t0) - t0, 1e-9)

        timeline = self._timeline(t0, op_end, op_lat, err_t, results)
        out.metrics.update({
            "clients": cfg.clients, "workers": cfg.workers, "duration_s": cfg.duration,
            "submitted": submitted, "completions_fg": fg_done, "acks_bg": bg_done,
            "ops_per_s": round((fg_done + bg_done) / window, 1),
            "runs": runs, "coalesce_factor": round(submitted / runs, 2) if runs else None,
            "duplicates_run": dup, "errors": len(err_kind), "errors_by_kind": dict(kinds),
            "mismatch": mismatch, "latency_fg": latency_summary(fg_lat),
            "latency_bg": latency_summary(bg_lat), "drained": drained,
            "tool_run_cpu_s": round(run_cpu, 3), "timeline": timeline,
        })
        lf, lb = out.metrics["latency_fg"], out.metrics["latency_bg"]
        out.rows += [
            ("clients", f"{cfg.clients} over {cfg.ramp:g} s ramp, {cfg.duration:g} s run, "
                        f"{len(cfg.client_servers)} server(s), {cfg.workers} workers"),
            ("submitted", f"{submitted:,} ({cfg.fg_ratio:.0%} foreground, "
                          f"{cfg.dup_ratio:.0%} on {len(self.hot)} hot uniques)"),
            ("completed", f"{fg_done:,} foreground results + {bg_done:,} background acks "
                          f"= {fmt_rate((fg_done + bg_done) / window)}/s"),
            ("worker runs", f"{runs:,} (coalesce factor "
                            f"{submitted / runs if runs else 0:.2f})"),
            ("duplicates run", f"{dup}"),
            ("errors", f"{len(err_kind)}" + (f" {dict(kinds)}" if kinds else "")),
            ("fg latency", f"p50 {fmt_ms(lf['p50_ms'])}  p99 {fmt_ms(lf['p99_ms'])}  "
                           f"max {fmt_ms(lf['max_ms'])}"),
            ("bg latency", f"p50 {fmt_ms(lb['p50_ms'])}  p99 {fmt_ms(lb['p99_ms'])}  "
                           f"max {fmt_ms(lb['max_ms'])}"),
        ]
        out.extra_text.append(_timeline_table(timeline))
        out.check("no errors", not err_kind, str(dict(kinds)) if kinds else "")
        out.check("no duplicate runs", dup == 0, f"duplicates={dup}")
        out.check("results echo the job's data", mismatch == 0, f"mismatches={mismatch}")
        out.check("queue drained afterwards", drained)
        ok, detail = worker_checks(results)
        out.check("workers saw no errors", ok, detail)
        return out

    def _timeline(self, t0: float, op_end: list[float], op_lat: list[float],
                  err_t: list[float], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        width = self.cfg.interval
        last = max([*op_end, *err_t, t0 + self.cfg.duration])
        nb = int((last - t0) / width) + 1
        lats: list[list[float]] = [[] for _ in range(nb)]
        errs = [0] * nb
        runs = [0] * nb
        for end, lat in zip(op_end, op_lat, strict=True):
            lats[min(nb - 1, int((end - t0) / width))].append(lat)
        for t in err_t:
            errs[min(nb - 1, max(0, int((t - t0) / width)))] += 1
        starts: list[float] = []
        stops: list[float] = []
        for r in results:
            for e in r["run_end"]:
                runs[min(nb - 1, max(0, int((e - t0) / width)))] += 1
            starts.extend(r["client_start"])
            stops.extend(r["client_stop"])
        rows = []
        for b in range(nb):
            edge = t0 + (b + 1) * width
            active = sum(1 for s in starts if s < edge) - sum(1 for s in stops if s < edge)
            s = sorted(lats[b])
            rows.append({
                "t_s": round((b + 1) * width, 3), "clients": active,
                "ops": len(s), "runs": runs[b], "errors": errs[b],
                "p50_ms": round(percentile(s, 50) * 1000, 3) if s else None,
                "p99_ms": round(percentile(s, 99) * 1000, 3) if s else None,
                "max_ms": round(s[-1] * 1000, 3) if s else None,
            })
        return rows


def _timeline_table(rows: list[dict[str, Any]]) -> str:
    lines = ["  t(s)  clients      ops     runs  errors      p50        p99        max"]
    for r in rows:
        lines.append(
            f"  {r['t_s']:>4g}  {r['clients']:>7}  {r['ops']:>7}  {r['runs']:>7}  "
            f"{r['errors']:>6}  {fmt_ms(r['p50_ms']):>9}  {fmt_ms(r['p99_ms']):>9}  "
            f"{fmt_ms(r['max_ms']):>9}"
        )
    return "\n".join(lines)
