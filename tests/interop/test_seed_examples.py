"""The shared tutorial programs and their checker script, when present.

They live next to the repository (``../shared/seed-examples``) in the
development setup only; a plain checkout skips this test. The project's own
copies of these scenarios are in test_php.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.procs import Spawned
from tests.support.servers import ServerProcess

RUN_SH = Path(__file__).resolve().parents[2].parent / "shared" / "seed-examples" / "run.sh"


@pytest.mark.timeout(110)
@pytest.mark.skipif(not RUN_SH.is_file(), reason=f"{RUN_SH} not present")
@pytest.mark.skipif(shutil.which("php") is None, reason="php not installed")
def test_seed_examples_pass(spawn: Callable[..., Spawned], server: ServerProcess) -> None:
    proc = spawn(["bash", str(RUN_SH), server.address], name="seed run.sh")
    rc = proc.wait(100)
    out = proc.output()
    assert "4 passed, 0 failed" in out.splitlines(), out
    assert rc == 0, out
