"""The shape of the imports: the layering contracts in pyproject.toml
([tool.importlinter]) hold, and no module of node/, cluster/ or gearmesh/
takes part in an import cycle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("node", "cluster", "gearmesh")
# Type-only, both ways (under TYPE_CHECKING, never executed): a worker's
# session holds jobs and a job names its worker. A mutual reference within
# the job model, not between layers; anything else in a cycle is a bug.
ALLOWED_TYPE_ONLY_CYCLES = [frozenset({"node.job", "node.session"})]

pytestmark = pytest.mark.timeout(120)


def cycles(graph: grimp.ImportGraph) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_at_run_time() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    assert cycles(graph) == []


def test_no_import_cycles_even_for_the_type_checker_but_the_job_models() -> None:
    graph = grimp.build_graph(*PACKAGES)
    assert [sorted(c) for c in cycles(graph) if c not in ALLOWED_TYPE_ONLY_CYCLES] == []


def test_layering_contracts() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_cycle_finder_finds_one() -> None:
    graph = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(m)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert cycles(graph) == [frozenset({"a.x", "a.y"})]
