"""`gearmesh bench`: a load generator for any Gearman server or list of
servers. The console script wires its `bench` subcommand to add_arguments
and run."""

from __future__ import annotations

import argparse
import json
import sys

from gearmesh.bench.config import add_arguments as _add_arguments
from gearmesh.bench.config import resolve

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run one scenario. Exit status: 0 all checks passed, 1 a check failed,
    2 the run could not be carried out (bad options, server unreachable, a
    load process failed)."""
    # Imported here so that building the CLI parser stays cheap.
    from gearmesh.bench.engine import execute, servers_reachable
    from gearmesh.bench.report import human, json_line, to_document
    from gearmesh.bench.scenarios import SCENARIOS

    try:
        cfg = resolve(args)
    except ValueError as exc:
        print(f"gearmesh bench: {exc}", file=sys.stderr)
        return 2
    problem = servers_reachable(cfg.servers)
    if problem is not None:
        doc = {"version": 1, "scenario": cfg.scenario, "ok": False,
               "error": f"server unreachable: {problem}",
               "servers": [str(s) for s in cfg.servers]}
        if not cfg.json_only:
            print(f"gearmesh bench: server unreachable: {problem}", file=sys.stderr)
        print(json.dumps(doc, separators=(",", ":")))
        return 2
    res = execute(SCENARIOS[cfg.scenario], cfg)
    doc = to_document(cfg, res)
    if not cfg.json_only:
        print(human(cfg, res, doc))
    print(json_line(doc), flush=True)
    if res.error is not None:
        return 2
    return 0 if doc["ok"] else 1
