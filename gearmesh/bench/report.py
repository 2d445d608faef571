"""Human summary and the machine-readable JSON line."""

from __future__ import annotations

import json
import math
from typing import Any

from gearmesh.bench.config import Config
from gearmesh.bench.engine import RunResult

JSON_VERSION = 1


def to_document(cfg: Config, res: RunResult) -> dict[str, Any]:
    checks = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in res.outcome.checks]
    ok = res.error is None and all(c.ok for c in res.outcome.checks)
    return {
        "version": JSON_VERSION,
        "scenario": cfg.scenario,
        "ok": ok,
        "error": res.error,
        "servers": [str(s) for s in cfg.servers],
        "config": cfg.describe(),
        "metrics": _finite(res.outcome.metrics),
        "checks": checks,
        "tool": {
            "procs": res.procs,
            "wall_s": round(res.elapsed_s, 3),
            "cpu_s": round(res.tool_cpu_s, 3),
        },
    }


def _finite(value: Any) -> Any:
    # JSON has no NaN; a missing figure is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def human(cfg: Config, res: RunResult, doc: dict[str, Any]) -> str:
    servers = ",".join(str(s) for s in cfg.servers)
    lines = [f"gearmesh bench {cfg.scenario}  servers={servers}  procs={res.procs}  "
             f"payload={cfg.payload_size}B  placement={cfg.placement}  func={cfg.func}"]
    if cfg.client_servers != cfg.servers or cfg.worker_servers != cfg.servers:
        lines.append(f"  clients on {','.join(str(s) for s in cfg.client_servers)}  "
                     f"workers on {','.join(str(s) for s in cfg.worker_servers)}")
    if cfg.owner is not None:
        lines.append(f"  every unique owned by {cfg.owner} of nodes {','.join(cfg.nodes)}")
    rows = res.outcome.rows
    if rows:
        width = max(len(k) for k, _ in rows)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += res.outcome.extra_text
    if res.outcome.checks:
        lines.append("checks")
        for c in res.outcome.checks:
            mark = "ok  " if c.ok else "FAIL"
            lines.append(f"  {mark}  {c.name}" + (f"  [{c.detail}]" if c.detail else ""))
    if res.error:
        lines.append(f"error: {res.error}")
    lines.append(f"result: {'PASS' if doc['ok'] else 'FAIL'}  "
                 f"(tool: {res.procs} procs, {res.tool_cpu_s:.2f} s CPU, "
                 f"{res.elapsed_s:.2f} s wall)")
    return "\n".join(lines)


def json_line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False)
